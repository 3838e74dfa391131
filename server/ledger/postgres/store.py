"""The PostgreSQL ledger (`--db postgresql://...`): the ledger's contract on a database server,
so that several `settlesim serve` replicas on several machines are one platform.

Every write is one transaction of its own on a pooled connection (psycopg 3, psycopg_pool),
committed with synchronous_commit on before its caller is answered; PostgreSQL's own group
commit shares the WAL flush between the replicas' concurrent commits. The guarantees of the
single SQLite process hold across replicas because the database gives them, not the process:

- a settle reads the person's yearly totals, prices the visit and updates them in one
  transaction holding the totals' row lock (INSERT ... ON CONFLICT DO UPDATE ... RETURNING
  takes it, creating the row the first time): a concurrent settle of the same person waits and
  then reads what the first one committed. `totals_lock="serializable"` runs the same work
  under SERIALIZABLE with retries instead (measured against each other in docs/ledger.md);
- a msgid is claimed by the unique key (session, institution, msgid) of `messages` and of
  `settlements`: the same msgid at two replicas at once makes one settlement; the loser's
  transaction sees the winner's once it has the totals lock (or retries after the unique
  violation) and answers the same settlement as a replay;
- a reversal or void updates the settlement only `WHERE status = 'settled'` under its row
  lock, so it applies once.

Storage failures (the server unreachable, a restart, a lost connection, serialization past the
retries) leave as LEDGER_UNAVAILABLE with a `cause` (errors.py); the write health
(server/ledger/health.py) goes NOT_SERVING and a probe every second brings it back once a write commits again.
A connection lost mid-call is retried once on a fresh one: every write is keyed by its msgid,
so a retry of a write that did commit answers it as a replay.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout
from settlesim.server.ledger.contract import (
    AnswerCheck,
    AuditAnchor,
    Compute,
    FeeLine,
    LedgerFileError,
    NationalWrites,
    OnSettled,
    ReconcileSums,
    StoredSettlement,
    Visit,
    VoidOutcome,
)
from settlesim.server.ledger.health import WriteHealth
from settlesim.server.ledger.postgres import check, national, schema
from settlesim.server.ledger.postgres.errors import first_line, storage_refusal
from settlesim.server.ledger.postgres.rows import ITEM_COLUMNS, SETTLEMENT_COLUMNS, settlement_of
from settlesim.server.model import YearlyTotals
from settlesim.server.rules.reasons import Reason, Refusal

log = logging.getLogger("settlesim.server")
# The store says when the database goes away and comes back (NOT_SERVING / SERVING, once each);
# the pool would warn again at every reconnection attempt meanwhile.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

T = TypeVar("T")
Connection = psycopg.Connection[Any]

# Retried at once on a fresh snapshot: another replica's concurrent transaction won.
_CONFLICTS = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected, pg_errors.UniqueViolation)


def redacted(dsn: str) -> str:
    """The DSN with its password masked, for logs and messages (the factory's own masking)."""
    from settlesim.server.ledger import _redacted

    return _redacted(dsn)


def _now() -> datetime:
    return datetime.now(UTC)


class PostgresLedger:
    """The ledger on PostgreSQL; the same calls as the SQLite store's (the ledger contract)."""

    MAX_RECONCILE_ENTRIES = 10_000
    MAX_PERSON_YEAR_FEN = 10**12
    MAX_INSTITUTION_YEAR_FEN = 10**16
    POOL_SIZE = 8  # connections per replica (and threads running them)
    WAIT_SECONDS = 2.0  # for a pooled connection: past it the call is refused `unreachable`
    AWAY_WAIT_SECONDS = 0.25  # the same while health says the database is away (NOT_SERVING)
    CONNECT_SECONDS = 2
    CONFLICT_ATTEMPTS = 8  # serialization failures, deadlocks, msgid races retried this often
    STATEMENT_TIMEOUT_MS = 30_000
    HEARTBEAT_SECONDS = 1.0

    def __init__(self, dsn: str, *, totals_lock: str = "row", pool_size: int | None = None) -> None:
        if totals_lock not in ("row", "serializable"):
            raise ValueError(f"totals_lock must be 'row' or 'serializable', not {totals_lock!r}")
        self.dsn = dsn
        self.path = redacted(dsn)  # what logs and the audit log name the ledger by
        self.totals_lock = totals_lock
        self.shared = True  # other replicas write the same database
        size = pool_size or self.POOL_SIZE
        self._pool = ConnectionPool(
            make_conninfo(dsn, **self._connection_defaults(dsn)),
            min_size=1,
            max_size=size,
            kwargs={"autocommit": True},  # transactions are explicit (conn.transaction())
            timeout=self.WAIT_SECONDS,
            reconnect_timeout=self.WAIT_SECONDS,  # give up soon; a later call asks again
            open=False,
            name="settlesim-ledger",
        )
        # One plain connection first: an unreachable database is one line, not the pool's retries.
        if why := self._why_not():
            raise LedgerFileError(f"{self.path}: cannot connect to PostgreSQL: {why}")
        try:
            self._pool.open(wait=True, timeout=self.CONNECT_SECONDS + 3)
        except PoolTimeout:
            self._pool.close()
            raise LedgerFileError(f"{self.path}: cannot connect to PostgreSQL: {self._why_not()}") from None
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="ledger-pg")
        try:
            self.upgraded_from: int | None = self._migrate()
        except BaseException:
            self._pool.close()
            self._executor.shutdown()
            raise
        self._health = WriteHealth(self._probe, storage_refusal)
        self._closed = False
        self.audit_head: Callable[[], tuple[str, AuditAnchor]] | None = None
        self.on_commit: Callable[[int, float], None] | None = None
        self._in_flight = 0
        self.conflicts = 0  # transactions run again after a conflict (the benchmark's figure)
        # An idle replica must say NOT_SERVING too when the database goes away (a load balancer
        # reads its health): a one-row read every HEARTBEAT_SECONDS while healthy.
        self._stopping = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="ledger-pg-heartbeat", daemon=True)
        self._heartbeat.start()

    def _connection_defaults(self, dsn: str) -> dict[str, Any]:
        """Settings every connection gets unless the DSN says otherwise: a bounded connect,
        synchronous_commit on (an acknowledged settle survives a crash of the database server),
        a statement timeout, keepalives that notice a dead peer."""
        given = conninfo_to_dict(dsn)
        defaults: dict[str, Any] = {
            "connect_timeout": self.CONNECT_SECONDS,
            "application_name": "settlesim",
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
        }
        options = given.get("options", "")
        defaults["options"] = (
            f"{options} -c synchronous_commit=on -c statement_timeout={self.STATEMENT_TIMEOUT_MS}".strip()
        )
        return {k: v for k, v in defaults.items() if k == "options" or k not in given}

    def _why_not(self) -> str:
        """Why the database cannot be connected to; "" when it can."""
        try:
            psycopg.connect(self.dsn, connect_timeout=self.CONNECT_SECONDS).close()
        except psycopg.Error as error:
            return first_line(error)
        return ""

    # --- schema versions ----------------------------------------------------------------

    def _migrate(self) -> int | None:
        """Create the schema or bring it to SCHEMA_VERSION, in one transaction under an advisory
        lock (of several replicas starting at once, one does it); refuse a newer one."""
        with self._pool.connection() as db, db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (schema.MIGRATION_LOCK,))
            version = schema.version_of(db)
            if version == schema.SCHEMA_VERSION:
                return None
            if version is None:
                if db.execute("SELECT to_regclass('settlements') IS NOT NULL").fetchone()[0]:
                    raise LedgerFileError(
                        f"{self.path} has a table settlements but no schema_version: not a settlesim ledger "
                        "(or one whose version row was deleted); use another database"
                    )
                db.execute(schema.SCHEMA)
                db.execute("INSERT INTO schema_version (version) VALUES (%s)", (schema.SCHEMA_VERSION,))
                log.info("ledger %s: created (schema version %d)", self.path, schema.SCHEMA_VERSION)
                return 0
            if version > schema.SCHEMA_VERSION:
                raise LedgerFileError(
                    f"{self.path}: ledger schema version {version} is newer than this settlesim knows "
                    f"({schema.SCHEMA_VERSION}); upgrade settlesim"
                )
            for step in range(version, schema.SCHEMA_VERSION):
                db.execute(schema.MIGRATIONS[step])
            db.execute("UPDATE schema_version SET version = %s, updated_at = now()", (schema.SCHEMA_VERSION,))
            log.info(
                "ledger %s: upgraded from schema version %d to %d", self.path, version, schema.SCHEMA_VERSION
            )
            return version

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._heartbeat.join()
        self._health.close()
        self._executor.shutdown(wait=True)
        self._pool.close()

    # --- transactions -------------------------------------------------------------------

    def _transaction(self, work: Callable[[Connection], T], *, write: bool = True) -> T:
        """Run `work(db)` in one transaction and commit it. A conflict with another
        transaction (serialization failure, deadlock, a msgid claimed meanwhile) runs it again
        on a new snapshot; a lost connection once on a fresh connection; any other storage
        failure leaves as its refusal (LEDGER_UNAVAILABLE, cause ...)."""
        self._refuse_if_damaged()
        lost_once = False
        began = time.perf_counter()
        for attempt in range(self.CONFLICT_ATTEMPTS):
            try:
                # While the database is known to be away (or this call just lost its connection),
                # a call is refused soon rather than hold its caller (a read runs on the server's
                # event loop) for the whole wait.
                away = lost_once or not self._health.healthy
                wait = self.AWAY_WAIT_SECONDS if away else self.WAIT_SECONDS
                with self._pool.connection(timeout=wait) as db:
                    db.read_only, db.isolation_level = not write, self._isolation(write)
                    with db.transaction():
                        result = work(db)
                        if write:
                            self._anchor_audit(db)
                if write:
                    self._health.committed()
                    if self.on_commit is not None:
                        self.on_commit(1, time.perf_counter() - began)
                return result
            except Refusal:
                raise
            except _CONFLICTS:
                self.conflicts += 1
                if attempt == self.CONFLICT_ATTEMPTS - 1:
                    raise self._storage_failed(
                        pg_errors.SerializationFailure("too many conflicting writes")
                    ) from None
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # let the winner commit
            except psycopg.OperationalError as error:
                # No SQLSTATE: libpq lost the connection; 57P0x: the server is going down.
                if lost_once or error.sqlstate not in (None, "57P01", "57P02"):
                    raise self._storage_failed(error, maybe_stored=write and lost_once) from error
                lost_once = True  # e.g. the server restarted since this pooled connection was made
                self._pool.check()  # drop every other dead connection at once
            except (PoolTimeout, psycopg.InterfaceError) as error:
                raise self._storage_failed(error, maybe_stored=write and lost_once) from error
            except psycopg.Error as error:  # anything else the database says: still a refusal
                raise self._storage_failed(error) from error
        raise AssertionError("unreachable")

    def _isolation(self, write: bool) -> psycopg.IsolationLevel:
        """Reads: one snapshot (REPEATABLE READ, which never fails a read-only transaction).
        Writes: READ COMMITTED under the totals' row lock, or SERIALIZABLE."""
        if not write:
            return psycopg.IsolationLevel.REPEATABLE_READ
        if self.totals_lock == "serializable":
            return psycopg.IsolationLevel.SERIALIZABLE
        return psycopg.IsolationLevel.READ_COMMITTED

    async def _async(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A call for the server's event loop: run on the store's threads (psycopg waits on the
        network with the GIL released), so the loop goes on serving meanwhile."""
        loop = asyncio.get_running_loop()
        self._in_flight += 1
        try:
            return await loop.run_in_executor(self._executor, functools.partial(call, *args, **kwargs))
        finally:
            self._in_flight -= 1

    def queue_depth(self) -> int:
        return self._in_flight

    # --- storage health -----------------------------------------------------------------

    def watch_health(self, listener: Callable[[bool], None]) -> None:
        self._health.listen(listener)

    def _storage_failed(self, error: BaseException, *, maybe_stored: bool = False) -> Refusal:
        refusal = storage_refusal(error, maybe_stored=maybe_stored)
        if refusal.reason is Reason.LEDGER_DAMAGED:
            log.error("ledger %s is damaged: %s", self.path, error)
        self._health.failed(refusal)
        return refusal

    def _refuse_if_damaged(self) -> None:
        if self._health.damage is not None:
            raise self._health.damage

    def _beat(self) -> None:
        """While healthy, ask the database something every HEARTBEAT_SECONDS: a failure makes
        the health NOT_SERVING (and starts the probe that brings it back)."""
        while not self._stopping.wait(self.HEARTBEAT_SECONDS):
            if not self._health.healthy:
                continue  # the probe is at work
            try:
                self._transaction(lambda db: db.execute("SELECT 1").fetchone(), write=False)
            except Refusal:  # the health has heard of it (_storage_failed)
                continue

    def _probe(self) -> None:
        """The smallest write transaction, on a connection of its own (the pool's may all be
        dead): it commits once the database takes writes again."""
        with psycopg.connect(
            make_conninfo(self.dsn, **self._connection_defaults(self.dsn)), autocommit=True
        ) as db:
            db.execute("UPDATE schema_version SET updated_at = now()")
        self._pool.check()

    # --- settle ---------------------------------------------------------------------------

    def settle(
        self,
        session: str,
        msgid: str,
        institution_code: str,
        request_hash: str,
        person_no: str,
        disease_code: str,
        year: int,
        compute: Compute,
        on_settled: OnSettled | None = None,
    ) -> tuple[StoredSettlement, bool]:
        """Commit a settlement once per msgid of the institution. Returns (settlement, replayed)."""

        def job(db: Connection) -> tuple[StoredSettlement, bool]:
            totals = self._lock_totals(db, session, person_no, disease_code, year)
            seen = self._message(db, session, institution_code, msgid)
            if seen is not None:  # read after the lock: a concurrent same msgid has committed by now
                kind, seen_hash, settlement_id = seen
                if kind == "blocked":
                    raise Refusal(
                        Reason.MSGID_VOIDED, f"msgid {msgid} was voided and cannot settle", msgid=msgid
                    )
                if kind == "settle" and seen_hash == request_hash:
                    return self._get(db, session, settlement_id), True
                raise Refusal(
                    Reason.MSGID_REUSED,
                    f"msgid {msgid} was already used for a different request",
                    msgid=msgid,
                )
            stored, after = compute(totals)
            if stored.session != session:
                stored = replace(stored, session=session)
            now = _now()
            self._insert(db, stored, year, now)
            db.execute(
                "INSERT INTO messages (session, msgid, kind, institution_code, request_hash, settlement_id, "
                "created_at) VALUES (%s, %s, 'settle', %s, %s, %s, %s)",
                (session, msgid, institution_code, request_hash, stored.settlement_id, now),
            )
            db.execute(
                "INSERT INTO yearly_totals VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT "
                "(session, person_no, disease_code, year) DO UPDATE SET deductible_used = excluded.deductible_used, "
                "fund_paid = excluded.fund_paid, serious_threshold_used = excluded.serious_threshold_used, "
                "serious_paid = excluded.serious_paid, assistance_paid = excluded.assistance_paid, "
                "account_paid = excluded.account_paid",
                (
                    session, person_no, disease_code, year, after.deductible_used, after.fund_paid,
                    after.serious_threshold_used, after.serious_paid, after.assistance_paid, after.account_paid,
                ),
            )  # fmt: skip
            if on_settled is not None:
                on_settled(national.PostgresNationalWrites(db, session, institution_code), stored)
            # Last: the institution's yearly row is every settle of that institution's, so its lock
            # is held only from here to COMMIT. A refusal here rolls all of it back.
            self._add_to_institution_year(db, stored, year, after)
            return stored, False

        return self._transaction(job)

    async def settle_async(self, *args: Any, **kwargs: Any) -> tuple[StoredSettlement, bool]:
        return await self._async(self.settle, *args, **kwargs)

    def _lock_totals(
        self, db: Connection, session: str, person: str, disease: str, year: int
    ) -> YearlyTotals:
        """This year's totals, with what the personal account paid that year for every disease
        (the balance is the person's). First the person-year's advisory lock: settles of one
        person and year, whatever the disease, run one after another, so two visits never spend
        the same account balance. Row lock: the upsert takes the totals row's lock (creating it
        at 0 the first time) and returns what is committed. Serializable: a plain read; the
        database refuses the loser's commit."""
        db.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{session}\x1f{person}\x1f{year}",)
        )
        counters = (
            "deductible_used, fund_paid, serious_threshold_used, serious_paid, assistance_paid, account_paid"
        )
        if self.totals_lock == "serializable":
            row = db.execute(
                f"SELECT {counters} FROM yearly_totals "
                "WHERE session = %s AND person_no = %s AND disease_code = %s AND year = %s",
                (session, person, disease, year),
            ).fetchone()
        else:
            row = db.execute(
                "INSERT INTO yearly_totals (session, person_no, disease_code, year, deductible_used, fund_paid) "
                "VALUES (%s, %s, %s, %s, 0, 0) ON CONFLICT (session, person_no, disease_code, year) "
                f"DO UPDATE SET deductible_used = yearly_totals.deductible_used RETURNING {counters}",
                (session, person, disease, year),
            ).fetchone()
        (paid_year,) = db.execute(
            "SELECT COALESCE(SUM(account_paid), 0) FROM yearly_totals WHERE session = %s AND person_no = %s "
            "AND year = %s",
            (session, person, year),
        ).fetchone()
        return (
            YearlyTotals(*row, account_paid_year=int(paid_year))
            if row
            else YearlyTotals(account_paid_year=int(paid_year))
        )

    def _add_to_institution_year(
        self, db: Connection, stored: StoredSettlement, year: int, after: YearlyTotals
    ) -> None:
        """Refuse a settlement past the person's or the institution's yearly limit
        (LEDGER_LIMIT_EXCEEDED); else add it to the institution's yearly total."""
        counters = (after.fund_paid, after.deductible_used, after.serious_threshold_used, after.serious_paid,
                    after.assistance_paid, after.account_paid)  # fmt: skip
        if max(counters) > self.MAX_PERSON_YEAR_FEN:
            raise Refusal(
                Reason.LEDGER_LIMIT_EXCEEDED,
                f"this settlement would take {stored.person_no}'s {year} fund for {stored.disease_code} "
                f"to {after.fund_paid} fen, over the platform's limit of {self.MAX_PERSON_YEAR_FEN} "
                "fen a person, disease and year; nothing was stored",
                limit="person_year_fund",
                person_no=stored.person_no,
            )
        (total,) = db.execute(
            "INSERT INTO institution_totals VALUES (%s, %s, %s, %s) ON CONFLICT (session, institution_code, year) "
            "DO UPDATE SET total = institution_totals.total + excluded.total RETURNING total",
            (stored.session, stored.institution_code, year, stored.total),
        ).fetchone()
        if total > self.MAX_INSTITUTION_YEAR_FEN:  # the transaction rolls back with the refusal
            raise Refusal(
                Reason.LEDGER_LIMIT_EXCEEDED,
                f"this settlement would take {stored.institution_code}'s settlements of {year} to "
                f"{total} fen, over the platform's limit of {self.MAX_INSTITUTION_YEAR_FEN} fen an "
                "institution and year; nothing was stored",
                limit="institution_year_total",
                institution_code=stored.institution_code,
            )

    @staticmethod
    def _insert(db: Connection, s: StoredSettlement, year: int, created_at: datetime) -> None:
        db.execute(
            f"INSERT INTO settlements ({SETTLEMENT_COLUMNS}) VALUES "
            f"({', '.join(['%s'] * 26)})",
            (
                s.settlement_id, s.session, s.msgid, s.institution_code, s.person_no, s.disease_code,
                s.visit_date, year, s.status, s.total, s.fund_pays, s.patient_pays, s.deductible_applied,
                s.undone_by_msgid, created_at, s.answer, s.full_self_pay, s.over_ceiling, s.pre_self_pay,
                s.in_scope, s.ratio_bp, s.pooled_pays, s.serious_threshold, s.serious_pays, s.assistance_pays,
                s.account_pays,
            ),
        )  # fmt: skip
        if s.items:
            with db.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO settlement_items ({ITEM_COLUMNS}) VALUES "
                    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [(s.settlement_id, *item) for item in s.items],
                )

    # --- sandboxes ----------------------------------------------------------------------------

    def session_group(self, session: str) -> frozenset[str] | None:
        row = self._transaction(
            lambda db: db.execute(
                "SELECT institutions FROM sessions WHERE session = %s", (session,)
            ).fetchone(),
            write=False,
        )
        return None if row is None else frozenset(row[0].split(","))

    def open_session(self, session: str, institutions: frozenset[str]) -> frozenset[str]:
        def job(db: Connection) -> str:
            db.execute(
                "INSERT INTO sessions VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (session, ",".join(sorted(institutions)), _now()),
            )
            (group,) = db.execute(
                "SELECT institutions FROM sessions WHERE session = %s", (session,)
            ).fetchone()
            return group

        return frozenset(self._transaction(job).split(","))

    async def open_session_async(self, session: str, institutions: frozenset[str]) -> frozenset[str]:
        return await self._async(self.open_session, session, institutions)

    def yearly_totals(self, session: str, person_no: str, disease_code: str, year: int) -> YearlyTotals:
        row = self._transaction(
            lambda db: db.execute(
                "SELECT deductible_used, fund_paid FROM yearly_totals "
                "WHERE session = %s AND person_no = %s AND disease_code = %s AND year = %s",
                (session, person_no, disease_code, year),
            ).fetchone(),
            write=False,
        )
        return YearlyTotals(*row) if row else YearlyTotals()

    # --- undo: reverse (2208) and void (2601) -------------------------------------------

    def reverse(
        self, session: str, msgid: str, institution_code: str, request_hash: str, settlement_id: str
    ) -> tuple[StoredSettlement, bool]:
        def job(db: Connection) -> tuple[StoredSettlement, bool]:
            replay = self._replay(db, session, msgid, "reverse", institution_code, request_hash)
            if replay is not None:
                return self._get(db, session, replay), True
            stored = self._get(db, session, settlement_id, lock=True)
            if stored.institution_code != institution_code:
                raise Refusal(
                    Reason.INSTITUTION_NOT_CALLER,
                    f"settlement {settlement_id} belongs to another institution",
                    settlement_id=settlement_id,
                )
            undone = self._undo(db, stored, "reversed", msgid)
            db.execute(
                "INSERT INTO messages VALUES (%s, %s, 'reverse', %s, %s, %s, %s)",
                (session, msgid, institution_code, request_hash, settlement_id, _now()),
            )
            return undone, False

        return self._transaction(job)

    async def reverse_async(self, *args: Any, **kwargs: Any) -> tuple[StoredSettlement, bool]:
        return await self._async(self.reverse, *args, **kwargs)

    def void(
        self, session: str, msgid: str, institution_code: str, request_hash: str, original_msgid: str
    ) -> VoidOutcome:
        def job(db: Connection) -> VoidOutcome:
            replay = self._replay(db, session, msgid, "void", institution_code, request_hash)
            if replay is not None:
                return VoidOutcome(self._get(db, session, replay) if replay != "-" else None, True)
            # Claim the original msgid first: a settle of it racing this void waits on the key.
            blocked = db.execute(
                "INSERT INTO messages VALUES (%s, %s, 'blocked', %s, '', '', %s) ON CONFLICT DO NOTHING "
                "RETURNING msgid",
                (session, original_msgid, institution_code, _now()),
            ).fetchone()
            voided: StoredSettlement | None = None
            if blocked is None:
                kind, _hash, settlement_id = self._message(db, session, institution_code, original_msgid)
                if kind == "settle":
                    voided = self._undo(db, self._get(db, session, settlement_id, lock=True), "voided", msgid)
                elif kind != "blocked":
                    raise Refusal(
                        Reason.FIELD_INVALID,
                        f"msgid {original_msgid} is a {kind}; only settlements can be voided",
                        field="original_msgid",
                    )
            db.execute(
                "INSERT INTO messages VALUES (%s, %s, 'void', %s, %s, %s, %s)",
                (
                    session,
                    msgid,
                    institution_code,
                    request_hash,
                    voided.settlement_id if voided else "-",
                    _now(),
                ),
            )
            return VoidOutcome(voided, False)

        return self._transaction(job)

    async def void_async(self, *args: Any, **kwargs: Any) -> VoidOutcome:
        return await self._async(self.void, *args, **kwargs)

    def _undo(self, db: Connection, stored: StoredSettlement, status: str, by: str) -> StoredSettlement:
        if stored.status != "settled":
            reason = Reason.ALREADY_REVERSED if stored.status == "reversed" else Reason.ALREADY_VOIDED
            raise Refusal(
                reason,
                f"settlement {stored.settlement_id} is already {stored.status}",
                settlement_id=stored.settlement_id,
            )
        # The row is locked (_get(lock=True)) and still settled: this undo is the only one.
        db.execute(
            "UPDATE settlements SET status = %s, undone_by_msgid = %s WHERE settlement_id = %s AND status = 'settled'",
            (status, by, stored.settlement_id),
        )
        year = stored.visit_date.year
        db.execute(
            "UPDATE yearly_totals SET deductible_used = deductible_used - %s, fund_paid = fund_paid - %s, "
            "serious_threshold_used = serious_threshold_used - %s, serious_paid = serious_paid - %s, "
            "assistance_paid = assistance_paid - %s, account_paid = account_paid - %s "
            "WHERE session = %s AND person_no = %s AND disease_code = %s AND year = %s",
            (
                stored.deductible_applied, stored.pooled, stored.serious_threshold or 0, stored.serious_pays or 0,
                stored.assistance_pays or 0, stored.account_pays or 0, stored.session, stored.person_no,
                stored.disease_code, year,
            ),
        )  # fmt: skip
        db.execute(
            "UPDATE institution_totals SET total = total - %s WHERE session = %s AND institution_code = %s "
            "AND year = %s",
            (stored.total, stored.session, stored.institution_code, year),
        )
        return replace(stored, status=status, undone_by_msgid=by)

    # --- the national visit flow (server/national/visits.py) ---------------------------

    def national_once(
        self, session: str, institution: str, msgid: str, infno: str, request_hash: str,
        work: Callable[[NationalWrites], dict[str, Any]],
    ) -> dict[str, Any]:  # fmt: skip
        return self._transaction(national.once_job(session, institution, msgid, infno, request_hash, work))

    def national_visit(self, session: str, institution: str, mdtrt_id: str) -> Visit:
        return self._transaction(lambda db: national.visit(db, session, institution, mdtrt_id), write=False)

    def national_fee_lines(self, session: str, institution: str, mdtrt_id: str) -> list[FeeLine]:
        return self._transaction(
            lambda db: national.fee_lines(db, session, institution, mdtrt_id), write=False
        )

    # --- reads --------------------------------------------------------------------------

    def get(
        self, session: str, institution_code: str, settlement_id: str = "", msgid: str = ""
    ) -> StoredSettlement:
        def read(db: Connection) -> StoredSettlement:
            sid = settlement_id
            if not sid:
                row = db.execute(
                    "SELECT settlement_id FROM settlements WHERE session = %s AND institution_code = %s AND msgid = %s",
                    (session, institution_code, msgid),
                ).fetchone()
                if row is None:
                    raise Refusal(
                        Reason.SETTLEMENT_NOT_FOUND, f"no settlement for msgid {msgid}", msgid=msgid
                    )
                sid = row[0]
            stored = self._get(db, session, sid)
            if stored.institution_code != institution_code:
                raise Refusal(
                    Reason.INSTITUTION_NOT_CALLER,
                    f"settlement {sid} belongs to another institution",
                    settlement_id=sid,
                )
            return stored

        return self._transaction(read, write=False)

    def find_message(self, session: str, institution_code: str, msgid: str) -> tuple[str, str, str] | None:
        return self._transaction(lambda db: self._message(db, session, institution_code, msgid), write=False)

    def reconcile(
        self, session: str, institution_code: str, start: date, end: date, with_entries: bool
    ) -> ReconcileSums:
        """对账: settlements in force (not reversed or voided) by visit date."""

        def read(db: Connection) -> ReconcileSums:
            where = (
                "FROM settlements WHERE session = %s AND institution_code = %s AND status = 'settled' "
                "AND visit_date BETWEEN %s AND %s"
            )
            args = (session, institution_code, start, end)
            count, total, fund, patient = db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(total), 0), COALESCE(SUM(fund_pays), 0), "
                f"COALESCE(SUM(patient_pays), 0) {where}",
                args,
            ).fetchone()
            if with_entries and count > self.MAX_RECONCILE_ENTRIES:
                raise Refusal(
                    Reason.TOO_MANY_ENTRIES,
                    f"{count} settlements from {start} to {end}; entries are listed for at most "
                    f"{self.MAX_RECONCILE_ENTRIES}: ask for the sums alone or a shorter period",
                    count=str(count),
                )
            entries: tuple[StoredSettlement, ...] = ()
            if with_entries:
                rows = db.execute(
                    f"SELECT {SETTLEMENT_COLUMNS} {where} ORDER BY visit_date, created_at, seq", args
                ).fetchall()
                entries = tuple(settlement_of(r) for r in rows)
            return ReconcileSums(count, int(total), int(fund), int(patient), entries)

        return self._transaction(read, write=False)

    def session_settlements(self, session: str) -> list[StoredSettlement]:
        rows = self._transaction(
            lambda db: db.execute(
                f"SELECT {SETTLEMENT_COLUMNS} FROM settlements WHERE session = %s ORDER BY created_at, seq",
                (session,),
            ).fetchall(),
            write=False,
        )
        return [settlement_of(r) for r in rows]

    def settlement_by_id(self, settlement_id: str) -> StoredSettlement | None:
        """Any session's settlement by id (the console's settlement page)."""
        row = self._transaction(
            lambda db: db.execute(
                f"SELECT {SETTLEMENT_COLUMNS} FROM settlements WHERE settlement_id = %s", (settlement_id,)
            ).fetchone(),
            write=False,
        )
        return None if row is None else settlement_of(row)

    def person_totals(self, session: str, person_no: str) -> list[tuple[str, int, int, int]]:
        """(disease, year, deductible used, fund paid) of a person, newest year first."""
        rows = self._transaction(
            lambda db: db.execute(
                "SELECT disease_code, year, deductible_used, fund_paid FROM yearly_totals "
                "WHERE session = %s AND person_no = %s ORDER BY year DESC, disease_code",
                (session, person_no),
            ).fetchall(),
            write=False,
        )
        return [tuple(row) for row in rows]

    def check(self, answer_check: AnswerCheck | None = None) -> list[str]:
        """Problems with the ledger's invariants (check.py); empty when it is sound."""
        return self._transaction(lambda db: check.problems_of(db, answer_check), write=False)

    def counts(self) -> dict[str, int]:
        rows = self._transaction(
            lambda db: db.execute("SELECT status, COUNT(*) FROM settlements GROUP BY status").fetchall(),
            write=False,
        )
        return dict(rows)

    # --- the audit log's anchor -------------------------------------------------------------

    def _anchor_audit(self, db: Connection) -> None:
        """Commit the audit log's head with this transaction (docs/security.md)."""
        if self.audit_head is not None:
            path, head = self.audit_head()
            db.execute(
                "INSERT INTO audit_anchors VALUES (%s, %s, %s, %s, %s) ON CONFLICT (audit_path) DO UPDATE SET "
                "records = excluded.records, size = excluded.size, head = excluded.head, "
                "updated_at = excluded.updated_at WHERE audit_anchors.records <= excluded.records",
                (path, head.records, head.size, head.digest, _now()),
            )

    def anchor_audit(self) -> None:
        self._transaction(lambda db: None)

    def audit_anchor(self, audit_path: str) -> AuditAnchor | None:
        row = self._transaction(
            lambda db: db.execute(
                "SELECT records, size, head FROM audit_anchors WHERE audit_path = %s", (audit_path,)
            ).fetchone(),
            write=False,
        )
        return None if row is None else AuditAnchor(*row)

    def audit_anchors(self) -> dict[str, AuditAnchor]:
        rows = self._transaction(
            lambda db: db.execute("SELECT audit_path, records, size, head FROM audit_anchors").fetchall(),
            write=False,
        )
        return {path: AuditAnchor(*rest) for path, *rest in rows}

    def retire_audit_anchor(self, audit_path: str) -> None:
        self._transaction(
            lambda db: db.execute(
                "UPDATE audit_anchors SET audit_path = audit_path || ' retired ' || %s WHERE audit_path = %s",
                (_now().isoformat(timespec="microseconds"), audit_path),
            )
        )

    # --- internals ----------------------------------------------------------------------

    @staticmethod
    def _message(db: Connection, session: str, institution: str, msgid: str) -> tuple[str, str, str] | None:
        return db.execute(
            "SELECT kind, request_hash, settlement_id FROM messages "
            "WHERE session = %s AND institution_code = %s AND msgid = %s",
            (session, institution, msgid),
        ).fetchone()

    def _replay(
        self, db: Connection, session: str, msgid: str, kind: str, institution: str, request_hash: str
    ) -> str | None:
        """The settlement id a repeated identical call answered, or None if new."""
        seen = self._message(db, session, institution, msgid)
        if seen is None:
            return None
        if seen[0] == kind and seen[1] == request_hash:
            return seen[2]
        raise Refusal(
            Reason.MSGID_REUSED, f"msgid {msgid} was already used for a different request", msgid=msgid
        )

    @staticmethod
    def _get(db: Connection, session: str, settlement_id: str, *, lock: bool = False) -> StoredSettlement:
        row = db.execute(
            f"SELECT {SETTLEMENT_COLUMNS} FROM settlements WHERE session = %s AND settlement_id = %s"
            + (" FOR UPDATE" if lock else ""),
            (session, settlement_id),
        ).fetchone()
        if row is None:
            raise Refusal(
                Reason.SETTLEMENT_NOT_FOUND, f"no settlement {settlement_id}", settlement_id=settlement_id
            )
        return settlement_of(row)


__all__ = ["PostgresLedger", "redacted"]
