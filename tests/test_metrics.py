"""The metrics' own histograms (server/metrics.py _CountedHistogram: counted a batch at a
time, without prometheus_client's lock and bucket walk per value) expose what
prometheus_client's Histogram exposes for the same values."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from settlesim.server.metrics import _LATENCY_BUCKETS, Metrics, _CountedHistogram

# On a bound (0.005, 10.0: "le" counts values <= the bound), between bounds, past the last, 0.
VALUES = [0.005, 0.0049, 0.0051, 0.2, 10.0, 12.0, 0.0, 0.0005]


def _series(registry: CollectorRegistry, name: str) -> list[str]:
    return sorted(
        line
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith(name) and "_created" not in line
    )


def test_a_counted_histogram_shows_what_prometheus_clients_histogram_shows():
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("lat_seconds", "latency", ("rpc",), buckets=_LATENCY_BUCKETS, registry=theirs)
    counted = _CountedHistogram("lat_seconds", "latency", _LATENCY_BUCKETS, "rpc")
    ours.register(counted)
    for n, value in enumerate(VALUES):
        rpc = "SettleVisit" if n % 3 else "GetSettlement"
        reference.labels(rpc).observe(value)
        counted.observe(value, rpc)
    assert _series(ours, "lat_seconds") == _series(theirs, "lat_seconds")
    assert any('le="0.005",rpc="SettleVisit"} 2.0' in line for line in _series(ours, "lat_seconds"))


def test_a_counted_histogram_that_put_a_value_on_a_bound_in_the_next_bucket_would_differ():
    """The comparison above can fail: a histogram counting `le` as `<` is told apart."""

    class Exclusive(_CountedHistogram):
        def record(self, values):  # type: ignore[no-untyped-def]
            super().record((label, value + 1e-9) for label, value in values)

    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("lat_seconds", "latency", ("rpc",), buckets=_LATENCY_BUCKETS, registry=theirs)
    wrong = Exclusive("lat_seconds", "latency", _LATENCY_BUCKETS, "rpc")
    ours.register(wrong)
    reference.labels("SettleVisit").observe(0.005)
    wrong.observe(0.005, "SettleVisit")
    assert _series(ours, "lat_seconds_bucket") != _series(theirs, "lat_seconds_bucket")


def test_an_unlabelled_counted_histogram_shows_its_empty_buckets_before_the_first_value():
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    Histogram("batch", "writes", buckets=(1, 2, 4), registry=theirs)
    ours.register(_CountedHistogram("batch", "writes", (1, 2, 4)))
    assert _series(ours, "batch") == _series(theirs, "batch")


def test_a_journal_batch_is_counted_by_rpc_code_reason_and_latency():
    metrics = Metrics()
    row = ["t", "grpc", "SettleVisit", "", "H1", "", "", "his", "m1", "", "OK", "", "", 12.5, 0, b"", b""]
    refused = [*row[:10], "FAILED_PRECONDITION", "DISEASE_NOT_OPENED", "", 0.4, 0, b"", None]
    replayed = list(row)
    metrics.record_calls([row, refused, replayed], [12963, None, None], 0.05)
    text = metrics.exposition().decode()
    assert 'settlesim_calls_total{code="OK",rpc="SettleVisit"} 2.0' in text
    assert 'settlesim_calls_total{code="FAILED_PRECONDITION",rpc="SettleVisit"} 1.0' in text
    assert 'settlesim_refusals_total{reason="DISEASE_NOT_OPENED",rpc="SettleVisit"} 1.0' in text
    assert "settlesim_settlements_total 1.0" in text and "settlesim_fund_paid_fen_total 12963.0" in text
    assert 'settlesim_call_latency_seconds_bucket{le="0.0005",rpc="SettleVisit"} 1.0' in text  # 0.4 ms
    assert 'settlesim_call_latency_seconds_count{rpc="SettleVisit"} 3.0' in text
