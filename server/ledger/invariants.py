"""The ledger's invariants, in SQL both stores run as it is (SQLite and PostgreSQL): what must
hold between settlements, messages, totals, items, sandboxes and national visits. One line
per problem. Each store adds its engine's own check and picks the checks its schema version
has (server/ledger/sqlite/invariants.py, server/ledger/postgres/check.py); each check is shown
failing on a deliberately damaged ledger (tests/test_ledger_check.py, tests/test_ledger_postgres.py).

Portable on purpose: sums are CAST to BIGINT (PostgreSQL's SUM of bigint is numeric), a visit's
year is read from its date as text, no engine's own functions.
"""

from __future__ import annotations

from typing import Any, Protocol

from settlesim.server.ledger.contract import Figures

# The bound the stores keep on an institution's yearly total (LedgerStore.MAX_INSTITUTION_YEAR_FEN).
MAX_INSTITUTION_YEAR_FEN = 10**16


class Connection(Protocol):
    """A connection of either store: sqlite3's or psycopg's (`execute` gives an iterable cursor)."""

    def execute(self, query: Any, params: Any = ...) -> Any: ...


def counts(db: Connection) -> dict[str, int]:
    """Settlements by status, every namespace."""
    return dict(db.execute("SELECT status, COUNT(*) FROM settlements GROUP BY status").fetchall())


def namespaces_of(db: Connection, has_sessions: bool = True) -> dict[str, Figures]:
    """Figures per namespace: the real ledger ("", always there) and every sandbox that holds
    anything (a settlement, a message or an owner)."""
    rows: dict[str, list[tuple[str, int, int, int, int]]] = {"": []}
    used = "SELECT session FROM messages"
    if has_sessions:  # schema version 5 on
        used += " UNION SELECT session FROM sessions"
    for (session,) in db.execute(used):
        rows.setdefault(session, [])
    for session, status, n, total, fund, patient in db.execute(
        "SELECT session, status, COUNT(*), CAST(SUM(total) AS BIGINT), CAST(SUM(fund_pays) AS BIGINT), "
        "CAST(SUM(patient_pays) AS BIGINT) "
        "FROM settlements GROUP BY 1, 2"
    ):
        rows.setdefault(session, []).append((status, n, total, fund, patient))
    figures = {}
    for session, statuses in rows.items():
        in_force = [r for r in statuses if r[0] == "settled"] or [("settled", 0, 0, 0, 0)]
        _, n, total, fund, patient = in_force[0]
        counts = {status: count for status, count, *_ in statuses}
        figures[session] = Figures(1 if session else 0, counts, n, total, fund, patient)
    return figures


def totals_problems(db: Connection, funds: bool = True) -> list[str]:
    """Yearly totals equal the sum of the settlements in force, and are never negative: the
    deductible and the pooled fund, and (`funds`: version 7) each fund's and the account's
    counters. Before version 7 the pooled fund was every fund (COALESCE(pooled_pays, fund_pays))."""
    sums = (
        "CAST(SUM(COALESCE(pooled_pays, fund_pays)) AS BIGINT), CAST(SUM(COALESCE(serious_threshold, 0)) AS BIGINT), "
        "CAST(SUM(COALESCE(serious_pays, 0)) AS BIGINT), CAST(SUM(COALESCE(assistance_pays, 0)) AS BIGINT), "
        "CAST(SUM(COALESCE(account_pays, 0)) AS BIGINT)"
        if funds
        else "CAST(SUM(fund_pays) AS BIGINT), 0, 0, 0, 0"
    )
    counters = (
        "fund_paid, serious_threshold_used, serious_paid, assistance_paid, account_paid"
        if funds
        else "fund_paid, 0, 0, 0, 0"
    )
    expected = {
        (s, p, d, y): tuple(rest)
        for s, p, d, y, *rest in db.execute(
            f"SELECT session, person_no, disease_code, year, CAST(SUM(deductible_applied) AS BIGINT), {sums} "
            "FROM settlements WHERE status = 'settled' GROUP BY 1, 2, 3, 4"
        )
    }
    actual = {
        (s, p, d, y): tuple(rest)
        for s, p, d, y, *rest in db.execute(
            f"SELECT session, person_no, disease_code, year, deductible_used, {counters} FROM yearly_totals"
        )
    }
    problems = []
    for key in sorted(set(expected) | set(actual)):
        want, have = expected.get(key, (0,) * 6), actual.get(key, (0,) * 6)
        if want[:2] != have[:2]:
            problems.append(
                f"yearly totals {key}: deductible/fund {have[:2]} but settlements in force sum to {want[:2]}"
            )
        if want[2:] != have[2:]:
            problems.append(
                f"yearly totals {key}: threshold/serious/assistance/account {have[2:]} but settlements in force "
                f"sum to {want[2:]}"
            )
        if have[0] < 0 or have[1] < 0:
            problems.append(f"yearly totals {key}: deductible/fund {have[:2]} is negative")
        if min(have[2:]) < 0:
            problems.append(
                f"yearly totals {key}: threshold/serious/assistance/account {have[2:]} is negative"
            )
    return problems


