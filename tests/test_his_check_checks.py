"""The checks are pure functions over plain journal data: each is shown passing on
a good HIS's record and failing on a wrong one, without a server. The scenario
loader refuses what the format does not allow, naming file, path and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from settlesim.clients.hischeck import checks
from settlesim.clients.hischeck.checks import Record
from settlesim.clients.hischeck.scenarios import ScenarioError, bundled, find_scenario, load_scenario

INST = "H11010500001"
HAPPY = find_scenario("qinghai-happy-path")
MSG1, MSG2, MSG3 = (f"{INST}20261201090000{n:04d}" for n in (1, 2, 3))
ITEMS = [
    {
        "sequence_no": "0001",
        "catalog_code": "A-CONSULT-001",
        "unit_price_fen": "5000",
        "quantity": "1",
        "amount_fen": "5000",
    },
    {
        "sequence_no": "0002",
        "catalog_code": "A-CHEMO-001",
        "unit_price_fen": "4321",
        "quantity": "3",
        "amount_fen": "12963",
    },
]
VISIT = {
    "institution_code": INST,
    "person": {"person_no": "63000000000000000001"},
    "disease_code": "M00503",
    "visit_date": "2021-12-09",
}
# The happy path's figures (scenario why): total 17963, fund 12963, patient 5000.
ANSWER = {
    "settlement": {
        "settlement_id": "S1",
        "totals": {"total_fen": "17963", "fund_pays_fen": "12963", "patient_pays_fen": "5000"},
    }
}


def entry(
    seq: int, rpc: str, msgid: str = "", code: str = "OK", reason: str = "", **extra: Any
) -> dict[str, Any]:
    request = extra.pop("request", None)
    if request is None and rpc in ("PreSettleVisit", "SettleVisit"):
        request = {"request": {"msgid": msgid, "visit": VISIT, "items": extra.pop("items", ITEMS)}}
    return {
        "seq": seq,
        "time": f"2026-12-01T09:00:{seq:02d}.000000+00:00",
        "rpc": rpc,
        "institution": INST,
        "identity": "",
        "session": "s",
        "run_id": "r",
        "actor": "his",
        "msgid": msgid,
        "request_hash": extra.pop("hash", f"h-{msgid}"),
        "code": code,
        "reason": reason,
        "fault": "",
        "latency_ms": 1.0,
        "undelivered": False,
        "request": request or {},
        "answer": extra.pop("answer", None),
        **extra,
    }


def settlement(msgid: str, status: str = "settled", sid: str = "S1", fund: int = 12963) -> dict[str, Any]:
    return {
        "settlement_id": sid,
        "msgid": msgid,
        "institution_code": INST,
        "person_no": "63000000000000000001",
        "disease_code": "M00503",
        "visit_date": "2021-12-09",
        "status": status,
        "total": 17963,
        "fund_pays": fund,
        "patient_pays": 17963 - fund,
        "undone_by_msgid": "",
    }


def good_record() -> Record:
    """What the good HIS leaves on the happy path: pre-settle, settle, reconcile matched."""
    return Record(
        run={"institution_code": INST},
        entries=[
            entry(1, "PreSettleVisit", MSG1, answer=ANSWER),
            entry(2, "SettleVisit", MSG2, answer=ANSWER),
            entry(
                3,
                "Reconcile",
                request={"start_date": "2021-12-01", "end_date": "2021-12-31"},
                answer={"matched": True},
            ),
        ],
        settlements=[settlement(MSG2)],
        catalog_codes=frozenset({"A-CONSULT-001", "A-CHEMO-001"}),
    )


def result(record: Record, check_id: str, scenario: Any = HAPPY) -> checks.CheckResult:
    return next(r for r in checks.grade(record, scenario) if r.id == check_id)


def with_entries(
    record: Record, entries: list[dict[str, Any]], settlements: list[dict[str, Any]] | None = None
):
    return Record(
        record.run, entries, record.settlements if settlements is None else settlements, record.catalog_codes
    )


def test_the_good_record_passes_every_check():
    results = checks.grade(good_record(), HAPPY)
    assert [r.id for r in results if r.status == "failed"] == []
    assert {r.id for r in results if r.status == "passed"} >= {
        "msgid.format",
        "presettle.before-settle",
        "reconcile.matched",
        "end.visit-state",
    }


def test_msgid_format_and_timestamp():
    bad = with_entries(good_record(), [entry(1, "SettleVisit", f"{INST}202612010900")])
    r = result(bad, "msgid.format")
    assert r.status == "failed" and r.entries == (1,) and "#1" in r.message
    old = with_entries(good_record(), [entry(1, "SettleVisit", f"{INST}201901010800000001")])
    assert result(old, "msgid.timestamp").status == "failed"
    impossible = with_entries(good_record(), [entry(1, "SettleVisit", f"{INST}202613450900000001")])
    assert "no date and time" in result(impossible, "msgid.timestamp").message
    # 8 hours ahead (an HIS on Beijing time) is a plausible local clock
    beijing = with_entries(good_record(), [entry(1, "SettleVisit", f"{INST}202612011700000001")])
    assert result(beijing, "msgid.timestamp").status == "passed"


def test_msgid_unique_per_request():
    reused = with_entries(
        good_record(), [entry(1, "SettleVisit", MSG1, hash="a"), entry(2, "SettleVisit", MSG1, hash="b")]
    )
    assert result(reused, "msgid.unique").entries == (1, 2)
    retried = with_entries(
        good_record(), [entry(1, "SettleVisit", MSG1, hash="a"), entry(2, "SettleVisit", MSG1, hash="a")]
    )
    assert result(retried, "msgid.unique").status == "passed"


def test_a_lost_answer_retried_under_a_new_msgid_and_never_resolved():
    lost = entry(
        1, "SettleVisit", MSG1, code="UNAVAILABLE", reason="INJECTED_FAULT", fault="drop_after_commit"
    )
    new = entry(2, "SettleVisit", MSG2, answer=ANSWER)
    record = with_entries(good_record(), [lost, new], [settlement(MSG1), settlement(MSG2, sid="S2", fund=0)])
    assert result(record, "retry.same-msgid").entries == (1, 2)
    assert result(record, "retry.resolved").entries == (1,)
    assert result(record, "visit.settled-once").status == "failed"
    # voiding the lost msgid first makes the new msgid legitimate
    void = entry(2, "VoidByMessageId", MSG3, request={"original_msgid": MSG1})
    later = dict(new, seq=3, time="2026-12-01T09:00:03.000000+00:00")
    fixed = with_entries(
        good_record(), [lost, void, later], [settlement(MSG1, "voided"), settlement(MSG2, sid="S2")]
    )
    for check_id in ("retry.same-msgid", "retry.resolved", "visit.settled-once"):
        assert result(fixed, check_id).status == "passed", check_id
    # a retry with other bytes under the lost msgid
    changed = dict(new, msgid=MSG1, request_hash="other")
    assert (
        "different bytes" in result(with_entries(good_record(), [lost, changed]), "retry.same-msgid").message
    )
    # an answer the server made after the caller's deadline is a lost answer too
    late = entry(1, "SettleVisit", MSG1, undelivered=True, answer=ANSWER)
    assert result(with_entries(good_record(), [late]), "retry.resolved").status == "failed"


def test_a_refusal_with_a_reason_is_not_retried():
    refusal = entry(1, "SettleVisit", MSG1, code="FAILED_PRECONDITION", reason="DISEASE_NOT_OPENED")
    again = entry(2, "SettleVisit", MSG2, code="FAILED_PRECONDITION", reason="DISEASE_NOT_OPENED", hash="x")
    r = result(with_entries(good_record(), [refusal, again]), "retry.no-refusal-retry")
    assert r.status == "failed" and r.entries == (1, 2)  # same visit and lines under a new msgid
    injected = entry(1, "SettleVisit", MSG1, code="UNAVAILABLE", reason="INJECTED_FAULT")
    retry = entry(2, "SettleVisit", MSG1)
    assert (
        result(with_entries(good_record(), [injected, retry]), "retry.no-refusal-retry").status
        == "not_applicable"
    )


def test_fee_lines():
    wrong = [dict(ITEMS[0]), dict(ITEMS[1], amount_fen="4321")]
    assert (
        "4321 × 3 = 12963"
        in result(
            with_entries(good_record(), [entry(1, "SettleVisit", MSG1, items=wrong)]), "fees.amount"
        ).message
    )
    same = [dict(ITEMS[0]), dict(ITEMS[1], sequence_no="0001")]
    assert result(
        with_entries(good_record(), [entry(1, "SettleVisit", MSG1, items=same)]), "fees.sequence-unique"
    ).entries == (1,)
    lower = [dict(ITEMS[0], catalog_code="a-consult-001"), ITEMS[1]]
    assert (
        "did you mean A-CONSULT-001"
        in result(
            with_entries(good_record(), [entry(1, "SettleVisit", MSG1, items=lower)]), "fees.catalog-code"
        ).message
    )


def test_pre_settle_before_and_equal_to_the_settle():
    no_pre = with_entries(good_record(), good_record().entries[1:])
    assert result(no_pre, "presettle.before-settle").entries == (2,)
    other = entry(2, "SettleVisit", MSG2, items=ITEMS[:1], answer=ANSWER)
    r = result(with_entries(good_record(), [good_record().entries[0], other]), "presettle.matches-settle")
    assert r.entries == (1, 2) and "items" in r.message


def test_a_settle_whose_figures_differ_from_the_pre_settles_must_be_undone():
    # pre-settle said fund 12974 / patient 4989 (11 fen off), the settle 12963 / 5000
    off = {
        "settlement": {"totals": {"total_fen": "17963", "fund_pays_fen": "12974", "patient_pays_fen": "4989"}}
    }
    pre, settle = entry(1, "PreSettleVisit", MSG1, answer=off), entry(2, "SettleVisit", MSG2, answer=ANSWER)
    kept = with_entries(good_record(), [pre, settle], [settlement(MSG2)])
    assert "0.11 yuan off" in result(kept, "presettle.figures-differ-undone").message
    voided = with_entries(good_record(), [pre, settle], [settlement(MSG2, "voided")])
    assert result(voided, "presettle.figures-differ-undone").status == "passed"
    # 10 fen off is within the tolerance
    ten = {
        "settlement": {"totals": {"total_fen": "17963", "fund_pays_fen": "12973", "patient_pays_fen": "4990"}}
    }
    close = with_entries(
        good_record(), [entry(1, "PreSettleVisit", MSG1, answer=ten), settle], [settlement(MSG2)]
    )
    assert result(close, "presettle.figures-differ-undone").status == "passed"


def test_reconciliation_sent_matched_and_entries_on_a_mismatch():
    period = {"start_date": "2021-12-01", "end_date": "2021-12-31"}
    base = good_record().entries[:2]
    assert result(with_entries(good_record(), base), "reconcile.sent").status == "failed"
    mismatch = entry(
        3, "Reconcile", request=period, answer={"matched": False, "mismatched_fields": ["count"]}
    )
    record = with_entries(good_record(), [*base, mismatch])
    assert result(record, "reconcile.matched").entries == (3,)
    assert result(record, "reconcile.entries-on-mismatch").entries == (3,)
    detail = entry(4, "Reconcile", request={**period, "include_entries": True}, answer={"matched": False})
    matched = entry(5, "Reconcile", request=period, answer={"matched": True})
    fixed = with_entries(good_record(), [*base, mismatch, detail, matched])
    assert result(fixed, "reconcile.matched").status == "passed"
    assert result(fixed, "reconcile.entries-on-mismatch").status == "passed"


def test_the_end_state_the_scenario_expects():
    assert (
        result(with_entries(good_record(), good_record().entries, []), "end.visit-state").status == "failed"
    )
    wrong_fund = with_entries(good_record(), good_record().entries, [settlement(MSG2, fund=12000)])
    assert "fund_pays_fen 12000, expected 12963" in result(wrong_fund, "end.visit-state").message
    refused = find_scenario("refused-fuwai-no-tumour")
    attempt = entry(1, "SettleVisit", MSG1, code="FAILED_PRECONDITION", reason="DISEASE_NOT_OPENED")
    record = Record({"institution_code": INST}, [attempt], [])
    assert result(record, "end.visit-state", refused).status == "passed"


def test_setup_calls_are_not_graded_as_the_his():
    setup = dict(entry(1, "SettleVisit", "not-a-national-msgid"), actor="setup")
    assert result(with_entries(good_record(), [setup]), "msgid.format").status == "not_applicable"


# --- the scenario format --------------------------------------------------------------------------


def test_bundled_scenarios_load_and_cover_the_issue_list():
    names = {s.name for s in bundled()}
    assert len(names) >= 12
    assert {
        "qinghai-happy-path",
        "refused-fuwai-no-tumour",
        "lost-answer-after-commit",
        "unavailable-before-commit",
        "deadline-late-commit",
        "reversal",
        "void-unseen",
        "hotan-cap-used-up",
        "reconcile-month-matches",
        "reconcile-forgotten-settlement",
        "presettle-figures-mismatch",
        "beijing-non-named-institution",
    } <= names


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nworld: default\ninstitution: H\nwhy: w\ntasks: []\ncolour: red\n", "colour: unknown key"),
        (
            "name: x\nworld: default\ninstitution: H\nwhy: w\ntasks:\n  - {id: a, do: settle, person: p, disease: d, "
            "date: 2021-01-01, fees: [{code: C, price: 1.5}]}\n",
            "tasks[0].fees[0].price: must be an integer",
        ),
        (
            "name: x\nworld: default\ninstitution: H\nwhy: w\ntasks:\n  - {id: a, do: settle, person: p, disease: d, "
            "date: 2021-01-01, fees: [{code: C, price: 1, colour: red}]}\n",
            "tasks[0].fees[0].colour: unknown key",
        ),
        (
            "name: x\nworld: default\ninstitution: H\nwhy: w\ntasks:\n  - {id: a, do: reverse, settlement_of: b}\n",
            "tasks[0].settlement_of: 'b' is no earlier settle task",
        ),
        (
            "name: x\nworld: default\ninstitution: H\nwhy: w\ntasks: []\nfaults: [{rpc: SettleVisit, kind: k, n: 1}]\n",
            "faults[0].n: unknown key",
        ),
        ("name: x\nworld: default\ninstitution: H\ntasks: []\n", "why: required"),
    ],
)
def test_a_bad_scenario_is_refused_naming_file_path_and_key(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
