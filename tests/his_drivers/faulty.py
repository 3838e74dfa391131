"""Deliberately faulty HIS drivers: the good driver (clients/hischeck/good_his.py)
with one defect each, so the test suite shows every check failing on the HIS
that breaks it, and passing on the scenarios it does not break.

    python tests/his_drivers/faulty.py DEFECT TARGET INSTITUTION RUN TASKS_FILE
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

import grpc
from settlesim.clients.hischeck.good_his import GoodHis, main
from settlesim.clients.hospital import MsgidFactory, answer_lost
from settlesim.v1 import settlement_service_pb2 as pb


class NewMsgidOnRetry(GoodHis):
    """Retries a lost answer under a NEW msgid each time, and never voids."""

    def settle(self, task: dict[str, Any], request: pb.SettlementRequest) -> pb.SettleVisitResponse | None:
        for _ in range(4):
            try:
                return self.his.stub.SettleVisit(
                    pb.SettleVisitRequest(request=request),
                    timeout=self.his.deadline,
                    metadata=self.his.metadata,
                )
            except grpc.RpcError as error:
                if not answer_lost(error):
                    self.on_refusal(error)
                    return None
                fresh = pb.SettlementRequest()
                fresh.CopyFrom(request)
                fresh.msgid = self.his.next_msgid()
                request = fresh
        return None


class NeverVoids(GoodHis):
    """Retries with the same msgid, but when retries run out it just gives up."""

    def on_lost_answer(self, task: dict[str, Any], request: pb.SettlementRequest) -> None:
        self.log.append(f"no answer for {request.msgid}; forgetting it")


class RetriesRefusal(GoodHis):
    """Treats a refusal with a reason as a network error: sends it again, then under a new msgid."""

    def settle(self, task: dict[str, Any], request: pb.SettlementRequest) -> pb.SettleVisitResponse | None:
        answer = super().settle(task, request)
        if answer is None:
            for msgid in (request.msgid, self.his.next_msgid()):
                again = pb.SettlementRequest()
                again.CopyFrom(request)
                again.msgid = msgid
                try:
                    return self.his.stub.SettleVisit(
                        pb.SettleVisitRequest(request=again),
                        timeout=self.his.deadline,
                        metadata=self.his.metadata,
                    )
                except grpc.RpcError:
                    continue
        return answer


class SkipsPreSettle(GoodHis):
    """Settles without the pre-settle (2206) the scenario asks for."""

    def do_settle(self, task: dict[str, Any]) -> None:
        super().do_settle({**task, "pre_settle": False})


class AmountIgnoresQuantity(GoodHis):
    """Sends amount = unit price, whatever the quantity."""

    def request(self, task: dict[str, Any]) -> pb.SettlementRequest:
        request = super().request(task)
        for item in request.items:
            item.amount_fen = item.unit_price_fen
        return request


class ForgetsToReconcile(GoodHis):
    def do_reconcile(self, task: dict[str, Any]) -> None:
        self.log.append("reconcile? maybe tomorrow")


class ShortMsgid(GoodHis):
    """msgid with a date but no time: institution + yyyyMMdd + 6 digits."""

    def __init__(self, his: Any, tasks: list[dict[str, Any]]) -> None:
        super().__init__(his, tasks)
        counter = iter(range(1, 10**6))
        his.next_msgid = lambda: f"{his.institution_code}{datetime.now():%Y%m%d}{next(counter):06d}"


class StoppedClock(GoodHis):
    """The HIS clock stands in 2019: msgids in the national format with a timestamp years off."""

    def __init__(self, his: Any, tasks: list[dict[str, Any]]) -> None:
        super().__init__(his, tasks)
        his.next_msgid = MsgidFactory(his.institution_code, clock=lambda: datetime(2019, 1, 1, 8, 0, 0))


class OneMsgidForAll(GoodHis):
    """Sends every settlement request under the first msgid it made."""

    def request(self, task: dict[str, Any]) -> pb.SettlementRequest:
        request = super().request(task)
        self.first = getattr(self, "first", request.msgid)
        request.msgid = self.first
        return request


class SameSequenceNumber(GoodHis):
    def request(self, task: dict[str, Any]) -> pb.SettlementRequest:
        request = super().request(task)
        for item in request.items:
            item.sequence_no = "0001"
        return request


class LowerCaseCodes(GoodHis):
    def request(self, task: dict[str, Any]) -> pb.SettlementRequest:
        request = super().request(task)
        for item in request.items:
            item.catalog_code = item.catalog_code.lower()
        return request


class SettlesSomethingElse(GoodHis):
    """Adds a line between pre-settle and settle (the figures shown are not those settled)."""

    def settle_request_after(self, pre_request: pb.SettlementRequest) -> pb.SettlementRequest:
        request = super().settle_request_after(pre_request)
        extra = request.items.add()
        extra.CopyFrom(request.items[0])
        extra.sequence_no = f"{len(request.items):04d}"
        return request


class KeepsMismatchedFigures(GoodHis):
    @staticmethod
    def figures_differ(pre: pb.Settlement, settled: pb.Settlement) -> bool:
        return False


class StopsAtMismatch(GoodHis):
    def on_mismatch(self, task: dict[str, Any], answer: pb.ReconcileResponse) -> None:
        self.log.append(f"mismatch in {', '.join(answer.mismatched_fields)}; someone will look at it")


class FundZeroIsFailure(GoodHis):
    """Takes a settlement that pays no fund for a failure and reverses it."""

    def do_settle(self, task: dict[str, Any]) -> None:
        super().do_settle(task)
        settlement = self.settled.get(task["id"])
        if settlement is not None and settlement.totals.fund_pays_fen == 0:
            self.his.reverse(settlement.settlement_id)
            del self.settled[task["id"]]


DRIVERS = {
    "new-msgid-on-retry": NewMsgidOnRetry,
    "never-voids": NeverVoids,
    "retries-refusal": RetriesRefusal,
    "skips-presettle": SkipsPreSettle,
    "amount-ignores-quantity": AmountIgnoresQuantity,
    "forgets-to-reconcile": ForgetsToReconcile,
    "short-msgid": ShortMsgid,
    "stopped-clock": StoppedClock,
    "one-msgid-for-all": OneMsgidForAll,
    "same-sequence-number": SameSequenceNumber,
    "lower-case-codes": LowerCaseCodes,
    "settles-something-else": SettlesSomethingElse,
    "keeps-mismatched-figures": KeepsMismatchedFigures,
    "stops-at-mismatch": StopsAtMismatch,
    "fund-zero-is-failure": FundZeroIsFailure,
}

if __name__ == "__main__":
    sys.exit(main(sys.argv[2:], driver=DRIVERS[sys.argv[1]]))
