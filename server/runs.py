"""Check runs: while a run is open for an institution, that institution's calls
belong to the run (docs/his-check.md).

A real HIS sends no custom metadata, so a call without an `x-settlesim-session`
header goes to the open run of the institution it acts for (the authenticated
one on a secured stub, the one the request names on the insecure stub); a call
whose header names the run's session belongs to it too. Each run has its own
sandbox session (`hischeck-<run id>`), so a nightly run starts from clean
yearly totals and leaves the default namespace alone.

Runs are kept in the journal's file (table `runs`), so a restarted server
routes an institution's calls to its open run again. One institution has at
most one open run; different institutions run in parallel. A run stops taking
calls when it is closed or when its timeout passes.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from settlesim.server.journal import CallNote, Journal
from settlesim.server.rules.reasons import Reason, Refusal

RUNS_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    institution TEXT NOT NULL,
    scenario    TEXT NOT NULL,
    session     TEXT NOT NULL,
    opened_at   TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    closed_at   TEXT NOT NULL DEFAULT '',
    faults      TEXT NOT NULL
);
"""
SETUP_HEADER = "x-settlesim-his-check"  # "setup": his-check itself arranging a scenario's state
DEFAULT_TIMEOUT_S = 3600


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class TargetedFault:
    """A fault aimed at exact calls of one RPC in a run (server/faults.py)."""

    rpc: str
    kind: str  # unavailable | drop_after_commit | delay | figures_off
    nth: tuple[int, ...] = ()
    from_nth: int = 0
    delay_ms: int = 0
    figures_off_fen: int = 0

    def hits(self, n: int) -> bool:
        return n in self.nth or (self.from_nth > 0 and n >= self.from_nth)


@dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    institution: str
    scenario: str
    session: str
    opened_at: str
    expires_at: str
    closed_at: str = ""
    faults: tuple[TargetedFault, ...] = ()

    @property
    def open(self) -> bool:
        return not self.closed_at and datetime.fromisoformat(self.expires_at) > _now()


@dataclass
class _Counts:
    """Calls per RPC so far in a run (the n of "the nth SettleVisit")."""

    by_rpc: dict[str, int] = field(default_factory=dict)


