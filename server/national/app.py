"""The national door as an ASGI app (FastAPI); server/http_server.py runs it beside gRPC.

FastAPI because the envelope is typed with pydantic models at the edge and the
OpenAPI description of the door comes from the same models (published at
/fsi/openapi.json); uvicorn because it is the maintained ASGI server FastAPI runs
on. The body is read and parsed here, not by FastAPI, so that JSON numbers become
Decimal (never float) and every failure, even a body that is not JSON, is answered
as an envelope with infcode -1: the door never answers an HTML page or a 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any
from urllib.parse import quote

import simplejson
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from settlesim.server import calls
from settlesim.server.journal import CallNote, Journal
from settlesim.server.national.client_certs import names_of
from settlesim.server.national.envelope import FAILURE, SUCCESS, Answer, Envelope, answer, parse
from settlesim.server.national.files import DOWNLOAD
from settlesim.server.national.flow import TRANSACTIONS, Call, run
from settlesim.server.national.identity import READS, Identify
from settlesim.server.national.visits import VisitStore
from settlesim.server.rules.reasons import Reason, Refusal
from settlesim.server.service import SettlementCore
from settlesim.server.status import to_status
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("settlesim.server.national")

PATH = "/fsi/api/rsfComIfsService/callService"
OPENAPI_PATH = "/fsi/openapi.json"
MAX_BODY_BYTES = 1 << 20  # as the gRPC door's MAX_MESSAGE_BYTES
# 9102 answers the file it downloads (files.py), every other answer is an envelope.
DOWNLOAD_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "the answer envelope; a 9102 download answers the file itself",
          "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
}  # fmt: skip


class EnvelopeResponse(Response):
    """JSON with Decimal money written as exact numbers, Chinese as itself."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return simplejson.dumps(content, use_decimal=True, ensure_ascii=False).encode()


def _envelope_of(refusal: Refusal, received: datetime, status_code: int = 200) -> EnvelopeResponse:
    return EnvelopeResponse(answer(None, refusal, "", received, datetime.now()), status_code=status_code)


