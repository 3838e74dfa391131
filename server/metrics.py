"""Prometheus metrics of a running platform (`/metrics` on the console's port,
docs/console.md), with the official prometheus-client.

Nothing here runs on the settle path. Calls are counted by the journal's
writer thread from the entries it stores (`record_calls`): it has already
worked out each call's status and ErrorInfo reason, so counting them again
in a request thread would only cost the settle. The ledger's writer reports
each group commit (`record_commit`); queue depths and the journal's lag are
read when Prometheus scrapes (gauge callbacks).

Each server has its own CollectorRegistry: two servers in one process (tests)
never add up each other's counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """The platform's metrics and the plain functions that record them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.calls = Counter(
            "settlesim_calls", "SettlementService calls by RPC and outcome (gRPC status name)",
            ("rpc", "code"), registry=r,
        )  # fmt: skip
        self.refusals = Counter(
            "settlesim_refusals", "Refused calls by RPC and ErrorInfo reason", ("rpc", "reason"), registry=r
        )
        self.latency = Histogram(
            "settlesim_call_latency_seconds", "Server-side latency of a call, by RPC", ("rpc",),
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.settlements = Counter(
            "settlesim_settlements",
            "Settlements committed (SettleVisit answered OK, not a replay)",
            registry=r,
        )
        self.fund_paid = Counter(
            "settlesim_fund_paid_fen",
            "Fund payments of the settlements committed, fen (统筹基金支付)",
            registry=r,
        )
        self.commit_batch = Histogram(
            "settlesim_ledger_commit_batch_size", "Writes per ledger group commit",
            buckets=_BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.commit_latency = Histogram(
            "settlesim_ledger_commit_seconds", "Time of one ledger group commit (BEGIN to COMMIT, fsync included)",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ledger_queue = Gauge(
            "settlesim_ledger_queue_depth", "Writes waiting for the ledger writer", registry=r
        )
        self.journal_queue = Gauge(
            "settlesim_journal_queue_depth", "Calls noted but not yet stored in the journal", registry=r
        )
        self.journal_lag = Gauge(
            "settlesim_journal_lag_seconds",
            "Age of the oldest call in the last journal batch when it was stored",
            registry=r,
        )
        self._latency_of: dict[str, Any] = {}  # the latency histogram's child of each RPC

    # --- gauges read at scrape time -----------------------------------------------------------

    def watch_queues(self, ledger_depth: Callable[[], int], journal_depth: Callable[[], int] | None) -> None:
        self.ledger_queue.set_function(ledger_depth)
        if journal_depth is not None:
            self.journal_queue.set_function(journal_depth)

    # --- recorders (writer threads) -----------------------------------------------------------

    def record_commit(self, batch_size: int, seconds: float) -> None:
        """The ledger writer committed a group of `batch_size` writes."""
        self.commit_batch.observe(batch_size)
        self.commit_latency.observe(seconds)

    def record_calls(self, calls: Sequence[tuple[str, str, str, float, Any]], lag_seconds: float) -> None:
        """Stored journal entries: (rpc, code, reason, latency ms, answer message or None).
        Counted per batch: each counter is increased once by its batch's count (a labelled
        child is looked up under a lock, which per call was most of the cost)."""
        counted: dict[tuple[str, str], int] = {}
        refused: dict[tuple[str, str], int] = {}
        settled = fund_paid = 0
        latency = self._latency_of
        for rpc, code, reason, latency_ms, answer in calls:
            counted[rpc, code] = counted.get((rpc, code), 0) + 1
            if reason:
                refused[rpc, reason] = refused.get((rpc, reason), 0) + 1
            child = latency.get(rpc)
            if child is None:
                child = latency[rpc] = self.latency.labels(rpc)
            child.observe(latency_ms / 1000)
            if rpc == "SettleVisit" and code == "OK" and answer is not None and not answer.replayed:
                settled += 1
                fund_paid += answer.settlement.totals.fund_pays_fen
        for labels, n in counted.items():
            self.calls.labels(*labels).inc(n)
        for labels, n in refused.items():
            self.refusals.labels(*labels).inc(n)
        if settled:
            self.settlements.inc(settled)
            self.fund_paid.inc(fund_paid)
        self.journal_lag.set(lag_seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
