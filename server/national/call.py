"""One national call (Call): who, what, the contract calls it made; what every transaction shares."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import simplejson
from settlesim.server.model import World
from settlesim.server.national.envelope import Envelope, Part, parse
from settlesim.server.national.visits import NationalWrites, VisitStore
from settlesim.server.rules.reasons import Reason, Refusal
from settlesim.server.service import Caller, SettlementCore
from settlesim.v1 import settlement_service_pb2 as pb

CHRONIC_SPECIAL_OUTPATIENT = "14"  # med_type 门诊慢特病
OUTPATIENT_CLEARING = "11"  # clr_type 门诊
# chrgitm_lv 收费项目等级: 01 甲类, 02 乙类, 03 丙类 (also what is not in the catalog: 自费).
CHRGITM_LV = {
    pb.CATALOG_CLASS_A: "01",
    pb.CATALOG_CLASS_B: "02",
    pb.CATALOG_CLASS_C: "03",
    pb.CATALOG_CLASS_NOT_LISTED: "03",
}
# fund_pay_type 基金支付类型 of the basic pooled fund, per insutype.
POOLED_FUND = {"310": ("310100", "职工基本医疗保险统筹基金"), "390": ("390100", "城乡居民基本医疗保险基金")}


@dataclass
class Call:
    """One national call: who, what, and the contract calls it made (for the journal)."""

    core: SettlementCore
    store: VisitStore
    caller: Caller
    envelope: Envelope
    core_loop: asyncio.AbstractEventLoop | None = None
    contract: list[list[Any]] = field(default_factory=list)  # [rpc, request, answer] per contract call

    @property
    def world(self) -> World:
        return self.core.world

    @property
    def institution(self) -> str:
        return self.envelope.fixmedins_code

    @property
    def session(self) -> str:
        return self.caller.session

    def request_hash(self) -> str:
        body = simplejson.dumps(self.envelope.input, use_decimal=True, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(f"{self.envelope.infno}\n{body}".encode()).hexdigest()

    def once(self, work: Callable[[NationalWrites], dict[str, Any]]) -> dict[str, Any]:
        self.session_for(writes=True)  # a sandbox's first write owns it
        return self.store.once(
            self.session,
            self.institution,
            self.envelope.msgid,
            self.envelope.infno,
            self.request_hash(),
            work,
        )

    def contract_call(
        self, rpc: str, method: Callable[[Caller, Any], Any], request: Any, **kwargs: Any
    ) -> Any:
        made = [rpc, request, None]  # journaled even when it is refused
        self.contract.append(made)
        made[2] = answer = self.core_call(method, request, **kwargs)
        return answer

    def session_for(self, *, writes: bool) -> str:
        """The core's session for this call's institution (SettlementCore.session_for)."""
        return self._awaited(self.core.session_for(self.caller, self.institution, writes=writes))

    def core_call(self, method: Callable[..., Any], request: Any, **kwargs: Any) -> Any:
        """A SettlementCore call from the door's worker thread."""
        return self._awaited(method(self.caller, request, **kwargs))

    def _awaited(self, answer: Any) -> Any:
        """An async core's answer (one event loop serving gRPC) awaited on its own loop,
        `core_loop`, from the door's thread; a synchronous core's as it is."""
        if inspect.isawaitable(answer):
            assert self.core_loop is not None, "an async core needs its event loop"
            answer = asyncio.run_coroutine_threadsafe(answer, self.core_loop).result()  # type: ignore[arg-type]
        return answer


def data_of(call: Call, model: type[Part]) -> Any:
    """input.data as `model` (a missing data part is an empty one)."""
    data = call.envelope.input.get("data", {})
    return parse(model, data, "input.data")


def day_of(text: str, field_name: str) -> str:
    """yyyy-MM-dd of a national time ("2021-12-09 10:00:00" or "2021-12-09")."""
    day = text[:10]
    try:
        date.fromisoformat(day)
    except ValueError:
        raise Refusal(
            Reason.FIELD_INVALID, f"{field_name} must start yyyy-MM-dd: {text!r}", field=field_name
        ) from None
    return day
