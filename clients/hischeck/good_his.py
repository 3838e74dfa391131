"""A good HIS, for `settlesim his-check run --exec`: the bundled mock hospital
(clients/hospital.py with clients/resilience.py) carrying out a run's tasks the
way a careful HIS does. Read it as the example of what the checks expect:

- every message its own national-format msgid; a retry resends the same bytes;
- a pre-settle (2206) where asked, then a settle (2207) of exactly that request;
- a lost answer retried with the same msgid, then voided (2601) by that msgid;
- a refusal with a reason shown, never retried;
- the settle's figures compared with the pre-settle's: more than 0.1 yuan off,
  and the settlement is voided;
- a book of the settlements in force, reconciled (3201); on a mismatch the
  entries (3202) are fetched, the book corrected, and the period reconciled again.

    python -m settlesim.clients.hischeck.good_his TARGET INSTITUTION RUN TASKS_FILE [--token T]

TASKS_FILE is the JSON `his-check start --tasks-out` writes (`{tasks}` in --exec).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import grpc
from settlesim.clients.hospital import Fee, Hospital, SettlementUncertain
from settlesim.clients.rejections import rejection_of
from settlesim.clients.resilience import BookEntry, HospitalBook, void_reliably
from settlesim.v1 import settlement_service_pb2 as pb

TOLERANCE_FEN = 10  # 0.1 yuan


class GoodHis:
    """Carries out the tasks; each step is a method a faulty driver (tests/his_drivers/) overrides."""

    def __init__(self, his: Hospital, tasks: list[dict[str, Any]]) -> None:
        self.his, self.tasks = his, tasks
        self.book = HospitalBook()
        self.settled: dict[str, pb.Settlement] = {}
        self.log: list[str] = []

    def run(self) -> int:
        for task in self.tasks:
            getattr(self, f"do_{task['do']}")(task)
        for line in self.log:
            print(line)
        return 0

    # --- building requests ----------------------------------------------------------------------

    def fees(self, task: dict[str, Any]) -> list[Fee]:
        return [Fee(f["code"], f["price"], f["quantity"], name=f.get("name", "")) for f in task["fees"]]

    def request(self, task: dict[str, Any]) -> pb.SettlementRequest:
        return self.his.settlement_request(task["person"], task["disease"], task["date"], self.fees(task))

    def settle_request_after(self, pre_request: pb.SettlementRequest) -> pb.SettlementRequest:
        """The settle sends what was pre-settled, under its own msgid."""
        request = pb.SettlementRequest()
        request.CopyFrom(pre_request)
        request.msgid = self.his.next_msgid()
        return request

    # --- the tasks ------------------------------------------------------------------------------

    def do_settle(self, task: dict[str, Any]) -> None:
        pre = None
        request = self.request(task)
        if task.get("pre_settle"):
            pre = self.pre_settle(request)
            if pre is None:
                return
            request = self.settle_request_after(request)
        answer = self.settle(task, request)
        if answer is None:
            return
        if pre is not None and self.figures_differ(pre, answer.settlement):
            self.log.append(f"[{task['id']}] settle differs from pre-settle by more than 0.1 yuan: voiding")
            self.void(request.msgid)
            return
        self.settled[task["id"]] = answer.settlement
        self.book.add(BookEntry.of(answer.settlement))
        self.log.append(
            f"[{task['id']}] settled {answer.settlement.settlement_id} "
            f"fund {answer.settlement.totals.fund_pays_fen} fen"
        )

    def pre_settle(self, request: pb.SettlementRequest) -> pb.Settlement | None:
        try:
            return self.his.call("PreSettleVisit", pb.PreSettleVisitRequest(request=request)).settlement  # type: ignore[attr-defined]
        except grpc.RpcError as error:
            self.on_refusal(error)
            return None

    def settle(self, task: dict[str, Any], request: pb.SettlementRequest) -> pb.SettleVisitResponse | None:
        try:
            return self.his.settle_request(request)
        except SettlementUncertain:
            self.on_lost_answer(task, request)
            return None
        except grpc.RpcError as error:
            self.on_refusal(error)
            return None

    def on_lost_answer(self, task: dict[str, Any], request: pb.SettlementRequest) -> None:
        """Retries (same msgid) ran out: void by that msgid, so the visit is certainly not settled."""
        self.log.append(f"[{task['id']}] no answer for {request.msgid}: voiding it")
        self.void(request.msgid)

    def on_refusal(self, error: grpc.RpcError) -> None:
        rejection = rejection_of(error)
        self.log.append(
            f"refused {error.code().name} {rejection.reason}: {error.details()}"
        )  # shown, not retried

    def void(self, msgid: str) -> None:
        voided = void_reliably(self.his, msgid)
        if voided.voided_settlement:
            self.book.remove(voided.settlement.settlement_id)

    @staticmethod
    def figures_differ(pre: pb.Settlement, settled: pb.Settlement) -> bool:
        a, b = pre.totals, settled.totals
        return any(
            abs(getattr(a, name) - getattr(b, name)) > TOLERANCE_FEN
            for name in ("total_fen", "fund_pays_fen", "patient_pays_fen")
        )

    def do_reverse(self, task: dict[str, Any]) -> None:
        settlement = self.settled.get(task["settlement_of"])
        if settlement is None:
            self.log.append(f"[{task['id']}] nothing to reverse: [{task['settlement_of']}] is not settled")
            return
        self.his.reverse(settlement.settlement_id)
        self.book.remove(settlement.settlement_id)

    def do_reconcile(self, task: dict[str, Any]) -> None:
        start, end = task["start"], task["end"]
        answer = self.his.reconcile(start, end, self.book.figures(start, end))
        if answer.matched:
            self.log.append(f"[{task['id']}] reconciled {start}..{end}: matched")
            return
        self.on_mismatch(task, answer)

    def on_mismatch(self, task: dict[str, Any], answer: pb.ReconcileResponse) -> None:
        """Fetch the entries, make the book the platform's (a settlement the HIS lost track of
        is recorded; one it holds that the platform does not is dropped), reconcile again."""
        start, end = task["start"], task["end"]
        detail = self.his.reconcile(start, end, self.book.figures(start, end), include_entries=True)
        platform = {e.settlement_id: BookEntry.of_reconcile(e) for e in detail.entries}
        for entry in self.book.entries(start, end):
            if entry.settlement_id not in platform:
                self.book.remove(entry.settlement_id)
        for entry in platform.values():
            self.book.add(entry)
        again = self.his.reconcile(start, end, self.book.figures(start, end))
        self.log.append(
            f"[{task['id']}] reconciled {start}..{end} after the entries: matched={again.matched}"
        )


def connect(args: argparse.Namespace, deadline: float) -> Hospital:
    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else ()
    if args.ca:
        creds = grpc.ssl_channel_credentials(
            Path(args.ca).read_bytes(),
            Path(args.key).read_bytes() if args.key else None,
            Path(args.cert).read_bytes() if args.cert else None,
        )
        channel = grpc.secure_channel(args.target, creds)
        return Hospital(channel, args.institution, deadline=deadline, metadata=metadata, tls=True)
    return Hospital(
        grpc.insecure_channel(args.target), args.institution, deadline=deadline, metadata=metadata
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("target")
    p.add_argument("institution")
    p.add_argument("run")
    p.add_argument("tasks", type=Path)
    p.add_argument("--token", help="bearer token (serve --auth token)")
    p.add_argument("--ca", help="the platform's CA (TLS)")
    p.add_argument("--cert", help="client certificate (mutual TLS)")
    p.add_argument("--key", help="its private key")
    return p


def main(argv: list[str] | None = None, driver: type[GoodHis] = GoodHis) -> int:
    args = parser().parse_args(argv)
    plan = json.loads(args.tasks.read_text(encoding="utf-8"))
    his = connect(args, plan.get("deadline_ms", 10_000) / 1000)
    try:
        return driver(his, plan["tasks"]).run()
    finally:
        his.close()


if __name__ == "__main__":
    sys.exit(main())
