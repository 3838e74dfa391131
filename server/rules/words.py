"""The trace's words for numbers and days: amounts in yuan, ratios in percent, dates. A settle's
trace writes 25-35 of them, and deductibles, caps, 0, common prices, the world's ratios and its
dates recur: each text is made once and remembered (at most a bounded number of them)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from datetime import date
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Remembered(dict[K, str], Generic[K]):
    """Texts of values, each made once: a remembered one is the dict's own lookup (no call of
    Python). At most `kept` are remembered; past it, a value's text is made each time."""

    __slots__ = ("kept", "make")

    def __init__(self, make: Callable[[K], str], kept: int) -> None:
        super().__init__()
        self.make, self.kept = make, kept

    def __missing__(self, value: K) -> str:
        text = self.make(value)
        if len(self) < self.kept:
            self[value] = text
        return text


_CENTS = tuple(f".{cents:02d}" for cents in range(100))  # ".00" ... ".99"


def yuan(amount: int) -> str:
    """A fen amount as yuan for people, e.g. 17963 -> '179.63'. (The fen from a table: a format
    spec such as `:02d` is parsed at every call, half of what a new amount's text costs.)"""
    if amount >= 0:
        return f"{amount // 100}{_CENTS[amount % 100]}"
    return f"-{-amount // 100}{_CENTS[-amount % 100]}"


def percentage(bp: int) -> str:
    """Basis points as a percentage for people, e.g. 7500 -> '75%', 1250 -> '12.5%'."""
    return f"{bp / 100:g}%"


FEN_TEXTS: Remembered[int] = Remembered(yuan, 100_000)  # at most ~14 MB
PERCENT_TEXTS: Remembered[int] = Remembered(percentage, 100_000)
DAY_TEXTS: Remembered[date] = Remembered(date.isoformat, 100_000)  # the world's dates (validity, since)

fen = FEN_TEXTS.__getitem__  # yuan(amount), remembered
percent = PERCENT_TEXTS.__getitem__  # percentage(bp), remembered
day_text = DAY_TEXTS.__getitem__  # day.isoformat(), remembered: for the world's dates, not visits'
