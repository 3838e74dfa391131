#!/usr/bin/env python3
"""Time the web console's pages on a large world and a large journal.

    settlesim world generate --persons 1000000 --seed 1 /tmp/w1m
    python scripts/console_scale.py /tmp/w1m --journal-calls 1000000

Writes a journal of N calls (SettleVisit requests of the world's visits.csv,
stored as the journal stores them) beside a fresh ledger, starts the reference
server on the world with its console, settles some visits through gRPC, then
fetches each kind of page several times and prints the median and worst time.
It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import httpx
from settlesim.clients.hospital import Fee, Hospital
from settlesim.server.app import ServerConfig, start
from settlesim.server.journal import Journal, journal_path
from settlesim.v1 import settlement_service_pb2 as pb


def visits(world: Path, n: int) -> list[dict[str, str]]:
    with (world / "visits.csv").open(newline="") as f:
        rows = []
        for row in csv.DictReader(f):
            rows.append(row)
            if len(rows) == n:
                break
    return rows


def fill_journal(path: Path, calls: int, sample: list[dict[str, str]]) -> None:
    journal = Journal(path)
    when = datetime.now(UTC).isoformat(timespec="microseconds")
    rows = []
    for i in range(calls):
        v = sample[i % len(sample)]
        request = pb.SettleVisitRequest(
            request=pb.SettlementRequest(
                msgid=f"{v['institution_code']}20250301000000{i % 10000:04d}",
                visit=pb.Visit(
                    institution_code=v["institution_code"], person=pb.PersonRef(person_no=v["psn_no"]),
                    disease_code=v["disease_code"], visit_date="2025-03-01",
                ),
                items=[pb.FeeItem(sequence_no="0001", catalog_code="A-CONSULT-001", unit_price_fen=5000, quantity=1,
                                  amount_fen=5000)],
            )
        )  # fmt: skip
        refused = i % 97 == 0
        rows.append((
            when, "grpc", "SettleVisit", "", v["institution_code"], "", "", "his",
            request.request.msgid, "", "FAILED_PRECONDITION" if refused else "OK",
            "REGISTRATION_NOT_FOUND" if refused else "", "", 1.0, 0, request.SerializeToString(), None,
        ))  # fmt: skip
        if len(rows) == 50_000:
            journal._store(rows)
            rows = []
    if rows:
        journal._store(rows)
    journal.close()


def timed(client: httpx.Client, url: str, repeat: int) -> tuple[float, float, int]:
    times, status = [], 0
    for _ in range(repeat):
        began = time.perf_counter()
        status = client.get(url).status_code
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), max(times), status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("world", type=Path, help="a world made by `settlesim world generate`")
    parser.add_argument("--journal-calls", type=int, default=1_000_000)
    parser.add_argument("--settles", type=int, default=200, help="visits settled through gRPC first")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="console-scale-"))
    db = folder / "ledger.db"
    sample = visits(args.world, max(args.settles, 1000))
    began = time.perf_counter()
    fill_journal(journal_path(db), args.journal_calls, sample)
    print(f"journal of {args.journal_calls:,} calls written in {time.perf_counter() - began:.1f} s")
    began = time.perf_counter()
    running = start(ServerConfig(port=0, db_path=db, world_dir=args.world, console_port=0))
    print(f"server with {len(running.world.people):,} people started in {time.perf_counter() - began:.1f} s")
    try:
        settled = []
        refusals: dict[str, int] = {}
        for v in sample[: args.settles]:
            his = Hospital.connect(running.target, v["institution_code"])
            try:
                answer = his.settle(v["psn_no"], v["disease_code"], "2025-03-01", [Fee("A-CONSULT-001", 5000)])
                settled.append(answer.settlement)
            except grpc.RpcError as refused:  # a sampled visit may be refused (capped, say): counted
                refusals[refused.code().name] = refusals.get(refused.code().name, 0) + 1
            finally:
                his.close()
        running.journal.flush()
        person = settled[0].person_no if settled else sample[0]["psn_no"]
        institution = sample[0]["institution_code"]
        middle = args.journal_calls // 2
        pages = {
            "journal, newest": "/journal",
            "journal rows (the 1 s poll)": "/journal/rows",
            "journal, an institution": f"/journal?institution={institution}",
            "journal, an RPC": "/journal?rpc=SettleVisit",
            "journal, refused": "/journal?outcome=refused",
            "journal, a rare RPC": "/journal?rpc=Reconcile",
            "journal, a msgid": f"/journal?msgid={sample[0]['institution_code']}20250301000000{0:04d}",
            "journal, page in the middle": f"/journal?before={middle}",
            "a call": f"/journal/{middle}",
            "a settlement": f"/settlements/{settled[0].settlement_id}" if settled else "/journal",
            "a person": f"/people/{person}",
            "people": "/people",
            "world": "/world",
            "a catalog": f"/world/catalogs/{next(iter(running.world.catalogs))}",
            "metrics": "/metrics",
        }
        print(f"{len(settled)} of {args.settles} visits settled, refused by status: {refusals or 'none'}")
        print(f"pages (ms, median / worst of {args.repeat}):")
        with httpx.Client(base_url=running.console.url, timeout=60) as client:
            for name, url in pages.items():
                median, worst, status = timed(client, url, args.repeat)
                print(f"  {name:32s} {median:8.1f} {worst:8.1f}  HTTP {status}  {url}")
    finally:
        running.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