def create_app(
    core: SettlementCore,
    *,
    allow_sessions: bool = True,
    journal: Journal | None = None,
    core_loop: asyncio.AbstractEventLoop | None = None,
    identify: Identify | None = None,
) -> FastAPI:
    """The door's app. `core_loop`: the event loop an async core runs on (None: a
    synchronous core, called from the door's worker threads). `identify`: who a request
    is (identity.py: signatures or bearer tokens, client certificates); None trusts the
    envelope, as the insecure local stub does."""
    store = VisitStore(core.ledger)
    app = FastAPI(
        title="settlesim national door",
        description="The national platform's JSON envelope (docs/national.md): "
        f"transactions {', '.join(TRANSACTIONS)}.",
        openapi_url=OPENAPI_PATH,
        docs_url="/fsi/docs",
        redoc_url=None,
    )

    body_schema = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": Envelope.model_json_schema()}},
        }
    }

    async def call_service(request: Request, infno: str = "") -> Response:
        received = datetime.now()
        started = time.perf_counter()
        body = await request.body()
        # The sandbox headers as gRPC metadata: one reading of them for both doors (server/calls.py).
        session = [
            (k, v) for k, v in request.headers.items() if k in (calls.SESSION_HEADER, calls.MEMBERS_HEADER)
        ]
        credentials = {name: request.headers.get(name, "") for name in READS}
        names = names_of(request.scope)  # the verified client certificate's, with mutual TLS
        result = await run_in_threadpool(
            _serve, core, store, journal, allow_sessions, body, infno, session, received, started, core_loop,
            identify, credentials, names,
        )  # fmt: skip
        download = result["output"].pop(DOWNLOAD, None) if result["infcode"] == SUCCESS else None
        if download is not None:  # 9102: the file itself, as the platform answers it
            disposition = f"attachment; filename*=UTF-8''{quote(download['filename'])}"
            return Response(download["content"], media_type="application/zip",
                            headers={"content-disposition": disposition})  # fmt: skip
        return EnvelopeResponse(result)

    app.add_api_route(
        PATH, call_service, methods=["POST"], response_model=Answer, openapi_extra=body_schema,
        responses=DOWNLOAD_RESPONSE,
        summary="callService: any transaction, named by the envelope's infno",
    )  # fmt: skip
    app.add_api_route(
        PATH + "/{infno}", call_service, methods=["POST"], response_model=Answer, openapi_extra=body_schema,
        responses=DOWNLOAD_RESPONSE,
        summary="callService/<infno>: the path's infno must equal the envelope's",
    )  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> EnvelopeResponse:
        refusal = Refusal(
            Reason.UNSUPPORTED_TRANSACTION, f"HTTP {error.status_code}: {error.detail}; post to {PATH}"
        )
        return _envelope_of(refusal, datetime.now(), error.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> EnvelopeResponse:
        return _envelope_of(Refusal(Reason.MALFORMED_MESSAGE, str(error)[:300]), datetime.now())

    return app


def _serve(
    core: SettlementCore,
    store: VisitStore,
    journal: Journal | None,
    allow_sessions: bool,
    body: bytes,
    path_infno: str,
    session: list[tuple[str, str]],
    received: datetime,
    started: float,
    core_loop: asyncio.AbstractEventLoop | None = None,
    identify: Identify | None = None,
    credentials: dict[str, str] | None = None,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """One envelope in, one envelope out (in a worker thread: the ledger's calls block)."""
    envelope: Envelope | None = None
    call: Call | None = None
    refusal: Refusal | None = None
    output: dict[str, Any] | None = None
    try:
        identity = identify(credentials or {}, names or []) if identify is not None else ""
        if len(body) > MAX_BODY_BYTES:
            raise Refusal(Reason.MALFORMED_MESSAGE, f"the body is over {MAX_BODY_BYTES} bytes")
        try:
            data = simplejson.loads(body, use_decimal=True)
        except (ValueError, UnicodeDecodeError) as error:
            raise Refusal(Reason.MALFORMED_MESSAGE, f"the body is not JSON: {error}") from None
        envelope = parse(Envelope, data, "")
        if path_infno and path_infno != envelope.infno:
            raise Refusal(
                Reason.FIELD_INVALID,
                f"the path says {path_infno}, the envelope {envelope.infno}",
                field="infno",
            )
        caller = calls.resolve(session, {}, calls.CallSettings(allow_sessions, None)).require()
        caller = caller._replace(institution=identity)
        call = Call(core, store, caller, envelope, core_loop)
        output = run(call)
    except Refusal as error:
        refusal = error
        log.info(
            "national %s refused: %s %s", envelope.infno if envelope else "?", error.reason, error.message
        )
    except RecursionError:
        refusal = Refusal(Reason.MALFORMED_MESSAGE, "the body nests too deep")
    except Exception:  # a bug: still an envelope, never a 500 page (the log has the traceback)
        log.exception("national %s failed", envelope.infno if envelope else "?")
        failed = answer(None, None, "", received, datetime.now())
        failed.update(
            infcode=FAILURE, err_msg="平台内部错误", err_reason="INTERNAL", err_detail="internal error"
        )
        return failed
    region = envelope.mdtrtarea_admvs if envelope is not None else ""
    result = answer(output, refusal, region, received, datetime.now())
    if journal is not None and call is not None:
        _journal(journal, call, refusal, started)
    return result


def _journal(journal: Journal, call: Call, refusal: Refusal | None, started: float) -> None:
    """The contract calls a national call made, as journal entries of door "national"
    (the visit flow's own steps, 9001 1101 5301 2201-2205 without a contract call, are not
    journal entries: the journal speaks the contract)."""
    for rpc, request, response in call.contract:
        note = CallNote(rpc, request, door="national", institution=call.institution, session=call.session)
        note.started = started
        note.response = response
        if response is None and refusal is not None:  # the contract call the refusal came from
            status = to_status(refusal)
            note.code, note.trailers = status.code, status.trailing_metadata
        note.latency_ms = (time.perf_counter() - started) * 1000
        journal.submit(note)
