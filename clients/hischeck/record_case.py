"""Record -> case: a check run's journal as a replay case (docs/cases.md), so
traffic a real HIS sent becomes a regression test that replays on any server.

Each call that ran is a step; a call refused by an injected fault before it ran
is left out (it did nothing). Ids that link calls become references: a msgid
sent again is `${steps.ID.msgid}`, a settlement id answered earlier is
`${steps.ID.settlement.settlement_id}`, a fresh msgid is `${new_msgid}`. The
answers' money figures become expectations (integer fen), refusals become
`error: {code, reason}`, and the `why` names the rules the answers' traces
applied. `replayed` is not expected: which call of a retried msgid runs first
depends on the network, not on the rules. An answer an injected fault altered
(figures_off) is expected to answer OK only.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from settlesim.v1 import settlement_service_pb2 as pb

CALLS = {
    "VerifyRegistration": "verify",
    "PreSettleVisit": "pre_settle",
    "SettleVisit": "settle",
    "ReverseSettlement": "reverse",
    "VoidByMessageId": "void",
    "GetSettlement": "get",
    "Reconcile": "reconcile",
}
NOT_RUN = {"unavailable", "error"}  # injected before the call ran: nothing happened
COMMITTED = {"drop_after_commit", "commit_then_drop"}  # ran and committed; only the answer was lost
_TOTALS = pb.SettlementTotals.DESCRIPTOR.fields
_FIGURES = ("count", "total_fen", "fund_pays_fen", "patient_pays_fen")


def _ran(entry: dict[str, Any]) -> bool:
    if entry.get("fault") in NOT_RUN:
        return False
    return entry["code"] == "OK" or entry["reason"] != "" or entry.get("fault") in COMMITTED


def _totals(recorded: dict[str, Any]) -> dict[str, int]:
    """Every figure of SettlementTotals: protobuf JSON leaves zeros out; optional ones only when present."""
    out = {}
    for f in _TOTALS:
        if f.has_presence and f.name not in recorded:
            continue
        out[f.name] = int(recorded.get(f.name, 0))
    return out


class _Links:
    def __init__(self) -> None:
        self.msgids: dict[str, str] = {}  # msgid -> the step that first sent it
        self.settlements: dict[str, str] = {}  # settlement id -> the step whose answer carried it

    def msgid(self, value: str, step: str, sends: bool) -> str:
        if value in self.msgids:
            return f"${{steps.{self.msgids[value]}.msgid}}"
        if sends:
            self.msgids[value] = step
        return "${new_msgid}"

    def settlement(self, value: str) -> str:
        return (
            f"${{steps.{self.settlements[value]}.settlement.settlement_id}}"
            if value in self.settlements
            else value
        )


def _raw(entry: dict[str, Any], step: str, links: _Links) -> dict[str, Any]:
    raw = copy.deepcopy(entry["request"])
    rpc = entry["rpc"]
    if rpc in ("PreSettleVisit", "SettleVisit"):
        raw["request"]["msgid"] = links.msgid(raw["request"]["msgid"], step, True)
    if rpc in ("ReverseSettlement", "VoidByMessageId"):
        raw["msgid"] = links.msgid(raw["msgid"], step, True)
    if rpc == "VoidByMessageId":
        raw["original_msgid"] = links.msgid(raw["original_msgid"], step, False)
    if rpc in ("ReverseSettlement", "GetSettlement") and raw.get("settlement_id"):
        raw["settlement_id"] = links.settlement(raw["settlement_id"])
    if rpc == "GetSettlement" and raw.get("msgid"):
        raw["msgid"] = links.msgid(raw["msgid"], step, False)
    return raw


def _expect(entry: dict[str, Any], links: _Links) -> dict[str, Any] | None:
    if entry["code"] != "OK" and entry.get("fault") not in COMMITTED:
        return {"error": {"code": entry["code"], "reason": entry["reason"]}}
    answer = entry.get("answer") or {}
    if entry.get("fault") == "figures_off":
        return None
    expect: dict[str, Any] = {}
    rpc = entry["rpc"]
    if rpc == "VerifyRegistration":
        expect = {"eligible": bool(answer.get("eligible", False))}
        if answer.get("reason"):
            expect["reason"] = answer["reason"]
    if rpc == "VoidByMessageId":
        expect["voided_settlement"] = bool(answer.get("voided_settlement", False))
    settlement = answer.get("settlement")
    if settlement:
        sid = settlement.get("settlement_id", "")
        expected: dict[str, Any] = {}
        if sid in links.settlements:
            expected["settlement_id"] = links.settlement(sid)
        if settlement.get("status"):
            expected["status"] = settlement["status"]
        expected["totals"] = _totals(settlement.get("totals", {}))
        expect["settlement"] = expected
    if rpc == "Reconcile":
        platform = answer.get("platform", {})
        expect.update(
            matched=bool(answer.get("matched", False)),
            platform={k: int(platform.get(k, 0)) for k in _FIGURES},
            mismatched_fields=list(answer.get("mismatched_fields", [])),
        )
        if entry["request"].get("include_entries"):
            expect["entries"] = [
                {
                    "settlement_id": links.settlement(e["settlement_id"]),
                    "visit_date": e["visit_date"],
                    **{k: int(e.get(k, 0)) for k in _FIGURES[1:]},
                }
                for e in answer.get("entries", [])
            ]
    return expect


def case_of(entries: list[dict[str, Any]], scenario: str = "", world: str = "default") -> dict[str, Any]:
    entries = sorted(entries, key=lambda e: (e["time"], e["seq"]))
    run_id = next((e["run_id"] for e in entries if e.get("run_id")), "")
    institutions = [e["institution"] for e in entries if e["institution"]]
    institution = max(set(institutions), key=institutions.count) if institutions else ""
    links, steps, counts = _Links(), [], {}
    rules: dict[tuple[str, str], None] = {}
    for entry in entries:
        if not _ran(entry) or entry["rpc"] not in CALLS:
            continue
        call = CALLS[entry["rpc"]]
        counts[call] = counts.get(call, 0) + 1
        step_id = f"{call}{counts[call]}"
        step: dict[str, Any] = {"id": step_id, "call": call}
        if entry["institution"] and entry["institution"] != institution:
            step["institution"] = entry["institution"]
        step["raw"] = _raw(entry, step_id, links)
        expect = _expect(entry, links)
        if expect:
            step["expect"] = expect
        notes = [f"journal #{entry['seq']}"]
        if entry.get("actor") == "setup":
            notes.append("his-check's setup")
        if entry.get("fault"):
            notes.append(f"recorded with injected fault {entry['fault']}")
        step["why"] = "; ".join(notes)
        steps.append(step)
        settlement = (entry.get("answer") or {}).get("settlement") or {}
        if settlement.get("settlement_id") and settlement["settlement_id"] not in links.settlements:
            links.settlements[settlement["settlement_id"]] = step_id
        for t in settlement.get("trace", []):
            rules[(t.get("rule", ""), t.get("source", ""))] = None
    name = f"recorded-{scenario or 'run'}-{run_id or 'journal'}".lower().replace("_", "-")
    why = [
        f"Recorded by settlesim from check run {run_id or '(none)'}"
        + (f" (scenario {scenario})" if scenario else "")
        + f": {len(steps)} calls that ran, in the order the platform received them.",
        f"The expected figures are the platform's answers then, on world {world!r}; the rules their",
        "traces name:",
        *(f"  {rule}: {source}" for rule, source in rules if rule),
    ]
    return {
        "name": name,
        "title": f"Recorded check run {run_id}" + (f" ({scenario})" if scenario else ""),
        "world": world,
        "tags": ["recorded"],
        "institution": institution,
        "why": "\n".join(why) + "\n",
        "steps": steps,
    }


class _Dumper(yaml.SafeDumper):
    pass


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def case_yaml(entries: list[dict[str, Any]], scenario: str = "", world: str = "default") -> str:
    header = "# Recorded by `settlesim journal export --as-case` (docs/his-check.md).\n"
    return header + yaml.dump(
        case_of(entries, scenario, world), Dumper=_Dumper, allow_unicode=True, sort_keys=False
    )
