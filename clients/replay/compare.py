"""Comparing an answer with what a case expects: only the fields the case names,
numbers exactly (money in integer fen, shown in yuan too), enums by name, absent
optional fields as null; refusals by status code, ErrorInfo reason and BadRequest
fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from settlesim.clients.rejections import Rejection
from settlesim.clients.replay.cases import ExpectedError


def yuan(fen: int) -> str:
    """17963 -> '179.63'."""
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


@dataclass(frozen=True)
class Diff:
    """One expected field that the answer does not match."""

    path: str
    expected: Any
    actual: Any

    @property
    def money(self) -> bool:
        return self.path.endswith("_fen")

    def show(self, value: Any) -> str:
        if value is None:
            return "absent"
        if self.money and isinstance(value, int) and not isinstance(value, bool):
            return f"{yuan(value)} yuan ({value} fen)"
        return str(value)


def compare(expected: dict[Any, Any], message: Message, path: str = "") -> list[Diff]:
    """Only the fields the case names; money exact to the fen."""
    diffs: list[Diff] = []
    for key, want in expected.items():
        fd = message.DESCRIPTOR.fields_by_name[key]
        at = f"{path}.{key}" if path else key
        have = getattr(message, key)
        if fd.is_repeated:
            pairs = list(want.items()) if isinstance(want, dict) else list(enumerate(want))
            if isinstance(want, list) and len(want) != len(have):
                diffs.append(Diff(f"{at}.length", len(want), len(have)))
            for index, element in pairs:
                if index >= len(have):
                    if isinstance(want, dict):
                        diffs.append(Diff(f"{at}[{index}]", "present", None))
                    continue
                diffs.extend(_compare_value(fd, element, have[index], f"{at}[{index}]"))
        elif want is None or (fd.has_presence and not message.HasField(key)):
            present = message.HasField(key)
            if want is None and present:
                diffs.append(Diff(at, None, _shown(fd, have)))
            elif want is not None and not present:
                diffs.append(Diff(at, want, None))
        else:
            diffs.extend(_compare_value(fd, want, have, at))
    return diffs


def _compare_value(fd: FieldDescriptor, want: Any, have: Any, at: str) -> list[Diff]:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return compare(want, have, at)
    if fd.type == FieldDescriptor.TYPE_ENUM:
        names = fd.enum_type.values_by_number
        have_name = names[have].name if have in names else have
        want_name = names[want].name if isinstance(want, int) and want in names else want
        return [] if want_name == have_name else [Diff(at, want_name, have_name)]
    if type(want) is not type(have) and not (isinstance(want, int) and isinstance(have, int)):
        return [Diff(at, want, have)]
    return [] if want == have else [Diff(at, want, have)]


def _shown(fd: FieldDescriptor, value: Any) -> Any:
    if isinstance(value, Message):
        return json_format.MessageToDict(value, preserving_proto_field_name=True)
    return value


def compare_error(want: ExpectedError, rejection: Rejection) -> list[Diff]:
    diffs = []
    if rejection.code != want.code:
        diffs.append(Diff("error.code", want.code, rejection.code))
    if want.reason and rejection.reason != want.reason:
        diffs.append(Diff("error.reason", want.reason, rejection.reason or "(none)"))
    fields = [f for f, _, _ in rejection.violations]
    for name in want.fields:
        if name not in fields:
            diffs.append(Diff("error.fields", name, ", ".join(fields) or "(no BadRequest)"))
    return diffs
