"""Amounts of purse money: integers in fen (0.01 yuan) inside, "12.50" on screens and in commands."""

from __future__ import annotations

import re

from common.errors import UserError

_AMOUNT = re.compile(r"^\d{1,8}(\.\d{1,2})?$")


def parse_yuan(text: str, what: str = "amount") -> int:
    """'12.5' -> 1250 fen. Raises UserError naming `what` for anything else (no negatives, at most 2 decimals)."""
    text = text.strip()
    if not _AMOUNT.match(text):
        raise UserError(f"{what} {text!r} is not an amount in yuan; write e.g. 12.50")
    whole, _, cents = text.partition(".")
    return int(whole) * 100 + int(cents.ljust(2, "0") or 0)


def format_yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"
