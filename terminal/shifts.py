"""Cashier sign-in and sign-out (签到/签退): who is selling, in which batch. Sans-I/O.

A sign-in opens a batch (a shift) with the next batch number of this terminal; every sale and undo until the
sign-out carries the operator and the batch (docs/event-log.md). The open shift is the log's newest sign-in without
a sign-out after it, so it survives a restart. The password is checked against its hash and goes nowhere else.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from common.config import Operator
from common.passwords import verify_password

SIGN_IN, SIGN_OUT = "pos.sign_in", "pos.sign_out"
SHIFT_KINDS = (SIGN_IN, SIGN_OUT)
MAX_BATCH = 999_999  # printed as 6 digits; after it the numbering starts again at 1


@dataclass(frozen=True)
class Shift:
    operator: str
    name: str
    batch: int
    opened_at: dt.datetime


class ShiftRefused(Exception):
    def __init__(self, reason_code: str, message: str):
        super().__init__(message)
        self.reason_code, self.message = reason_code, message


def open_shift(last_kind: str | None, last_detail: dict[str, Any], last_time: dt.datetime | None) -> Shift | None:
    """The shift open now, from the newest sign-in or sign-out record (None: nobody signed in)."""
    if last_kind != SIGN_IN or last_time is None:
        return None
    return Shift(last_detail["operator"], last_detail.get("name", ""), last_detail["batch"], last_time)


def next_batch(last_batch: int) -> int:
    return last_batch % MAX_BATCH + 1


def sign_in(operators: dict[str, Operator], current: Shift | None, number: str, password: str) -> Operator:
    """The operator signing in, or ShiftRefused naming why; the same message whether the number or the password
    is wrong, so the keypad cannot be used to find operator numbers."""
    if not operators:
        raise ShiftRefused("no_operators", "Sign-in is not set up on this till: add [pos.operators] to firmware.toml")
    if current is not None:
        raise ShiftRefused(
            "shift_open",
            f"Operator {current.operator} is signed in (batch {current.batch:06d}): sign out first (o)",
        )
    operator = operators.get(number)
    # Hash even for an unknown number, so the answer takes as long either way.
    stored = operator.password_hash if operator is not None else next(iter(operators.values())).password_hash
    if not verify_password(stored, password) or operator is None:
        raise ShiftRefused("bad_operator", "Operator number or password wrong: sign in again")
    return operator


def require_shift(operators: dict[str, Operator], current: Shift | None) -> Shift | None:
    """The shift a sale is made in; ShiftRefused when operators are configured and nobody signed in."""
    if operators and current is None:
        raise ShiftRefused("no_operator", "No cashier signed in: sign in first (s NUMBER PASSWORD)")
    return current