class RunRegistry:
    """Open runs in memory (looked up on every call), persisted in the journal file."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        with journal.using() as db:
            db.executescript(RUNS_SCHEMA)
            rows = db.execute(
                "SELECT run_id, institution, scenario, session, opened_at, expires_at, closed_at, faults "
                "FROM runs WHERE closed_at = ''"
            ).fetchall()
        self._lock = threading.Lock()
        self._open: dict[str, Run] = {}  # institution -> run
        self._counts: dict[str, _Counts] = {}
        self._in_flight: dict[str, int] = {}
        self._settled = threading.Condition(self._lock)
        for row in rows:
            run = _run_of(row)
            if run.open:
                self._open[run.institution] = run
                self._counts[run.run_id] = _Counts()

    @property
    def any_open(self) -> bool:
        return bool(self._open)

    def open_run(
        self, institution: str, scenario: str, faults: tuple[TargetedFault, ...], timeout_s: int = 0
    ) -> Run:
        opened = _now()
        run_id = opened.strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:8]
        run = Run(
            run_id=run_id,
            institution=institution,
            scenario=scenario,
            session=f"hischeck-{run_id}",
            opened_at=opened.isoformat(timespec="seconds"),
            expires_at=(opened + timedelta(seconds=timeout_s or DEFAULT_TIMEOUT_S)).isoformat(
                timespec="seconds"
            ),
            faults=faults,
        )
        with self._lock:
            current = self._open.get(institution)
            if current is not None and current.open:
                raise Refusal(
                    Reason.RUN_ALREADY_OPEN,
                    f"{institution} has check run {current.run_id} open ({current.scenario}); "
                    f"finish it first (settlesim his-check finish {current.run_id})",
                    run_id=current.run_id,
                )
            with self.journal.using() as db:
                db.execute(
                    "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, '', ?)",
                    (
                        run.run_id,
                        institution,
                        scenario,
                        run.session,
                        run.opened_at,
                        run.expires_at,
                        json.dumps([_fault_dict(f) for f in faults]),
                    ),
                )
            self._open[institution] = run
            self._counts[run_id] = _Counts()
        return run

    def get(self, run_id: str) -> Run | None:
        with self.journal.using() as db:
            row = db.execute(
                "SELECT run_id, institution, scenario, session, opened_at, expires_at, closed_at, faults "
                "FROM runs WHERE run_id = ?",
                (run_id,),
            ).fetchone()
        return _run_of(row) if row is not None else None

    def close_run(self, run_id: str) -> Run | None:
        run = self.get(run_id)
        if run is None or run.closed_at:
            return run
        closed = replace(run, closed_at=_now().isoformat(timespec="seconds"))
        with self._lock:
            with self.journal.using() as db:
                db.execute("UPDATE runs SET closed_at = ? WHERE run_id = ?", (closed.closed_at, run_id))
            if (
                self._open.get(run.institution, None) is not None
                and self._open[run.institution].run_id == run_id
            ):
                del self._open[run.institution]
        return closed

    def run_for(self, header_session: str, institution: str) -> Run | None:
        """The open run a call belongs to (see the module docstring)."""
        run = self._open.get(institution)
        if run is None or not run.open:
            return None
        if header_session and header_session != run.session:
            return None
        return run

    def call_started(self, run: Run) -> Any:
        """Count a call of `run` in flight; the function returned ends it."""
        with self._lock:
            self._in_flight[run.run_id] = self._in_flight.get(run.run_id, 0) + 1

        def done() -> None:
            with self._lock:
                self._in_flight[run.run_id] -= 1
                self._settled.notify_all()

        return done

    def wait_idle(self, run_id: str, timeout: float = 65.0) -> bool:
        """Wait until no call of the run is in flight (a delayed call still asleep
        belongs in the record), at most `timeout` seconds."""
        with self._lock:
            return self._settled.wait_for(lambda: self._in_flight.get(run_id, 0) <= 0, timeout)

    def count(self, run: Run, rpc: str) -> int:
        """This call's number among the run's calls of `rpc`, from 1."""
        with self._lock:
            counts = self._counts.setdefault(run.run_id, _Counts()).by_rpc
            counts[rpc] = counts.get(rpc, 0) + 1
            return counts[rpc]


def route_call(
    runs: RunRegistry | None,
    context: Any,
    header_session: str,
    identity: str,
    claimed: str,
    note: CallNote | None,
) -> str:
    """The session a call uses: its run's session when it belongs to an open run
    of the institution it acts for (`identity` when the transport proved one,
    else `claimed`, the institution the request names), else its own header's.
    Notes the call's who and run for the journal and applies the run's targeted
    faults that act before the call runs (server/faults.py)."""
    institution = identity or claimed
    if note is not None:
        note.identity, note.institution, note.session = identity, claimed, header_session
    if runs is None or not runs.any_open:
        return header_session
    run = runs.run_for(header_session, institution)
    if run is None:
        return header_session
    metadata = context.invocation_metadata() or ()
    setup = any(key == SETUP_HEADER and value == "setup" for key, value in metadata)
    if note is not None:
        note.run, note.session = run, run.session
        note.done = runs.call_started(run)
        if setup:
            note.actor = "setup"
        else:
            from settlesim.server.faults import before_call

            before_call(runs, run, note)
    return run.session


def _fault_dict(f: TargetedFault) -> dict[str, Any]:
    return {
        "rpc": f.rpc,
        "kind": f.kind,
        "nth": list(f.nth),
        "from_nth": f.from_nth,
        "delay_ms": f.delay_ms,
        "figures_off_fen": f.figures_off_fen,
    }


def fault_of(data: dict[str, Any]) -> TargetedFault:
    return TargetedFault(
        rpc=data["rpc"],
        kind=data["kind"],
        nth=tuple(data.get("nth", ())),
        from_nth=data.get("from_nth", 0),
        delay_ms=data.get("delay_ms", 0),
        figures_off_fen=data.get("figures_off_fen", 0),
    )


def _run_of(row: tuple[Any, ...]) -> Run:
    run_id, institution, scenario, session, opened_at, expires_at, closed_at, faults = row
    return Run(
        run_id,
        institution,
        scenario,
        session,
        opened_at,
        expires_at,
        closed_at,
        tuple(fault_of(f) for f in json.loads(faults)),
    )