def fund_problems(db: Connection) -> list[str]:
    """(version 7) A settlement's funds add up to its fund_pays; the account pays part of the patient's."""
    return [
        f"settlement {settlement_id}: pooled {pooled} + serious {serious} + assistance {assistance} != fund "
        f"{fund}, or account {account} outside 0..patient {patient}"
        for settlement_id, fund, patient, pooled, serious, assistance, account in db.execute(
            "SELECT settlement_id, fund_pays, patient_pays, pooled_pays, serious_pays, assistance_pays, "
            "account_pays FROM settlements WHERE pooled_pays IS NOT NULL AND (pooled_pays + "
            "serious_pays + assistance_pays != fund_pays OR pooled_pays < 0 OR serious_pays < 0 "
            "OR assistance_pays < 0 OR account_pays < 0 OR account_pays > patient_pays)"
        )
    ]


def institution_totals_problems(db: Connection) -> list[str]:
    """(version 4) Each institution's yearly total equals the sum of its settlements
    in force and lies within 0..MAX_INSTITUTION_YEAR_FEN."""
    expected = dict(
        ((s, i, y), total)
        for s, i, y, total in db.execute(
            "SELECT session, institution_code, year, CAST(SUM(total) AS BIGINT) FROM settlements "
            "WHERE status = 'settled' GROUP BY 1, 2, 3"
        )
    )
    actual = dict(
        ((s, i, y), total)
        for s, i, y, total in db.execute(
            "SELECT session, institution_code, year, total FROM institution_totals"
        )
    )
    problems = []
    for key in sorted(set(expected) | set(actual)):
        want, have = expected.get(key, 0), actual.get(key, 0)
        if want != have:
            problems.append(f"institution totals {key}: total {have} but settlements in force sum to {want}")
        if not 0 <= have <= MAX_INSTITUTION_YEAR_FEN:
            problems.append(f"institution totals {key}: total {have} outside 0..{MAX_INSTITUTION_YEAR_FEN}")
    return problems


def national_visit_problems(db: Connection) -> list[str]:
    """(version 6) The national visit flow: every fee line belongs to a visit, every
    linked visit's 2207 msgid is a settlement of that visit's person and institution,
    and no two visits hold the same settlement."""
    problems = [
        f"national fee line {sn} of visit {mdtrt_id} ({session!r}, {institution}): no such visit"
        for session, institution, mdtrt_id, sn in db.execute(
            "SELECT f.session, f.institution_code, f.mdtrt_id, f.feedetl_sn FROM national_fee_lines f "
            "LEFT JOIN national_visits v USING (session, institution_code, mdtrt_id) WHERE v.mdtrt_id IS NULL"
        )
    ]
    problems += [
        f"national visit {mdtrt_id} ({session!r}, {institution}): its settlement msgid {msgid} is "
        + ("not a settlement" if person is None else f"person {person}'s, the visit is {psn_no}'s")
        for session, institution, mdtrt_id, msgid, psn_no, person in db.execute(
            # The settlements some visit names, gathered in one pass: SQLite's ledger has no index
            # on settlements by msgid (schema 8), and a probe per visit would scan its institution's.
            "WITH linked AS MATERIALIZED (SELECT session, institution_code, msgid, person_no FROM settlements "
            "WHERE msgid IN (SELECT settle_msgid FROM national_visits)) "
            "SELECT v.session, v.institution_code, v.mdtrt_id, v.settle_msgid, v.psn_no, s.person_no "
            "FROM national_visits v LEFT JOIN linked s ON s.session = v.session "
            "AND s.institution_code = v.institution_code AND s.msgid = v.settle_msgid "
            "WHERE v.settle_msgid != '' AND (s.person_no IS NULL OR s.person_no != v.psn_no)"
        )
    ]
    problems += [
        f"national settlement msgid {msgid} ({session!r}, {institution}) is linked to {count} visits"
        for session, institution, msgid, count in db.execute(
            "SELECT session, institution_code, settle_msgid, COUNT(*) FROM national_visits "
            "WHERE settle_msgid != '' GROUP BY 1, 2, 3 HAVING COUNT(*) > 1"
        )
    ]
    return problems


