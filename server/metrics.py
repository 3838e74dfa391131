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

import collections
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


# Where server/journal.py's rows (its COLUMNS[1:]) hold what the call metrics count.
_RPC, _CODE, _REASON, _LATENCY_MS = 2, 10, 11, 13


class _CountedHistogram(Collector):
    """A histogram counted without prometheus_client's per-observation cost (a lock and
    a walk over its buckets per value: most of the journal's counting): values go
    into plain bucket counts, a batch at a time, and a scrape gets the same histogram
    (a custom collector, the library's way to export what is counted elsewhere)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], label: str = "") -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.bounds = list(buckets)
        self._counts: dict[str, list[int]] = {}  # per label value: one count per bucket, then +Inf
        self._sums: dict[str, float] = {}
        if not label:  # one series from the start, its buckets at 0, as prometheus_client shows it
            self._counts[""], self._sums[""] = [0] * (len(self.bounds) + 1), 0.0
        self._lock = threading.Lock()

    def observe(self, value: float, label: str = "") -> None:
        self.record(((label, value),))

    def record(self, values: Iterable[tuple[str, float]]) -> None:
        """(label value, value) of each observation of a batch."""
        with self._lock:
            counts, sums, bounds = self._counts, self._sums, self.bounds
            for label, value in values:
                of_label = counts.get(label)
                if of_label is None:
                    of_label = counts[label] = [0] * (len(bounds) + 1)
                    sums[label] = 0.0
                of_label[bisect_left(bounds, value)] += 1  # the first bucket whose bound is >= it
                sums[label] += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=(self.label,) if self.label else ())
        with self._lock:
            snapshot = [(label, list(counts), self._sums[label]) for label, counts in self._counts.items()]
        for label, counts, total in snapshot:
            cumulative = list(accumulate(counts))
            buckets = [(floatToGoString(b), n) for b, n in zip(self.bounds, cumulative, strict=False)]
            family.add_metric((label,) if self.label else (), [*buckets, ("+Inf", cumulative[-1])], total)
        yield family


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
        self.latency = _CountedHistogram(
            "settlesim_call_latency_seconds", "Server-side latency of a call, by RPC", _LATENCY_BUCKETS, "rpc"
        )
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
        # The group commit reports on the loop: observed without prometheus_client's lock and walk.
        self.commit_batch = _CountedHistogram(
            "settlesim_ledger_commit_batch_size", "Writes per ledger group commit", _BATCH_BUCKETS
        )
        self.commit_latency = _CountedHistogram(
            "settlesim_ledger_commit_seconds", "Time of one ledger group commit (BEGIN to COMMIT, fsync included)",
            _LATENCY_BUCKETS,
        )  # fmt: skip
        for histogram in (self.latency, self.commit_batch, self.commit_latency):
            r.register(histogram)
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

    def record_calls(self, rows: Sequence[Sequence[Any]], funds: Sequence[int | None], lag_seconds: float) -> None:
        """A stored journal batch: its rows (server/journal.py COLUMNS[1:]: rpc, code, reason
        and latency ms at 2, 10, 11, 13) and, per row, the fund a new
        settlement paid (None for any other call). Counted per batch: each counter is
        increased once by its batch's count (a labelled child is looked up under a lock)."""
        counted = collections.Counter((row[_RPC], row[_CODE]) for row in rows)
        refused = collections.Counter((row[_RPC], row[_REASON]) for row in rows if row[_REASON])
        self.latency.record((row[_RPC], row[_LATENCY_MS] / 1000) for row in rows)
        for labels, n in counted.items():
            self.calls.labels(*labels).inc(n)
        for labels, n in refused.items():
            self.refusals.labels(*labels).inc(n)
        paid = [fund for fund in funds if fund is not None]
        if paid:
            self.settlements.inc(len(paid))
            self.fund_paid.inc(sum(paid))
        self.journal_lag.set(lag_seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
