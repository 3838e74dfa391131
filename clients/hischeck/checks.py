"""The checks of a check run: pure functions over plain journal data (the run's
entries, as `server/journal.py` records them), the ledger's end state (the
run session's settlements) and the scenario. No gRPC, no SQLite: a test hands
them dicts (docs/his-check.md lists every check).

Each check has a stable id, a severity and a message a vendor can act on,
naming the journal entries involved by their sequence number (`#12`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from settlesim.clients.hischeck.scenarios import Scenario

LOST_CODES = {
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "INTERNAL",
    "UNKNOWN",
    "CANCELLED",
    "ABORTED",
}
INJECTED = "INJECTED_FAULT"
SETTLING = ("PreSettleVisit", "SettleVisit")
SENDS_MSGID = ("PreSettleVisit", "SettleVisit", "ReverseSettlement", "VoidByMessageId")
MSGID = re.compile(r"(?P<institution>[A-Za-z0-9]{12})(?P<time>\d{14})(?P<seq>\d{4})")
TOLERANCE_FEN = 10  # a real HIS voids when the platform's figures differ from its own by more than 0.1 yuan
CLOCK_SLACK = timedelta(hours=15)  # the HIS's local clock, any time zone (UTC-12..UTC+14), plus slack


@dataclass(frozen=True)
class Record:
    """What a run left: journal entries (arrival order) and the ledger's end state."""

    run: dict[str, Any]
    entries: list[dict[str, Any]]
    settlements: list[dict[str, Any]]
    catalog_codes: frozenset[str] = frozenset()

    @property
    def his(self) -> list[dict[str, Any]]:
        """The HIS's own calls (not the ones his-check made to arrange the scenario)."""
        return [e for e in self.entries if e.get("actor", "his") != "setup"]


@dataclass(frozen=True)
class CheckResult:
    id: str
    title: str
    severity: str  # error | warning
    status: str  # passed | failed | not_applicable
    message: str = ""
    entries: tuple[int, ...] = ()  # journal sequence numbers

    @property
    def passed(self) -> bool:
        return self.status != "failed"


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    severity: str
    run: Callable[[Record, Scenario], tuple[str, str, tuple[int, ...]]]
    explain: str = ""


CHECKS: list[Check] = []


def check(check_id: str, title: str, severity: str = "error") -> Callable[..., Any]:
    def register(fn: Callable[[Record, Scenario], tuple[str, str, tuple[int, ...]]]) -> Any:
        CHECKS.append(Check(check_id, title, severity, fn, (fn.__doc__ or "").strip()))
        return fn

    return register


def grade(record: Record, scenario: Scenario) -> list[CheckResult]:
    results = []
    for c in CHECKS:
        status, message, entries = c.run(record, scenario)
        results.append(CheckResult(c.id, c.title, c.severity, status, message, entries))
    return results


# --- plain-data helpers ---------------------------------------------------------------------------

Problem = tuple[str, list[int]]


def _outcome(
    problems: list[Problem], applicable: bool = True, ok: str = ""
) -> tuple[str, str, tuple[int, ...]]:
    if problems:
        seqs = sorted({s for _, ss in problems for s in ss})
        return "failed", "; ".join(m for m, _ in problems), tuple(seqs)
    return ("passed" if applicable else "not_applicable"), ok, ()


def refs(entries: Iterable[dict[str, Any]]) -> str:
    return ", ".join(f"#{e['seq']}" for e in entries)


def settlement_request(entry: dict[str, Any]) -> dict[str, Any]:
    return entry["request"].get("request", {}) if entry["rpc"] in SETTLING else {}


def visit_key(entry: dict[str, Any]) -> tuple[str, str, str, str]:
    visit = settlement_request(entry).get("visit", {})
    return (
        visit.get("institution_code", ""),
        visit.get("person", {}).get("person_no", ""),
        visit.get("disease_code", ""),
        visit.get("visit_date", ""),
    )


