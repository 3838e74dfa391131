"""A settle's answer encoded once: the bytes the ledger stores are the bytes gRPC sends.

The settle closure must have the answer's bytes in the ledger's transaction (its stored row), so
it encodes the whole SettleVisitResponse there; the stored answer is the response's only field,
`settlement`, cut out of those bytes (`settlement_bytes`), and SettleVisit's response serializer
(`EncodedResponses.serialize`) hands the same bytes to gRPC, and so to the call journal, which
keeps what gRPC sends, instead of encoding the message again. A response not encoded here (a
replay, a fault's altered copy, one evicted from the table) is encoded as usual: the table only
saves work; no answer depends on it. A response is never changed once its settle returned it.
"""

from __future__ import annotations

from typing import Any

KEPT = 128  # responses encoded and not yet sent: gRPC sends each in the step its settle returned


class EncodedResponses:
    """Responses encoded by their settle, by identity, until gRPC sends them. One per
    SettlementCore, used on its event loop only."""

    __slots__ = ("_by_id", "kept")

    def __init__(self, kept: int = KEPT) -> None:
        # id -> (the response, its bytes): the entry keeps the response alive, so no other
        # object can have its id while the entry is here
        self._by_id: dict[int, tuple[Any, bytes]] = {}
        self.kept = kept

    def keep(self, response: Any, data: bytes) -> None:
        """`data`, the bytes of `response`, to be sent instead of encoding it again."""
        by_id = self._by_id
        by_id[id(response)] = (response, data)
        if len(by_id) > self.kept:  # answers made and never sent (a door that reads messages)
            del by_id[next(iter(by_id))]

    def serialize(self, response: Any) -> bytes:
        """gRPC's response serializer: the bytes the settle made, else the message encoded."""
        entry = self._by_id.pop(id(response), None)
        return response.SerializeToString() if entry is None else entry[1]


def settlement_bytes(response: bytes) -> bytes:
    """The encoded `settlement` of an encoded SettleVisitResponse that has no other field (a new
    settle's: `replayed` is false, not on the wire): what follows the field's one-byte tag
    (field 1, length-delimited) and its length, a varint (7 bits a byte, the last byte's high
    bit clear)."""
    if response[0] != 0x0A:
        raise ValueError("not an encoded SettleVisitResponse whose first field is its settlement")
    end = 1
    while response[end] & 0x80:
        end += 1
    return response[end + 1 :]