def message_problems(db: Connection) -> list[str]:
    """Settlements and messages agree, each msgid in its sender's namespace: one
    settlement per (institution, settle msgid), every settlement has its settle
    message, every acknowledged settle still has its own settlement, every undone
    settlement names the reversal or void that undid it, and every reversal or
    void undid the settlement it names."""
    problems = [
        f"msgid {msgid} of {institution} has {count} settlements"
        for institution, msgid, count in db.execute(
            "SELECT institution_code, msgid, COUNT(*) FROM settlements "
            "GROUP BY session, institution_code, msgid HAVING COUNT(*) > 1"
        )
    ]
    problems += [
        f"settlement {settlement_id} has no settle message {msgid!r} from {institution}"
        for settlement_id, msgid, institution in db.execute(
            "SELECT s.settlement_id, s.msgid, s.institution_code FROM settlements s LEFT JOIN messages m "
            "ON m.session = s.session AND m.institution_code = s.institution_code AND m.msgid = s.msgid "
            "AND m.kind = 'settle' AND m.settlement_id = s.settlement_id WHERE m.msgid IS NULL"
        )
    ]
    problems += [
        f"settle msgid {msgid} of {institution} answered settlement {settlement_id}, which is "
        + ("missing" if owner is None else f"msgid {other!r} of {owner}")
        for msgid, institution, settlement_id, other, owner in db.execute(
            "SELECT m.msgid, m.institution_code, m.settlement_id, s.msgid, s.institution_code "
            "FROM messages m LEFT JOIN settlements s "
            "ON s.session = m.session AND s.settlement_id = m.settlement_id "
            "WHERE m.kind = 'settle' AND (s.settlement_id IS NULL "
            "OR s.msgid != m.msgid OR s.institution_code != m.institution_code)"
        )
    ]
    problems += [
        f"settlement {settlement_id} is {status} but no {status[:-1]} message {by!r} undid it"
        for settlement_id, status, by in db.execute(
            "SELECT s.settlement_id, s.status, s.undone_by_msgid FROM settlements s LEFT JOIN messages m "
            "ON m.session = s.session AND m.institution_code = s.institution_code "
            "AND m.msgid = s.undone_by_msgid AND m.settlement_id = s.settlement_id "
            "AND m.kind = CASE s.status WHEN 'reversed' THEN 'reverse' ELSE 'void' END "
            "WHERE s.status != 'settled' AND m.msgid IS NULL"
        )
    ]
    for kind, msgid, institution, settlement_id, status, by, owner in db.execute(
        "SELECT m.kind, m.msgid, m.institution_code, m.settlement_id, s.status, s.undone_by_msgid, "
        "s.institution_code FROM messages m LEFT JOIN settlements s "
        "ON s.session = m.session AND s.settlement_id = m.settlement_id "
        "WHERE m.kind IN ('reverse', 'void') AND m.settlement_id NOT IN ('', '-') AND (s.settlement_id IS NULL "
        "OR s.status != CASE m.kind WHEN 'reverse' THEN 'reversed' ELSE 'voided' END "
        "OR s.undone_by_msgid != m.msgid OR s.institution_code != m.institution_code)"
    ):
        if status is None:
            state = "missing"
        elif status == "settled":
            state = "still settled"
        else:
            state = f"{status} by msgid {by!r} of {owner}"
        problems.append(
            f"{kind} msgid {msgid} of {institution} undid settlement {settlement_id}, which is {state}"
        )
    return problems


