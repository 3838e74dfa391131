"""The national door, fuzzed: hypothesis posts arbitrary bodies, arbitrary envelopes
and the recorded visit's envelopes with fields dropped or replaced, to a real server.

Every answer is a well-formed envelope (test_national.well_formed: JSON, every key,
infcode 0/-1, a known reason and a Chinese err_msg on failure, never INTERNAL), no
HTTP 500, and the ledger check passes afterwards.

Examples per test: SETTLESIM_FUZZ_EXAMPLES (default 300).
"""

from __future__ import annotations

import base64
import copy
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import simplejson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from settlesim.server.app import RunningServer, ServerConfig, start
from settlesim.server.national.app import PATH
from settlesim.server.national.flow import TRANSACTIONS
from settlesim.server.rules.reasons import Reason

from tests.conftest import ledger_check
from tests.test_national import RECORDED, well_formed

EXAMPLES = int(os.environ.get("SETTLESIM_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
REASONS = {r.value for r in Reason}
RECORDING = simplejson.loads(RECORDED.read_text(), use_decimal=True)


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, httpx.Client]]:
    db = Path(tmp_path_factory.mktemp("national-fuzz")) / "ledger.db"
    running = start(ServerConfig(port=0, db_path=db, national_port=0))
    client = httpx.Client(base_url=f"http://127.0.0.1:{running.national_port}", timeout=30)
    yield running, client
    client.close()
    running.stop(grace=1)
    assert ledger_check(db).returncode == 0