def lost(entry: dict[str, Any]) -> bool:
    """The HIS got no answer: a lost-answer code without a reason, an injected
    fault, or an answer the server made after the caller had gone."""
    if entry["code"] == "OK":
        return bool(entry.get("undelivered"))
    return entry["code"] in LOST_CODES and entry["reason"] in ("", INJECTED)


def refused(entry: dict[str, Any]) -> bool:
    """A definite refusal: the platform answered with a reason; nothing was done."""
    return entry["code"] != "OK" and entry["reason"] not in ("", INJECTED)


def figures(answer: dict[str, Any] | None) -> dict[str, int]:
    totals = ((answer or {}).get("settlement") or {}).get("totals") or {}
    return {k: int(totals.get(k, 0)) for k in ("total_fen", "fund_pays_fen", "patient_pays_fen")}


def _without_msgid(request: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in request.items() if k != "msgid"}


def _in_force(record: Record) -> dict[tuple[str, str, str, str], list[dict[str, Any]]]:
    by_visit: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for s in record.settlements:
        by_visit[(s["institution_code"], s["person_no"], s["disease_code"], s["visit_date"])].append(s)
    return by_visit


def _task_key(record: Record, scenario: Scenario, task_id: str) -> tuple[str, str, str, str]:
    t = scenario.task(task_id)
    return (record.run.get("institution_code", scenario.institution), t.person, t.disease, t.date)


def _entries_of_msgids(record: Record, msgids: set[str]) -> list[int]:
    """The HIS's calls that sent, retried, voided or looked up these msgids, or
    reversed or read the settlements they made."""
    settlements = {s["settlement_id"] for s in record.settlements if s["msgid"] in msgids}
    return [
        e["seq"]
        for e in record.his
        if e["msgid"] in msgids
        or e["request"].get("original_msgid") in msgids
        or (e["rpc"] == "GetSettlement" and e["request"].get("msgid") in msgids)
        or e["request"].get("settlement_id") in settlements
    ]


def _named(seqs: list[int]) -> str:
    return f" (journal {', '.join(f'#{s}' for s in seqs)})" if seqs else ""


# --- msgid ----------------------------------------------------------------------------------------


@check("msgid.format", "msgid in the national format")
def msgid_format(record: Record, scenario: Scenario) -> tuple[str, str, tuple[int, ...]]:
    """Every msgid the HIS sends (2206, 2207, 2208, 2601) is its 12-character institution
    code + yyyyMMddHHmmss + a 4-digit sequence number: 30 characters."""
    problems: list[Problem] = []
    sent = [e for e in record.his if e["rpc"] in SENDS_MSGID]
    for e in sent:
        match = MSGID.fullmatch(e["msgid"])
        if match is None:
            problems.append(
                (
                    f"#{e['seq']} {e['rpc']} msgid {e['msgid']!r} is not institution code (12) + "
                    "yyyyMMddHHmmss + 4 digits",
                    [e["seq"]],
                )
            )
        elif e["institution"] and match["institution"] != e["institution"]:
            problems.append(
                (
                    f"#{e['seq']} msgid {e['msgid']} starts with {match['institution']}, not the sender "
                    f"{e['institution']}",
                    [e["seq"]],
                )
            )
    return _outcome(problems, bool(sent))


