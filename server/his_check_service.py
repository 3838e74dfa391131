"""The check-run admin service (protos/settlesim/v1/his_check.proto): open a run,
read its journal and end state, close it. `settlesim his-check` is its client;
the grading happens there, as pure functions (docs/his-check.md)."""

from __future__ import annotations

import json
from typing import Any

import grpc
from settlesim.server import calls
from settlesim.server.faults import check_targeted
from settlesim.server.journal import Journal
from settlesim.server.ledger import LedgerStore, StoredSettlement
from settlesim.server.model import World
from settlesim.server.rules.reasons import Reason, Refusal, Violation
from settlesim.server.runs import Run, RunRegistry, TargetedFault
from settlesim.server.service import refusals_as_status
from settlesim.v1 import his_check_pb2 as hc
from settlesim.v1 import his_check_pb2_grpc as hc_grpc


class HisCheckService(hc_grpc.HisCheckServiceServicer):
    def __init__(
        self,
        world: World,
        ledger: LedgerStore,
        journal: Journal,
        runs: RunRegistry,
        call_settings: calls.CallSettings,
    ) -> None:
        """`call_settings`: the settlement service's (server/calls.py), so that both read the
        caller the same way."""
        self.world, self.ledger, self.journal, self.runs = world, ledger, journal, runs
        self.call_settings = call_settings  # refusals_as_status resolves the caller with it

    def _identity(self, context: grpc.ServicerContext) -> str:
        """The institution the transport proves ("" when the server trusts requests)."""
        return calls.caller_of(context, self.call_settings).require().institution

    def _own_run(self, run_id: str, context: grpc.ServicerContext) -> Run:
        run = self.runs.get(run_id) if run_id else None
        identity = self._identity(context)
        if run is None or (identity and run.institution != identity):
            # another institution's run is simply unknown, as its msgids are
            raise Refusal(Reason.RUN_NOT_FOUND, f"no check run {run_id!r}", run_id=run_id)
        return run

    @refusals_as_status
    def OpenRun(self, request: hc.OpenRunRequest, context: grpc.ServicerContext) -> hc.OpenRunResponse:
        identity = self._identity(context)
        institution = request.institution_code
        if identity and institution != identity:
            raise Refusal(
                Reason.INSTITUTION_NOT_CALLER,
                f"the caller is {identity}; it cannot open a run for {institution}",
                institution_code=institution,
            )
        if institution not in self.world.institutions:
            raise Refusal(
                Reason.UNKNOWN_INSTITUTION,
                f"no institution {institution!r} in this world",
                (Violation("institution_code", "unknown institution", Reason.UNKNOWN_INSTITUTION),),
            )
        faults = []
        for i, f in enumerate(request.faults):
            fault = TargetedFault(f.rpc, f.kind, tuple(f.nth), f.from_nth, f.delay_ms, f.figures_off_fen)
            problem = check_targeted(fault)
            if problem is not None:
                raise Refusal(
                    Reason.FIELD_INVALID,
                    f"faults[{i}]: {problem}",
                    (Violation(f"faults[{i}]", problem, Reason.FIELD_INVALID),),
                )
            faults.append(fault)
        run = self.runs.open_run(institution, request.scenario, tuple(faults), request.timeout_s)
        return hc.OpenRunResponse(run=run_message(run))

    @refusals_as_status
    def GetRunRecord(self, request: hc.GetRunRecordRequest, context: grpc.ServicerContext):
        run = self._own_run(request.run_id, context)
        self.runs.wait_idle(run.run_id)
        self.journal.flush()
        answer = hc.GetRunRecordResponse(run=run_message(run), lost_entries=self.journal.lost(run.run_id))
        for entry in self.journal.entries(run_id=run.run_id):
            answer.entries_json.append(json.dumps(entry.to_dict(), ensure_ascii=False))
        for s in self.ledger.session_settlements(run.session):
            answer.settlements_json.append(json.dumps(settlement_dict(s), ensure_ascii=False))
        institution = self.world.institutions[run.institution]
        catalog = self.world.catalog_for(institution.region)
        answer.catalog_codes.extend(sorted(catalog.items) if catalog is not None else ())
        return answer

    @refusals_as_status
    def CloseRun(self, request: hc.CloseRunRequest, context: grpc.ServicerContext) -> hc.CloseRunResponse:
        self._own_run(request.run_id, context)
        closed = self.runs.close_run(request.run_id)
        assert closed is not None
        return hc.CloseRunResponse(run=run_message(closed))


def settlement_dict(s: StoredSettlement) -> dict[str, Any]:
    return {
        "settlement_id": s.settlement_id,
        "msgid": s.msgid,
        "institution_code": s.institution_code,
        "person_no": s.person_no,
        "disease_code": s.disease_code,
        "visit_date": s.visit_date.isoformat(),
        "status": s.status,
        "total": s.total,
        "fund_pays": s.fund_pays,
        "patient_pays": s.patient_pays,
        "undone_by_msgid": s.undone_by_msgid,
    }


def run_message(run: Run) -> hc.Run:
    return hc.Run(
        run_id=run.run_id,
        institution_code=run.institution,
        scenario=run.scenario,
        session=run.session,
        opened_at=run.opened_at,
        expires_at=run.expires_at,
        closed_at=run.closed_at,
        faults=[
            hc.TargetedFault(
                rpc=f.rpc,
                kind=f.kind,
                nth=f.nth,
                from_nth=f.from_nth,
                delay_ms=f.delay_ms,
                figures_off_fen=f.figures_off_fen,
            )
            for f in run.faults
        ],
    )
