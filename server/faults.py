"""Fault injection: the reference platform misbehaving on purpose, the way a real
network does, so a vendor's retry, void (冲正) and reconciliation logic runs.

A fault plan says, per RPC (or "*" for every settlement RPC):

- ``latency_ms`` (+ ``jitter_ms``): sleep before handling the call;
- ``errors``: a rate per status code (UNAVAILABLE, DEADLINE_EXCEEDED,
  RESOURCE_EXHAUSTED) at which the call is refused *before* it runs: nothing
  is committed;
- ``commit_then_drop`` (SettleVisit, ReverseSettlement, VoidByMessageId): the
  rate at which the call runs for real — the ledger commits — and the answer is
  then replaced by UNAVAILABLE. The caller cannot tell this from a lost answer;
  it is exactly the case the national void transaction (2601) exists for.

Injected refusals carry ErrorInfo reason INJECTED_FAULT with metadata
``fault`` = ``error`` or ``commit_then_drop``. The draws come from one seeded
random generator: the same seed and the same sequence of calls give the same
faults (a concurrent client's calls interleave differently from run to run).

YAML (``settlesim serve --faults faults.yaml``)::

    seed: 7
    rpcs:
      "*":         {latency_ms: 5, errors: {UNAVAILABLE: 0.02}}
      SettleVisit: {errors: {UNAVAILABLE: 0.05, RESOURCE_EXHAUSTED: 0.01}, commit_then_drop: 0.2}

A named RPC's fields replace those of "*"; fields it leaves out come from "*".
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.rpc import code_pb2
from settlesim.server.completion import to_completion
from settlesim.server.journal import current_note
from settlesim.server.rules.reasons import Reason, Refusal
from settlesim.server.status import to_status
from settlesim.v1 import settlement_service_pb2 as pb

log = logging.getLogger("settlesim.server.faults")

RPCS = tuple(pb.DESCRIPTOR.services_by_name["SettlementService"].methods_by_name)
WRITES = ("SettleVisit", "ReverseSettlement", "VoidByMessageId")
ERROR_CODES = {
    "UNAVAILABLE": code_pb2.UNAVAILABLE,
    "DEADLINE_EXCEEDED": code_pb2.DEADLINE_EXCEEDED,
    "RESOURCE_EXHAUSTED": code_pb2.RESOURCE_EXHAUSTED,
}


class FaultPlanError(ValueError):
    """A fault plan that cannot be right (unknown RPC or code, rates out of range)."""


@dataclass(frozen=True)
class RpcFaults:
    latency_ms: float | None = None
    jitter_ms: float | None = None
    errors: Mapping[str, float] | None = None
    commit_then_drop: float | None = None

    def over(self, default: RpcFaults) -> RpcFaults:
        """These faults, with the fields left out taken from `default`."""
        return RpcFaults(
            *(
                mine if mine is not None else theirs
                for mine, theirs in (
                    (self.latency_ms, default.latency_ms),
                    (self.jitter_ms, default.jitter_ms),
                    (self.errors, default.errors),
                    (self.commit_then_drop, default.commit_then_drop),
                )
            )
        )

    @property
    def active(self) -> bool:
        return bool(
            self.latency_ms or self.jitter_ms or self.commit_then_drop or any((self.errors or {}).values())
        )


@dataclass(frozen=True)
class FaultPlan:
    rpcs: Mapping[str, RpcFaults] = field(default_factory=dict)
    seed: int | None = None

    def for_rpc(self, rpc: str) -> RpcFaults:
        default = self.rpcs.get("*", RpcFaults())
        return self.rpcs[rpc].over(default) if rpc in self.rpcs else default

    @property
    def active(self) -> bool:
        return any(self.for_rpc(rpc).active for rpc in RPCS)

    def merged(self, other: FaultPlan) -> FaultPlan:
        """`other` (command-line flags) on top of this plan (a file)."""
        rpcs = dict(self.rpcs)
        for rpc, faults in other.rpcs.items():
            rpcs[rpc] = faults.over(rpcs[rpc]) if rpc in rpcs else faults
        return validate(FaultPlan(rpcs, other.seed if other.seed is not None else self.seed))

    def describe(self) -> str:
        parts = []
        for rpc, f in sorted(self.rpcs.items()):
            bits = []
            if f.latency_ms or f.jitter_ms:
                bits.append(f"latency {f.latency_ms or 0:g}±{f.jitter_ms or 0:g} ms")
            bits += [f"{code} {rate:.1%}" for code, rate in (f.errors or {}).items() if rate]
            if f.commit_then_drop:
                bits.append(f"commit-then-drop {f.commit_then_drop:.1%}")
            if bits:
                parts.append(f"{rpc}: {', '.join(bits)}")
        return "; ".join(parts) + f" (seed {self.seed})"


def validate(plan: FaultPlan) -> FaultPlan:
    for rpc, faults in plan.rpcs.items():
        if rpc != "*" and rpc not in RPCS:
            raise FaultPlanError(f"unknown RPC {rpc!r}; known: *, {', '.join(RPCS)}")
        for name in ("latency_ms", "jitter_ms"):
            value = getattr(faults, name)
            if value is not None and not 0 <= value <= 60_000:
                raise FaultPlanError(f"{rpc}: {name} must be between 0 and 60000")
        errors = faults.errors or {}
        for code, rate in errors.items():
            if code not in ERROR_CODES:
                raise FaultPlanError(f"{rpc}: cannot inject {code!r}; choose from {', '.join(ERROR_CODES)}")
            if not 0 <= rate <= 1:
                raise FaultPlanError(f"{rpc}: rate for {code} must be between 0 and 1")
        drop = faults.commit_then_drop
        if drop is not None and drop and rpc not in WRITES:
            raise FaultPlanError(f"{rpc}: commit_then_drop applies only to {', '.join(WRITES)}")
        if drop is not None and not 0 <= drop <= 1:
            raise FaultPlanError(f"{rpc}: commit_then_drop must be between 0 and 1")
    for rpc in RPCS:
        f = plan.for_rpc(rpc)
        if sum((f.errors or {}).values()) > 1:
            raise FaultPlanError(f"{rpc}: error rates add up to more than 1")
    return plan


def parse_plan(data: Any, source: str = "fault plan") -> FaultPlan:
    if not isinstance(data, dict) or not set(data) <= {"seed", "rpcs"}:
        raise FaultPlanError(f"{source}: expected a mapping with `seed` and `rpcs`")
    rpcs: dict[str, RpcFaults] = {}
    for rpc, spec in (data.get("rpcs") or {}).items():
        known = {"latency_ms", "jitter_ms", "errors", "commit_then_drop"}
        if not isinstance(spec, dict) or not set(spec) <= known:
            raise FaultPlanError(f"{source}: rpcs.{rpc} may only have {', '.join(sorted(known))}")
        errors = spec.get("errors")
        if errors is not None and not isinstance(errors, dict):
            raise FaultPlanError(f"{source}: rpcs.{rpc}.errors must map a status code to a rate")
        try:
            rpcs[str(rpc)] = RpcFaults(
                latency_ms=_number(spec.get("latency_ms")),
                jitter_ms=_number(spec.get("jitter_ms")),
                errors={str(k): float(v) for k, v in errors.items()} if errors is not None else None,
                commit_then_drop=_number(spec.get("commit_then_drop")),
            )
        except (TypeError, ValueError) as e:
            raise FaultPlanError(f"{source}: rpcs.{rpc}: {e}") from e
    seed = data.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise FaultPlanError(f"{source}: seed must be an integer")
    return validate(FaultPlan(rpcs, seed))


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def load_plan(path: Path) -> FaultPlan:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise FaultPlanError(f"{path}: not valid YAML: {e}") from e
    return parse_plan(data, str(path))


def plan_from_flags(
    latency_ms: float | None = None,
    errors: Mapping[str, float] | None = None,
    commit_then_drop: float | None = None,
    seed: int | None = None,
) -> FaultPlan:
    """`--fault-latency-ms` and `--fault-error` apply to every settlement RPC;
    `--fault-drop-after-commit` to SettleVisit."""
    rpcs: dict[str, RpcFaults] = {}
    if latency_ms is not None or errors:
        rpcs["*"] = RpcFaults(latency_ms=latency_ms, errors=dict(errors) if errors else None)
    if commit_then_drop is not None:
        rpcs["SettleVisit"] = RpcFaults(commit_then_drop=commit_then_drop)
    return validate(FaultPlan(rpcs, seed))


class FaultInterceptor:
    """Applies a FaultPlan to SettlementService calls; other services (health,
    reflection) are never disturbed."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self.faults = {rpc: plan.for_rpc(rpc) for rpc in RPCS}
        self._random = random.Random(plan.seed)  # one event loop draws: no lock needed

    def _draw(self) -> float:
        return self._random.random()

    def wrap(self, rpc: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler of SettlementService's `rpc` with its faults (itself when it has none);
        made once per method when the server starts (server/door.py)."""
        faults = self.faults.get(rpc)
        if faults is None or not faults.active:
            return handler
        behavior = handler.unary_unary

        async def faulty(request: Any, context: grpc.aio.ServicerContext) -> Any:
            # A slow platform does not notice that the client left: the call runs on
            # and may commit after the client's deadline (docs/faults.md).
            return await to_completion(injected, request, context)

        async def injected(request: Any, context: grpc.aio.ServicerContext) -> Any:
            delay = (faults.latency_ms or 0) + (faults.jitter_ms or 0) * self._draw()
            if delay:
                await asyncio.sleep(delay / 1000)  # other calls go on meanwhile
            draw = self._draw()
            for code, rate in (faults.errors or {}).items():
                if draw < rate:
                    await self._abort(context, rpc, code, "error", "before it ran; nothing was committed")
                draw -= rate
            response = await behavior(request, context)
            if faults.commit_then_drop and self._draw() < faults.commit_then_drop:
                note = current_note()
                if note is not None:  # the journal keeps the answer that was made, then dropped
                    note.response = response
                log.info("%s committed, answer dropped (injected)", rpc)
                await self._abort(context, rpc, "UNAVAILABLE", "commit_then_drop", "after it ran; answer dropped")
            return response

        return grpc.unary_unary_rpc_method_handler(
            faulty,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, rpc: str, code: str, kind: str, when: str) -> None:
        refusal = Refusal(Reason.INJECTED_FAULT, f"injected {code} on {rpc} {when}", fault=kind)
        status = to_status(refusal, ERROR_CODES[code])
        await context.abort(status.code, status.details, status.trailing_metadata)


# --- targeted faults of a check run (docs/his-check.md) ------------------------------------------
# Exact, not drawn: "the 1st SettleVisit of this run commits, then its answer is
# dropped". The run's routing (server/runs.py route_call) calls before_call once
# it knows the call's run; the journal's interceptor calls after_call with the
# answer. Both are plain functions, so an asyncio port calls them as they are.

TARGETED_KINDS = {
    "unavailable": RPCS,  # refused before it runs: nothing is committed
    "delay": RPCS,  # sleeps delay_ms, then runs (past the HIS's deadline, the commit lands late)
    "drop_after_commit": WRITES,  # runs and commits, then the answer becomes UNAVAILABLE
    "figures_off": ("PreSettleVisit",),  # the answer's fund/patient split moved by figures_off_fen
}


def check_targeted(fault: Any) -> str | None:
    """What is wrong with a targeted fault (a runs.TargetedFault), or None."""
    if fault.kind not in TARGETED_KINDS:
        return f"kind {fault.kind!r} is not one of {', '.join(TARGETED_KINDS)}"
    if fault.rpc not in TARGETED_KINDS[fault.kind]:
        return f"{fault.kind} applies to {', '.join(TARGETED_KINDS[fault.kind])}, not {fault.rpc!r}"
    if not fault.nth and fault.from_nth <= 0:
        return "give nth (e.g. [1]) or from_nth"
    if any(n < 1 for n in fault.nth):
        return "nth counts calls from 1"
    if fault.kind == "delay" and not 0 < fault.delay_ms <= 60_000:
        return "delay needs delay_ms between 1 and 60000"
    if fault.kind == "figures_off" and fault.figures_off_fen == 0:
        return "figures_off needs figures_off_fen (not 0)"
    return None


def before_call(runs: Any, run: Any, note: Any) -> None:
    """Count the call within its run and apply the faults that act before it runs."""
    n = runs.count(run, note.rpc)
    for fault in run.faults:
        if fault.rpc != note.rpc or not fault.hits(n):
            continue
        if fault.kind == "delay":
            note.fault = "delay"
            log.info("%s #%d of run %s delayed %d ms (targeted)", note.rpc, n, run.run_id, fault.delay_ms)
            note.delay_seconds = fault.delay_ms / 1000  # slept by SettlementService.caller, off the loop's clock
        elif fault.kind == "unavailable":
            note.fault = "unavailable"
            raise Refusal(
                Reason.INJECTED_FAULT,
                f"injected UNAVAILABLE on {note.rpc} #{n} of run {run.run_id} before it ran; nothing was committed",
                fault="unavailable",
            )
        else:  # acts on the answer: after_call
            note.fault = fault.kind
            note.targeted = fault


async def after_call(note: Any, response: Any, context: grpc.aio.ServicerContext) -> Any:
    """Apply the call's answer-side fault (drop_after_commit, figures_off)."""
    fault = getattr(note, "targeted", None)
    if fault is None:
        return response
    if fault.kind == "drop_after_commit":
        log.info("%s of run %s committed, answer dropped (targeted)", note.rpc, note.run.run_id)
        refusal = Refusal(
            Reason.INJECTED_FAULT,
            f"injected UNAVAILABLE on {note.rpc} of run {note.run.run_id} after it ran; answer dropped",
            fault="drop_after_commit",
        )
        status = to_status(refusal, ERROR_CODES["UNAVAILABLE"])
        await context.abort(status.code, status.details, status.trailing_metadata)
    if fault.kind == "figures_off":
        changed = type(response)()
        changed.CopyFrom(response)
        totals = changed.settlement.totals
        totals.fund_pays_fen += fault.figures_off_fen
        totals.patient_pays_fen -= fault.figures_off_fen
        return changed
    return response