def session_problems(db: Connection, owned_by: dict[str, str]) -> list[str]:
    """Every sandbox that holds messages has its owners recorded (`owned_by`: session ->
    institutions), and holds messages only of them."""
    used: dict[str, set[str]] = {}
    for session, institution in db.execute(
        "SELECT DISTINCT session, institution_code FROM messages WHERE session != ''"
    ):
        used.setdefault(session, set()).add(institution)
    problems = []
    for session, institutions in sorted(used.items()):
        if session not in owned_by:
            problems.append(
                f"session {session} has no owner, yet holds messages of {', '.join(sorted(institutions))}"
            )
        elif outsiders := institutions - set(owned_by[session].split(",")):
            problems.append(
                f"session {session} belongs to {owned_by[session]} but holds messages of {', '.join(sorted(outsiders))}"
            )
    return problems


def money_problems(db: Connection) -> list[str]:
    """Each settlement's money adds up, its deductible lies within its total, and
    it sits in its visit's year."""
    problems = [
        f"settlement {settlement_id}: fund {fund} + patient {patient} != total {total}"
        for settlement_id, total, fund, patient in db.execute(
            "SELECT settlement_id, total, fund_pays, patient_pays FROM settlements "
            "WHERE fund_pays + patient_pays != total OR fund_pays < 0 OR patient_pays < 0"
        )
    ]
    problems += [
        f"settlement {settlement_id}: year {year} is not the year of visit {visit}"
        for settlement_id, year, visit in db.execute(
            "SELECT settlement_id, year, visit_date FROM settlements "
            "WHERE year != CAST(substr(CAST(visit_date AS TEXT), 1, 4) AS INTEGER)"
        )
    ]
    problems += [
        f"settlement {settlement_id}: deductible {deductible} outside 0..total {total}"
        for settlement_id, deductible, total in db.execute(
            "SELECT settlement_id, deductible_applied, total FROM settlements "
            "WHERE deductible_applied < 0 OR deductible_applied > total"
        )
    ]
    return problems


def item_problems(db: Connection) -> list[str]:
    """A settlement's figures are its items' parts added up: each item's parts
    make its amount, the amounts make the total, and the items' full self-pay,
    over-ceiling, pre-self-pay and in-scope parts make the settlement's. A
    settlement with figures (schema version 2 on) has item rows."""
    problems = [
        f"settlement {sid} item {seq}: parts {full} + {over} + {pre} + {scope} != amount {amount}"
        for sid, seq, amount, full, over, pre, scope in db.execute(
            "SELECT settlement_id, sequence_no, amount, full_self_pay, over_ceiling, pre_self_pay, in_scope "
            "FROM settlement_items WHERE full_self_pay + over_ceiling + pre_self_pay + in_scope != amount "
            "OR amount != unit_price * quantity OR full_self_pay < 0 OR over_ceiling < 0 OR pre_self_pay < 0 "
            "OR in_scope < 0"
        )
    ]
    sums = (
        "SELECT s.settlement_id, s.total, s.full_self_pay, s.over_ceiling, s.pre_self_pay, s.in_scope, "
        "COUNT(i.sequence_no), CAST(SUM(i.amount) AS BIGINT), CAST(SUM(i.full_self_pay) AS BIGINT), "
        "CAST(SUM(i.over_ceiling) AS BIGINT), CAST(SUM(i.pre_self_pay) AS BIGINT), CAST(SUM(i.in_scope) AS BIGINT) "
        "FROM settlements s LEFT JOIN settlement_items i "
        "ON i.settlement_id = s.settlement_id WHERE s.full_self_pay IS NOT NULL GROUP BY s.settlement_id"
    )
    for sid, total, full, over, pre, scope, count, *items in db.execute(sums):
        if count == 0:
            problems.append(f"settlement {sid} has figures but no item rows")
        elif tuple(items) != (total, full, over, pre, scope):
            problems.append(
                f"settlement {sid}: total/full/over/pre/in-scope {(total, full, over, pre, scope)} "
                f"but its items sum to {tuple(items)}"
            )
    problems += [
        f"item rows of settlement {sid}, which does not exist"
        for (sid,) in db.execute(
            "SELECT DISTINCT i.settlement_id FROM settlement_items i LEFT JOIN settlements s "
            "ON s.settlement_id = i.settlement_id WHERE s.settlement_id IS NULL"
        )
    ]
    return problems