def check(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code != 500, response.text
    answer = well_formed(response)
    if answer["infcode"] == -1:
        assert answer["err_reason"] in REASONS, answer
    return answer


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.decimals(allow_nan=False, allow_infinity=False, min_value=-(10**6), max_value=10**6)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(body=st.binary(max_size=300))
def test_any_body_is_answered_with_an_envelope(door, body):
    _, client = door
    check(client.post(PATH, content=body))


# Values a HIS would send for each input.data key, mixed with arbitrary JSON.
TYPICAL = {
    "psn_no": ["63000000000000000001", "11000000000000000001", ""],
    "mdtrt_id": ["MD0", ""],
    "setl_id": ["S0", ""],
    "medfee_sumamt": [Decimal("179.63"), Decimal("0"), "179.63"],
    "insutype": ["390", "310", 390],
    "begntime": ["2021-12-09 09:00:00", "2021-13-45", ""],
    "omsgid": ["H110105000012021120909310008", ""],
    "oinfno": ["2207", "2204"],
    "stmt_begndate": ["2021-12-09", "2021-12-31"],
    "stmt_enddate": ["2021-12-09", "2021-01-01"],
    "fixmedins_setl_cnt": [1, 0, Decimal("1.5")],
    "fund_pay_sumamt": [Decimal("129.63"), Decimal("-1")],
    "setl_optins": ["630000"],
    "chrg_bchno": ["0000", "CB1"],
}


@FUZZ
@given(
    infno=st.sampled_from([*TRANSACTIONS, "9999", "", "2207 "]),
    msgid=st.sampled_from(["H110105000012021120909000001"] * 3 + ["", "\n", "x" * 80]) | st.text(max_size=35),
    institution=st.sampled_from(["H11010500001"] * 3 + ["H46020000001", "NOPE", ""]),
    data=st.fixed_dictionaries(
        {}, optional={key: st.sampled_from(values) | json_values for key, values in TYPICAL.items()}
    ),
)
def test_any_envelope_is_answered_with_an_envelope(door, infno, msgid, institution, data):
    _, client = door
    envelope = {"infno": infno, "msgid": msgid, "fixmedins_code": institution, "input": {"data": data}}
    body = simplejson.dumps(envelope, use_decimal=True)
    check(client.post(PATH, content=body))


@FUZZ
@given(
    infno=st.sampled_from(list(TRANSACTIONS)),
    seq=st.integers(0, 10**6),
    values=st.fixed_dictionaries({key: st.sampled_from(v) | json_values for key, v in TYPICAL.items()}),
    kept=st.lists(st.booleans(), min_size=len(TYPICAL), max_size=len(TYPICAL)),
)
def test_every_transaction_with_fuzzed_data_is_answered_with_an_envelope(door, infno, seq, values, kept):
    """A valid envelope head (fresh msgid, a real institution) so the fuzz reaches each transaction."""
    _, client = door
    data = {key: value for (key, value), keep in zip(values.items(), kept, strict=True) if keep}
    envelope = {
        **RECORDING["common"], "sign_no": "", "infno": infno, "msgid": f"H11010500001{seq:018d}",
        "input": {"data": data},
    }  # fmt: skip
    check(client.post(PATH, content=simplejson.dumps(envelope, use_decimal=True)))


@FUZZ
@given(
    step=st.integers(0, len(RECORDING["calls"]) - 1),
    path=st.lists(st.text(max_size=10), min_size=1, max_size=4),
    replacement=json_values,
    drop=st.booleans(),
    seq=st.integers(0, 10**6),
)
def test_recorded_envelopes_with_a_field_broken_are_answered_with_an_envelope(
    door, step, path, replacement, drop, seq
):
    """A recorded call with one field dropped or replaced (keys picked from the real
    ones where the path meets them), with a fresh msgid: an envelope, never a 500."""
    _, client = door
    call = copy.deepcopy({**RECORDING["common"], **RECORDING["calls"][step]})
    call["msgid"] = f"H11010500001{seq:018d}"
    call["sign_no"] = ""
    node: Any = call
    for i, key in enumerate(path):
        if isinstance(node, dict) and node:
            keys = sorted(node)
            key = keys[hash(key) % len(keys)]
        elif isinstance(node, list) and node:
            key = hash(key) % len(node)
        else:
            break
        if i == len(path) - 1 or not isinstance(node[key], (dict, list)):
            if drop and isinstance(node, dict):
                del node[key]
            else:
                node[key] = replacement
            break
        node = node[key]
    body = simplejson.dumps(call, use_decimal=True, ensure_ascii=False)
    check(client.post(PATH, content=body.replace("{mdtrt_id}", "MD0").replace("{sign_no}", "")))


def test_money_is_never_parsed_as_float(door):
    """A float-unsafe amount (0.1 + 0.2 would be 0.30000000000000004) arrives exact: 2204
    refuses 0.30000000000000004 (more than 2 places) rather than rounding it."""
    _, client = door
    envelope = {**RECORDING["common"], **RECORDING["calls"][5], "msgid": "H110105000012021120909999999"}
    assert envelope["infno"] == "2204"
    body = simplejson.dumps(envelope, use_decimal=True).replace(
        '"pric": 50.00', '"pric": 0.30000000000000004'
    )
    answer = check(client.post(PATH, content=body))
    assert (answer["infcode"], answer["err_reason"]) == (-1, "FIELD_INVALID")
    assert "input.feedetail.0.pric has more than 2 decimal places" in answer["err_detail"]


@FUZZ
@given(
    lines=st.lists(st.lists(st.text(max_size=12) | st.sampled_from(["S1", "1.00", "0.001", "-5", "0"]),
                            max_size=8), max_size=5),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
    as_list=st.booleans(),
    seq=st.integers(0, 10**6),
)  # fmt: skip
def test_a_9101_file_of_any_bytes_is_answered_with_an_envelope(door, lines, flips, as_list, seq):
    """9101 with detail files of random lines, zipped and then with random bytes changed (a
    damaged zip, bad deflate data, a text of no known encoding): an envelope, never INTERNAL."""
    from settlesim.clients.national import detail_file

    _, client = door
    content = bytearray(detail_file(lines))
    for at, value in flips:
        content[at % len(content)] = value
    sent: Any = list(content) if as_list else base64.b64encode(bytes(content)).decode()
    envelope = {
        **RECORDING["common"], "sign_no": "", "infno": "9101", "msgid": f"H11010500001{seq:018d}",
        "input": {"fsUploadIn": {"in": sent, "filename": "detail.txt.zip", "fixmedins_code": "H11010500001"}},
    }  # fmt: skip
    check(client.post(PATH, content=simplejson.dumps(envelope, use_decimal=True)))