@check("msgid.timestamp", "msgid timestamp plausible")
def msgid_timestamp(record: Record, scenario: Scenario) -> tuple[str, str, tuple[int, ...]]:
    """The yyyyMMddHHmmss part is a real date and time within 15 hours of when the
    platform received the first call with that msgid (the HIS's local clock, any time zone)."""
    problems: list[Problem] = []
    first: dict[str, dict[str, Any]] = {}
    for e in record.his:
        if e["rpc"] in SENDS_MSGID and (match := MSGID.fullmatch(e["msgid"])) and e["msgid"] not in first:
            first[e["msgid"]] = e
            try:
                stamp = datetime.strptime(match["time"], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
            except ValueError:
                problems.append(
                    (f"#{e['seq']} msgid {e['msgid']}: {match['time']} is no date and time", [e["seq"]])
                )
                continue
            arrived = datetime.fromisoformat(e["time"])
            if abs(stamp - arrived) > CLOCK_SLACK:
                problems.append(
                    (
                        f"#{e['seq']} msgid {e['msgid']} says {stamp:%Y-%m-%d %H:%M:%S}, but it arrived "
                        f"{arrived:%Y-%m-%d %H:%M:%S} UTC: is the HIS clock right?",
                        [e["seq"]],
                    )
                )
    return _outcome(problems, bool(first))


@check("msgid.unique", "one msgid, one request")
def msgid_unique(record: Record, scenario: Scenario) -> tuple[str, str, tuple[int, ...]]:
    """A msgid names one request: every call that carries it sends the same bytes (a
    retry); a different request under a used msgid is a defect (the platform refuses
    it MSGID_REUSED)."""
    by_msgid: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in record.his:
        if e["rpc"] in SENDS_MSGID and e["msgid"]:
            by_msgid[e["msgid"]].append(e)
    problems: list[Problem] = []
    for msgid, entries in by_msgid.items():
        hashes = {(e["rpc"] if e["rpc"] not in SETTLING else "settle", e["request_hash"]) for e in entries}
        if len(hashes) > 1:
            problems.append(
                (
                    f"msgid {msgid} was sent with {len(hashes)} different requests ({refs(entries)}); "
                    "give every new request a new msgid",
                    [e["seq"] for e in entries],
                )
            )
    return _outcome(problems, bool(by_msgid))


# --- retries after a lost answer ------------------------------------------------------------------


def _lost_settles(record: Record) -> list[dict[str, Any]]:
    seen, out = set(), []
    for e in record.his:
        if e["rpc"] == "SettleVisit" and lost(e) and e["msgid"] not in seen:
            seen.add(e["msgid"])
            out.append(e)
    return out


def _voids_of(record: Record, msgid: str) -> list[dict[str, Any]]:
    return [
        e
        for e in record.his
        if e["rpc"] == "VoidByMessageId" and e["request"].get("original_msgid") == msgid and e["code"] == "OK"
    ]


@check("retry.same-msgid", "a retry after a lost answer reuses the msgid, byte for byte")
def retry_same_msgid(record: Record, scenario: Scenario) -> tuple[str, str, tuple[int, ...]]:
    """After a SettleVisit got no answer, the HIS settles that visit again only under the
    same msgid with the same bytes, unless it voided (2601) the original msgid first."""
    problems: list[Problem] = []
    his = record.his
    for first in _lost_settles(record):
        voided_at = min((v["time"] for v in _voids_of(record, first["msgid"])), default="9999")
        for e in his:
            if e["rpc"] != "SettleVisit" or e["time"] <= first["time"] or e["seq"] == first["seq"]:
                continue
            if e["msgid"] == first["msgid"] and e["request_hash"] != first["request_hash"]:
                problems.append(
                    (
                        f"#{e['seq']} retried msgid {first['msgid']} of #{first['seq']} with different "
                        "bytes: a retry must resend the request unchanged",
                        [first["seq"], e["seq"]],
                    )
                )
            elif e["msgid"] != first["msgid"] and visit_key(e) == visit_key(first) and e["time"] < voided_at:
                problems.append(
                    (
                        f"#{e['seq']} settled the visit of #{first['seq']} again under a new msgid "
                        f"{e['msgid']} while the answer to {first['msgid']} was lost: retry with the "
                        "same msgid, or void (2601) it first",
                        [first["seq"], e["seq"]],
                    )
                )
    return _outcome(problems, bool(_lost_settles(record)))


@check("retry.resolved", "every lost answer is resolved: retried to an answer, or voided")
def retry_resolved(record: Record, scenario: Scenario) -> tuple[str, str, tuple[int, ...]]:
    """A SettleVisit without an answer may have committed. The HIS must end knowing: an
    answer to a retry with the same msgid, a GetSettlement by that msgid, or a void
    (2601) by that msgid."""
    problems: list[Problem] = []
    lost_ones = _lost_settles(record)
    for first in lost_ones:
        m = first["msgid"]
        answered = any(
            e["msgid"] == m
            and e["rpc"] == "SettleVisit"
            and e["code"] == "OK"
            and not lost(e)
            and e["time"] > first["time"]
            for e in record.his
        ) or any(
            e["rpc"] == "GetSettlement" and e["request"].get("msgid") == m and e["code"] == "OK"
            for e in record.his
        )
        if not answered and not _voids_of(record, m):
            attempts = [e for e in record.his if e["msgid"] == m]
            problems.append(
                (
                    f"msgid {m} got no answer ({refs(attempts)}) and the HIS never learned its fate: "
                    "retry it with the same msgid or void it (2601) by that msgid",
                    [e["seq"] for e in attempts],
                )
            )
    return _outcome(problems, bool(lost_ones))


@check("retry.no-refusal-retry", "a refusal with a reason is not retried")
def no_refusal_retry(record: Record, scenario: Scenario) -> tuple[str, str, tuple[int, ...]]:
    """A refusal that carries an ErrorInfo reason (FAILED_PRECONDITION DISEASE_NOT_OPENED,
    ...) is the platform's answer, not a network error: sending the same request again,
    under its msgid or a new one, cannot change it."""
    problems: list[Problem] = []
    his = record.his
    refusals = [e for e in his if refused(e) and e["rpc"] in SENDS_MSGID]
    for r in refusals:
        again = [
            e
            for e in his
            if e["time"] > r["time"]
            and e["rpc"] == r["rpc"]
            and (
                e["request_hash"] == r["request_hash"]
                or (
                    r["rpc"] in SETTLING
                    and _without_msgid(settlement_request(e)) == _without_msgid(settlement_request(r))
                )
            )
        ]
        if again:
            problems.append(
                (
                    f"#{r['seq']} was refused {r['code']} {r['reason']} and the HIS sent it again "
                    f"({refs(again)}): show the reason to the operator instead",
                    [r["seq"]] + [e["seq"] for e in again],
                )
            )
    return _outcome(problems, bool(refusals))


@check("visit.settled-once", "no visit is settled twice")
def settled_once(record: Record, scenario: Scenario) -> tuple[str, str, tuple[int, ...]]:
    """At the end, each visit (institution, person, disease, date) has at most one
    settlement in force: a lost answer retried under new msgids settles it twice."""
    problems: list[Problem] = []
    for key, rows in _in_force(record).items():
        in_force = [s for s in rows if s["status"] == "settled"]
        if len(in_force) > 1:
            msgids = {s["msgid"] for s in in_force}
            seqs = _entries_of_msgids(record, msgids)
            problems.append(
                (
                    f"visit {key[1]} {key[2]} {key[3]} has {len(in_force)} settlements in force "
                    f"({', '.join(s['settlement_id'] for s in in_force)}, msgids {', '.join(sorted(msgids))})"
                    f"{_named(seqs)}",
                    seqs,
                )
            )
    return _outcome(problems, bool(record.settlements))


# --- fee lines ------------------------------------------------------------------------------------


def _fee_lines(record: Record) -> Iterable[tuple[dict[str, Any], list[dict[str, Any]]]]:
    for e in record.his:
        if e["rpc"] in SETTLING:
            yield e, settlement_request(e).get("items", [])


@check("fees.amount", "fee line amount = price × quantity")
def fees_amount(record: Record, scenario: Scenario) -> tuple[str, str, tuple[int, ...]]:
    """Every fee line's amount_fen (det_item_fee_sumamt) equals unit_price_fen (pric) ×
    quantity (cnt)."""
    problems: list[Problem] = []
    lines = list(_fee_lines(record))
    for e, items in lines:
        for item in items:
            price, quantity, amount = (
                int(item.get(k, 0)) for k in ("unit_price_fen", "quantity", "amount_fen")
            )
            if amount != price * quantity:
                problems.append(
                    (
                        f"#{e['seq']} line {item.get('sequence_no', '?')}: amount {amount} fen ≠ "
                        f"{price} × {quantity} = {price * quantity} fen",
                        [e["seq"]],
                    )
                )
    return _outcome(problems, bool(lines))


@check("fees.sequence-unique", "fee line sequence numbers unique")
def fees_sequence(record: Record, scenario: Scenario) -> tuple[str, str, tuple[int, ...]]:
    """Within one request, every fee line has its own sequence number (feedetl_sn)."""
    problems: list[Problem] = []
    lines = list(_fee_lines(record))
    for e, items in lines:
        numbers = [item.get("sequence_no", "") for item in items]
        repeated = sorted({n for n in numbers if numbers.count(n) > 1})
        if repeated:
            problems.append((f"#{e['seq']} repeats sequence number(s) {', '.join(repeated)}", [e["seq"]]))
    return _outcome(problems, bool(lines))


@check("fees.catalog-code", "fee codes as the catalog has them")
def fees_catalog_code(record: Record, scenario: Scenario) -> tuple[str, str, tuple[int, ...]]:
    """Every catalog_code (med_list_codg) is spelled exactly as in the treatment region's
    catalog: a code the catalog does not have is priced as not listed (patient pays all)."""
    problems: list[Problem] = []
    lines = list(_fee_lines(record))
    for e, items in lines:
        unknown = [
            i.get("catalog_code", "") for i in items if i.get("catalog_code", "") not in record.catalog_codes
        ]
        if unknown and record.catalog_codes:
            hint = [c for c in record.catalog_codes if any(u.strip().upper() == c for u in unknown)]
            problems.append(
                (
                    f"#{e['seq']} sends code(s) {', '.join(map(repr, unknown))} the catalog does not have"
                    + (f" (did you mean {', '.join(hint)}?)" if hint else ""),
                    [e["seq"]],
                )
            )
    return _outcome(problems, bool(lines) and bool(record.catalog_codes))


# --- pre-settle and settle ------------------------------------------------------------------------


def _first_settles(record: Record) -> list[dict[str, Any]]:
    seen, out = set(), []
    for e in record.his:
        if e["rpc"] == "SettleVisit" and e["msgid"] not in seen:
            seen.add(e["msgid"])
            out.append(e)
    return out


def _pre_settle_before(record: Record, settle: dict[str, Any]) -> dict[str, Any] | None:
    before = [
        e
        for e in record.his
        if e["rpc"] == "PreSettleVisit"
        and e["code"] == "OK"
        and e["time"] < settle["time"]
        and visit_key(e) == visit_key(settle)
    ]
    return before[-1] if before else None


@check("presettle.before-settle", "pre-settle (2206) before settle where asked")
def presettle_before(record: Record, scenario: Scenario) -> tuple[str, str, tuple[int, ...]]:
    """Where a task asks for it, the HIS pre-settles the visit (and shows the figures)
    before it settles."""
    problems: list[Problem] = []
    asked = [t for t in scenario.tasks if t.do == "settle" and t.pre_settle]
    for t in asked:
        key = _task_key(record, scenario, t.id)
        settles = [e for e in _first_settles(record) if visit_key(e) == key]
        if settles and _pre_settle_before(record, settles[0]) is None:
            problems.append(
                (
                    f"task [{t.id}]: #{settles[0]['seq']} settled without a pre-settle (2206) of the "
                    "visit before it",
                    [settles[0]["seq"]],
                )
            )
    return _outcome(problems, bool(asked))


@check("presettle.matches-settle", "the settle sends what was pre-settled")
def presettle_matches(record: Record, scenario: Scenario) -> tuple[str, str, tuple[int, ...]]:
    """A settle (2207) after a pre-settle (2206) of the same visit sends the same visit
    and fee lines (only its msgid differs): the figures shown are the figures settled."""
    problems: list[Problem] = []
    pairs = [(s, p) for s in _first_settles(record) if (p := _pre_settle_before(record, s)) is not None]
    for s, p in pairs:
        if _without_msgid(settlement_request(s)) != _without_msgid(settlement_request(p)):
            differ = sorted(
                k
                for k in set(settlement_request(s)) | set(settlement_request(p))
                if k != "msgid" and settlement_request(s).get(k) != settlement_request(p).get(k)
            )
            problems.append(
                (
                    f"#{s['seq']} settles a request that differs from the pre-settle #{p['seq']} in "
                    f"{', '.join(differ)}",
                    [p["seq"], s["seq"]],
                )
            )
    return _outcome(problems, bool(pairs))


@check("presettle.figures-differ-undone", "a settle whose figures differ from the pre-settle's is undone")
def figures_differ_undone(record: Record, scenario: Scenario) -> tuple[str, str, tuple[int, ...]]:
    """When the settle's total, fund or patient figure differs from the pre-settle's by more
    than 0.1 yuan (10 fen), the HIS does not keep it: it voids (2601) or reverses (2208) it."""
    problems: list[Problem] = []
    status = {s["msgid"]: s["status"] for s in record.settlements}
    checked = 0
    for s in _first_settles(record):
        p = _pre_settle_before(record, s)
        answer = next(
            (
                e["answer"]
                for e in record.his
                if e["msgid"] == s["msgid"] and e["rpc"] == "SettleVisit" and e["answer"]
            ),
            None,
        )
        if p is None or answer is None:
            continue
        checked += 1
        a, b = figures(p["answer"]), figures(answer)
        worst = max(abs(a[k] - b[k]) for k in a)
        if worst > TOLERANCE_FEN and status.get(s["msgid"]) == "settled":
            problems.append(
                (
                    f"#{s['seq']} settled {b['fund_pays_fen']} fund / {b['patient_pays_fen']} patient fen, "
                    f"the pre-settle #{p['seq']} said {a['fund_pays_fen']} / {a['patient_pays_fen']}: "
                    f"{worst / 100:.2f} yuan off, yet the settlement is still in force; void or reverse it",
                    [p["seq"], s["seq"]],
                )
            )
    return _outcome(problems, checked > 0)


# --- reconciliation -------------------------------------------------------------------------------


def _reconciles(record: Record, start: str, end: str) -> list[dict[str, Any]]:
    return [
        e
        for e in record.his
        if e["rpc"] == "Reconcile"
        and e["code"] == "OK"
        and e["request"].get("start_date") == start
        and e["request"].get("end_date") == end
    ]


@check("reconcile.sent", "reconciliation (3201) sent where asked")
def reconcile_sent(record: Record, scenario: Scenario) -> tuple[str, str, tuple[int, ...]]:
    """Every reconcile task's period is reconciled (3201) and answered."""
    asked = [t for t in scenario.tasks if t.do == "reconcile"]
    problems: list[Problem] = [
        (f"task [{t.id}]: no reconciliation (3201) of {t.start}..{t.end} was answered", [])
        for t in asked
        if not _reconciles(record, t.start, t.end)
    ]
    return _outcome(problems, bool(asked))


@check("reconcile.matched", "reconciliation ends matched")
def reconcile_matched(record: Record, scenario: Scenario) -> tuple[str, str, tuple[int, ...]]:
    """The last reconciliation of each asked period matched: the HIS's count, total, fund
    and patient figures equal the platform's."""
    problems: list[Problem] = []
    asked = [t for t in scenario.tasks if t.do == "reconcile"]
    for t in asked:
        done = _reconciles(record, t.start, t.end)
        if done and not done[-1]["answer"].get("matched", False):
            last = done[-1]
            problems.append(
                (
                    f"task [{t.id}]: the last reconciliation #{last['seq']} did not match "
                    f"({', '.join(last['answer'].get('mismatched_fields', []))})",
                    [last["seq"]],
                )
            )
    return _outcome(problems, bool(asked))


@check("reconcile.entries-on-mismatch", "a mismatch is followed by the entries (3202)")
def reconcile_entries(record: Record, scenario: Scenario) -> tuple[str, str, tuple[int, ...]]:
    """A reconciliation that does not match is followed by one with include_entries (3202
    对明细账) over the period, so the HIS can find the settlement that differs."""
    problems: list[Problem] = []
    rec = [e for e in record.his if e["rpc"] == "Reconcile" and e["code"] == "OK"]
    mismatches = [e for e in rec if not e["answer"].get("matched", False)]
    for m in mismatches:
        if m["request"].get("include_entries"):
            continue
        start, end = m["request"].get("start_date", ""), m["request"].get("end_date", "")
        if not any(
            e["time"] > m["time"]
            and e["request"].get("include_entries")
            and e["request"].get("start_date", "") <= start
            and e["request"].get("end_date", "") >= end
            for e in rec
        ):
            problems.append(
                (
                    f"#{m['seq']} did not match and no reconciliation with entries followed: ask for "
                    "include_entries and compare entry by entry",
                    [m["seq"]],
                )
            )
    return _outcome(problems, bool(mismatches))


# --- the end state --------------------------------------------------------------------------------


@check("end.visit-state", "the ledger ends as the scenario expects")
def end_state(record: Record, scenario: Scenario) -> tuple[str, str, tuple[int, ...]]:
    """For each settle task the scenario names: the settlements in force for its visit,
    the last one's status and figures; a visit that must be refused holds none."""
    problems: list[Problem] = []
    by_visit = _in_force(record)
    for task_id, want in scenario.expect.items():
        key = _task_key(record, scenario, task_id)
        rows = by_visit.get(key, [])
        in_force = [s for s in rows if s["status"] == "settled"]
        seqs = _entries_of_msgids(record, {s["msgid"] for s in rows}) or [
            e["seq"] for e in record.his if e["rpc"] == "SettleVisit" and visit_key(e) == key
        ]
        at = _named(seqs)
        if want.refused:
            tried = [e for e in record.his if e["rpc"] == "SettleVisit" and visit_key(e) == key]
            if in_force or (tried and not any(e["reason"] == want.refused for e in tried)):
                problems.append(
                    (
                        f"task [{task_id}]: the platform should refuse it {want.refused} and settle "
                        f"nothing; it holds {len(in_force)} in force{at}",
                        seqs,
                    )
                )
            continue
        if want.in_force is not None and len(in_force) != want.in_force:
            problems.append(
                (
                    f"task [{task_id}]: {len(in_force)} settlement(s) in force for the visit, expected "
                    f"{want.in_force}{at}",
                    seqs,
                )
            )
        last = rows[-1] if rows else None
        if want.status and (last is None or last["status"] != want.status):
            problems.append(
                (
                    f"task [{task_id}]: the visit's settlement is {last['status'] if last else 'missing'}, "
                    f"expected {want.status}{at}",
                    seqs,
                )
            )
        for name, column in (
            ("fund_pays_fen", "fund_pays"),
            ("patient_pays_fen", "patient_pays"),
            ("total_fen", "total"),
        ):
            expected = getattr(want, name)
            if expected is not None and in_force and in_force[-1][column] != expected:
                problems.append(
                    (f"task [{task_id}]: {name} {in_force[-1][column]}, expected {expected}{at}", seqs)
                )
    return _outcome(problems, bool(scenario.expect))
