"""9101 file upload, 3202 by file, 9102 file download (文件上传 / 对明细账 / 文件下载): the
detail reconciliation round trip as HIS code runs it when 3201 does not balance.

- 9101 `fsUploadIn` {`in`, `filename`, `fixmedins_code`}: the hospital's detail file, a zip
  holding one text file (or the text itself), a settlement per line, tab-separated:
  setl_id, mdtrt_id, psn_no, medfee_sumamt, fund_pay_sumamt, acct_pay, refd_setl_flag.
  `in` is the file's bytes as HIS JSON serializers write a byte array: a base64 string
  (.NET, fastjson) or a list of byte values. Answer: `file_qury_no`, `filename`, `dld_endtime`.
- 3202 with `data.file_qury_no`: its lines compared as the inline rows are (reconciling.py);
  answer `fileinfo` naming the result file (and `stmt_rslt`, a settlesim extension).
- 9102 `fsDownloadIn` {`file_qury_no`, `filename`, `fixmedins_code`}: the file itself
  (application/zip), not an envelope; a refusal is an envelope. Result lines: psn_no,
  mdtrt_id, setl_id, msgid (to void with, 2601), stmt_rslt (reconciling.py's codes),
  refd_setl_flag, memo, medfee_sumamt, fund_pay_sumamt, acct_pay.

Files are kept in the ledger beside the calls' answers (LedgerStore.national_once, under
their file_qury_no, which the uploading call's msgid fixes), so they survive a restart and a
retried call gets the same file; dld_endtime is said, not enforced.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import zipfile
from datetime import datetime, timedelta
from typing import Any

from pydantic import Field
from settlesim.server.national import money
from settlesim.server.national.call import Call, data_of
from settlesim.server.national.envelope import Part, parse
from settlesim.server.national.reconciling import MATCHED, PLATFORM_ONLY, DetailRow, detail_rows
from settlesim.server.rules.reasons import Reason, Refusal
from settlesim.v1 import settlement_service_pb2 as pb

DETAIL_COLUMNS = ("setl_id", "mdtrt_id", "psn_no", "medfee_sumamt", "fund_pay_sumamt", "acct_pay", "refd_setl_flag")
RESULT_COLUMNS = ("psn_no", "mdtrt_id", "setl_id", "msgid", "stmt_rslt", "refd_setl_flag", "memo",
                  "medfee_sumamt", "fund_pay_sumamt", "acct_pay")  # fmt: skip
DOWNLOAD = "settlesim.download"  # the output key app.py answers as the file itself
KEPT = "FILE"  # the infno (and request hash) a kept file is stored under
MAX_LINES = 100_000
MAX_TEXT_BYTES = 16 << 20  # what a zip may expand to


class FsUploadIn(Part):
    content: Any = Field(alias="in")
    filename: str
    fixmedins_code: str = ""


class Upload9101(Part):
    fsUploadIn: FsUploadIn


class FsDownloadIn(Part):
    file_qury_no: str
    filename: str = ""
    fixmedins_code: str = ""


class Download9102(Part):
    fsDownloadIn: FsDownloadIn


class Detail3202File(Part):
    file_qury_no: str
    stmt_begndate: str
    stmt_enddate: str
    setl_optins: str = ""
    clr_type: str = ""


# --- the file's bytes and lines ---------------------------------------------------------------


def _bytes(value: Any, field: str) -> bytes:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise Refusal(Reason.FIELD_INVALID, f"{field} is not base64", field=field) from None
    if isinstance(value, list) and all(isinstance(b, int) and not isinstance(b, bool) and -128 <= b <= 255
                                       for b in value):  # fmt: skip
        return bytes(b & 0xFF for b in value)  # Java writes bytes signed
    raise Refusal(Reason.FIELD_INVALID, f"{field} must be the file's bytes: base64, or a list of bytes", field=field)


def _text(content: bytes, field: str) -> str:
    """The text of a zip's one file, or the content itself; UTF-8, else GB18030."""
    if zipfile.is_zipfile(io.BytesIO(content)):
        one_file = Refusal(Reason.FIELD_INVALID, f"{field}: a zip holds one text file of at most 16 MiB", field=field)
        try:
            with zipfile.ZipFile(io.BytesIO(content)) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
                if len(members) != 1 or members[0].file_size > MAX_TEXT_BYTES:
                    raise one_file
                content = archive.read(members[0])
        except Refusal:
            raise
        # A damaged zip makes zipfile raise nearly anything (BadZipFile, zlib.error, EOFError,
        # a negative seek's ValueError, an empty name's IndexError, struct.error, ...): each
        # is the file's fault, so each is the same refusal.
        except Exception as error:
            raise Refusal(Reason.FIELD_INVALID, f"{field}: not a readable zip: {error}", field=field) from None
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return content.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise Refusal(Reason.FIELD_INVALID, f"{field}: the text is neither UTF-8 nor GB18030", field=field)


def _detail_lines(text: str, field: str) -> list[list[str]]:
    """The detail file's lines, each checked: 7 columns, money with 2 places at most."""
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cells = [cell.strip() for cell in line.split("\t")]
        if len(cells) != len(DETAIL_COLUMNS) or not cells[0]:
            raise Refusal(
                Reason.FIELD_INVALID,
                f"{field}: line {n} has {len(cells)} columns; a line is {', '.join(DETAIL_COLUMNS)} (tab-separated)",
                field=field,
            )
        for name in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay"):
            money.yuan_to_fen(cells[DETAIL_COLUMNS.index(name)], f"{field} line {n} {name}")
        lines.append(cells)
    if len(lines) > MAX_LINES:
        raise Refusal(Reason.FIELD_INVALID, f"{field}: more than {MAX_LINES} lines", field=field)
    return lines


