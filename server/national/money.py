"""Money at the national door: decimal yuan (元) in the JSON, integer fen (分) inside.

The envelope is parsed with every JSON number as a Decimal (never a float), so
179.63 arrives as Decimal("179.63") and becomes 17963 fen exactly; an amount with
more than two decimal places is refused, not rounded. Answers carry Decimal yuan
written as JSON numbers with two places (simplejson's use_decimal).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from settlesim.server.rules.reasons import Reason, Refusal

FEN = Decimal("0.01")
# Bounds well inside int64 fen, above any visit (validation.MAX_VISIT_TOTAL_FEN is 1e10 fen).
MAX_YUAN = Decimal(10) ** 14


def _decimal(value: object, field: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, str)):
        raise Refusal(Reason.FIELD_INVALID, f"{field} must be a decimal number", field=field)
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise Refusal(
            Reason.FIELD_INVALID, f"{field} must be a decimal number, not {value!r}", field=field
        ) from None
    if not number.is_finite() or abs(number) >= MAX_YUAN:
        raise Refusal(Reason.FIELD_INVALID, f"{field} is out of range: {value!r}", field=field)
    return number


def yuan_to_fen(value: object, field: str) -> int:
    """Decimal yuan ("179.63", 179.63 parsed as Decimal, 180) -> fen, exactly."""
    number = _decimal(value, field)
    fen = number * 100
    if fen != fen.to_integral_value():
        raise Refusal(Reason.FIELD_INVALID, f"{field} has more than 2 decimal places: {value!r}", field=field)
    return int(fen)


def whole_count(value: object, field: str) -> int:
    """cnt 数量: the contract counts whole catalog units; 2.0000 is 2, 0.5 is refused."""
    number = _decimal(value, field)
    if number != number.to_integral_value():
        raise Refusal(
            Reason.FIELD_INVALID, f"{field} must be a whole number of units: {value!r}", field=field
        )
    return int(number)


def fen_to_yuan(fen: int) -> Decimal:
    """fen -> Decimal yuan with two places (17963 -> Decimal("179.63"))."""
    return (Decimal(fen) / 100).quantize(FEN)


def ratio(bp: int) -> Decimal:
    """Basis points -> a fraction with four places (selfpay_prop, 1000 -> 0.1000)."""
    return (Decimal(bp) / 10_000).quantize(Decimal("0.0001"))