def result_file(lines: list[list[str]], name: str) -> bytes:
    """A zip of one tab-separated text file (fixed timestamps: the same lines, the same bytes)."""
    text = "".join("\t".join(cells) + "\n" for cells in lines).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo(name, date_time=(2000, 1, 1, 0, 0, 0)), text)
    return out.getvalue()


# --- kept files ---------------------------------------------------------------------------------


def _file_id(call: Call, kind: str) -> str:
    """file_qury_no (30 characters): fixed by the session, institution and msgid that made it."""
    key = f"{call.session}\n{call.institution}\n{call.envelope.msgid}\n{kind}"
    return kind[0].upper() + hashlib.sha256(key.encode()).hexdigest()[:29].upper()


def _keep(call: Call, file_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """Keep `record` under `file_id` once (a retry keeps the first one)."""
    call.session_for(writes=True)
    return call.store.once(call.session, call.institution, file_id, KEPT, KEPT, lambda _writes: record)


def _kept(call: Call, file_id: str, field: str) -> dict[str, Any]:
    """The file `file_id` of this institution (in this session), or FIELD_INVALID."""
    missing = Refusal(
        Reason.FIELD_INVALID,
        f"{field}: no file {file_id[:40]!r} of {call.institution} (9101 uploads one, 3202 makes result files)",
        field=field,
    )

    def nothing_kept(_writes: Any) -> dict[str, Any]:
        raise missing

    try:
        return call.store.once(call.session, call.institution, file_id, KEPT, KEPT, nothing_kept)
    except Refusal as refused:
        if refused.reason == Reason.MSGID_REUSED:  # the name of a message, not of a file
            raise missing from None
        raise


def _until() -> str:
    return (datetime.now() + timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")


# --- the transactions ---------------------------------------------------------------------------


def upload(call: Call) -> dict[str, Any]:
    """9101 文件上传: the detail file, kept for 3202."""
    body = parse(Upload9101, call.envelope.input, "input").fsUploadIn
    field = "input.fsUploadIn.in"
    lines = _detail_lines(_text(_bytes(body.content, field), field), field)
    file_id = _file_id(call, "detail")
    answer = call.once(lambda _writes: {"file_qury_no": file_id, "filename": body.filename, "dld_endtime": _until()})
    _keep(call, file_id, {"kind": "detail", "filename": body.filename, "lines": lines})
    return answer


def reconcile_by_file(call: Call) -> dict[str, Any]:
    """3202 对明细账 by file: the uploaded lines against the platform's settlements in force;
    the result file says per settlement what reconciling.detail_rows does, and its msgid."""
    data = data_of(call, Detail3202File)
    field = "input.data.file_qury_no"
    detail = _kept(call, data.file_qury_no, field)
    if detail.get("kind") != "detail":
        raise Refusal(Reason.FIELD_INVALID, f"{field}: {data.file_qury_no} is not a 9101 detail file", field=field)
    listed = {cells[0]: cells for cells in detail["lines"]}
    hospital = [DetailRow(setl_id=c[0], medfee_sumamt=c[3], fund_pay_sumamt=c[4]) for c in detail["lines"]]
    lines = []
    for row in detail_rows(call, data.stmt_begndate, data.stmt_enddate, hospital, field):
        cells = listed.get(row["setl_id"])
        if cells is not None:
            psn_no, mdtrt_id, refund = cells[2], cells[1], cells[6]
        elif row["stmt_rslt"] == PLATFORM_ONLY:  # who and which visit, as the platform has it
            read = pb.GetSettlementRequest(institution_code=call.institution, settlement_id=row["setl_id"])
            s = call.core_call(call.core.get_settlement, read).settlement
            psn_no, mdtrt_id, refund = s.person_no, s.visit_id, "0"
        else:
            psn_no, mdtrt_id, refund = "", "", "0"

        def shown(value: Any) -> str:
            return "" if value is None else str(value)

        # acct_pay: the platform compares medfee_sumamt and fund_pay_sumamt (as the inline rows do).
        lines.append([psn_no, mdtrt_id, row["setl_id"], row["msgid"], row["stmt_rslt"], refund, row["stmt_rslt_dscr"],
                      shown(row["medfee_sumamt"]), shown(row["fund_pay_sumamt"]), "0.00"])  # fmt: skip
    balanced = all(cells[4] == MATCHED for cells in lines)
    result_id = _file_id(call, "result")
    name = f"{result_id}.txt"
    answer = call.once(
        lambda _writes: {
            "fileinfo": {"file_qury_no": result_id, "filename": f"{name}.zip", "dld_endtime": _until()},
            "stmt_rslt": "0" if balanced else "1",  # settlesim extension: whether every line matched
        }
    )
    _keep(call, result_id, {"kind": "result", "filename": name, "lines": lines})
    return answer


def download(call: Call) -> dict[str, Any]:
    """9102 文件下载: a kept file, zipped (app.py answers it as the file, not an envelope)."""
    wanted = parse(Download9102, call.envelope.input, "input").fsDownloadIn
    record = _kept(call, wanted.file_qury_no, "input.fsDownloadIn.file_qury_no")
    name = str(record["filename"]).removesuffix(".zip")
    return {DOWNLOAD: {"filename": f"{name}.zip", "content": result_file(record["lines"], name)}}


def detail_reconcile(call: Call) -> dict[str, Any]:
    """3202: by file when input.data names a file_qury_no, else with the rows inline."""
    from settlesim.server.national import reconciling

    data = call.envelope.input.get("data")
    if isinstance(data, dict) and data.get("file_qury_no"):
        return reconcile_by_file(call)
    return reconciling.detail_reconcile(call)
