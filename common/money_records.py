"""One strict schema for the detail of a money record (a completed purse transaction in a terminal's log).

The terminal's writer (terminal/purse_flow.py) checks every outcome detail with `check_money_detail` before it
logs it, and the platform checks every uploaded one with the same function before it accounts anything, so a
detail is accepted or refused identically on both sides. docs/sync-protocol.md "Money records" describes each field.
Sans-I/O: pure functions over dicts.
"""

from __future__ import annotations

import json
import re

from common.sync_protocol import ProtocolError

PURCHASE, UNDO, LOAD = "pos.purchase", "pos.undo", "topup.load"
# How each completed purse transaction moves the card's balance.
MONEY_SIGN = {PURCHASE: -1, UNDO: 1, LOAD: 1}
# The card counter each kind uses (docs/card-application.md 5): purchases step the offline counter, loads
# (top-ups and cashier undos) the online counter.
COUNTER = {PURCHASE: "purchase", UNDO: "load", LOAD: "load"}
# The terminal kinds whose money records the platform accounts.
ACCOUNTING_KINDS = {PURCHASE: ("pos",), UNDO: ("pos",), LOAD: ("topup",)}
ALGORITHMS = ("AES128", "SM4")  # sam.interface.Algorithm names (tests/test_money_records.py keeps them equal)

U32 = 2**32 - 1
_HEX16 = re.compile(r"[0-9a-f]{16}\Z")  # an 8-byte MAC (mac8, docs/card-application.md 5.2)
_DATE = re.compile(r"[0-9]{8}\Z")
_TIME = re.compile(r"[0-9]{6}\Z")
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")

# key -> (type, check, meaning); every money record has all of COMMON, plus its kind's EXTRA.
COMMON = (
    "amount",
    "counter",
    "date",
    "time",
    "key_version",
    "algorithm",
    "intent_seq",
    "tac",
    "proof",
    "balance_after",
    "resolved_at_next_tap",
)
EXTRA_REQUIRED = {PURCHASE: ("tsn",), UNDO: ("purchase_seq",), LOAD: ()}
# A sale made in a cashier's shift carries its operator and batch, one in a meal period its period's name, one rung
# up on a price key its item (terminal/canteen.py); a till without [pos.operators] or meal periods leaves them out.
SALE_FIELDS = ("operator", "batch", "meal_period", "service_day")
# pin_verified: the holder's spending password was verified by the card for this sale; the TAC then covers it
# (type byte 86, docs/card-application.md 5.5), so the platform's TAC check proves the flag.
# A two-purse sale (docs/card-application.md 5.6) is a pos.purchase whose `amount` is the whole sale and whose `tac`,
# `counter` and `balance_after` are the cash purse's (the cash part = amount - subsidy_amount; its TAC is 16 zeros
# when that part is 0); the subsidy purse's part has these fields.
TWO_PURSE_FIELDS = ("subsidy_amount", "subsidy_counter", "subsidy_balance_after", "subsidy_tac", "policy")
EXTRA_OPTIONAL = {
    PURCHASE: (*SALE_FIELDS, "item", "pin_verified", *TWO_PURSE_FIELDS),
    UNDO: SALE_FIELDS,
    LOAD: ("action_id",),
}
# The subsidy purse's own records: an allowance loaded, an expired subsidy withdrawn (the whole balance).
SUBSIDY_LOAD, SUBSIDY_WITHDRAW, SUBSIDY_REFUND = "subsidy.load", "subsidy.withdraw", "subsidy.refund"
# allowance_no: the allowance's per-card number (card-application.md 5.6), which the load's TAC covers (its TSN field).
# subsidy.refund: the subsidy share of an undone two-purse sale given back (a subsidy load with allowance number 0,
# the TAC's TSN field 0), tied to the sale by purchase_seq, with the subsidy expiry the purse had at the sale.
SUBSIDY_EXTRA = {
    SUBSIDY_LOAD: ("allowance_id", "allowance_no", "expiry"),
    SUBSIDY_WITHDRAW: ("tsn",),
    SUBSIDY_REFUND: ("purchase_seq", "expiry"),
}
SUBSIDY_OPTIONAL = {SUBSIDY_LOAD: ("policy",), SUBSIDY_WITHDRAW: ("policy",), SUBSIDY_REFUND: SALE_FIELDS}


def _int(lo: int, hi: int):
    def check(v) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return f"must be an integer, got {type(v).__name__}"
        return None if lo <= v <= hi else f"= {v} is out of range {lo}..{hi}"

    return check


def _text(pattern: re.Pattern, what: str):
    def check(v) -> str | None:
        if not isinstance(v, str):
            return f"must be a string, got {type(v).__name__}"
        return None if pattern.match(v) else f"= {v[:40]!r} is not {what}"

    return check


def _bool(v) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false, got {type(v).__name__}"


def _algorithm(v) -> str | None:
    if isinstance(v, str) and v in ALGORITHMS:
        return None
    return f"= {str(v)[:20]!r} is not one of {', '.join(ALGORITHMS)}"


CHECKS = {
    "amount": _int(1, U32),
    "counter": _int(0, 0xFFFF),
    "date": _text(_DATE, "8 BCD digits YYYYMMDD"),
    "time": _text(_TIME, "6 BCD digits HHMMSS"),
    "key_version": _int(0, 255),
    "algorithm": _algorithm,
    "intent_seq": _int(1, 2**63 - 1),
    "tac": _text(_HEX16, "16 lowercase hex digits"),
    "proof": _text(_HEX16, "16 lowercase hex digits"),
    "balance_after": _int(0, U32),
    "resolved_at_next_tap": _bool,
    "tsn": _int(0, U32),
    "purchase_seq": _int(1, 2**63 - 1),
    "action_id": _text(_ID, "1-64 characters of [A-Za-z0-9._-]"),
    "operator": _text(re.compile(r"[0-9]{1,8}\Z"), "1-8 decimal digits"),
    "batch": _int(1, 999_999),
    "meal_period": _text(re.compile(r"[A-Za-z0-9_]{1,20}\Z"), "1-20 characters of [A-Za-z0-9_]"),
    "service_day": _text(re.compile(r"20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])\Z"), "a date YYYY-MM-DD"),
    "pin_verified": _bool,
    "item": _text(re.compile(r"[^\x00-\x1f\x7f]{1,24}\Z"), "1-24 printable characters"),
    "subsidy_amount": _int(0, U32),
    "subsidy_counter": _int(0, 0xFFFF),
    "subsidy_balance_after": _int(0, U32),
    "subsidy_tac": _text(_HEX16, "16 lowercase hex digits"),
    "policy": _text(re.compile(r"(subsidy_first|cash_first)\Z"), "subsidy_first or cash_first"),
    "allowance_id": _text(_ID, "1-64 characters of [A-Za-z0-9._-]"),
    "allowance_no": _int(1, 0xFFFF),
    "expiry": _text(_DATE, "8 BCD digits YYYYMMDD"),
}


def check_money_detail(kind: str, detail) -> dict:
    """Return `detail` (a dict, or its JSON text) if it is a valid money record of `kind`; else ProtocolError."""
    where = f"{kind} detail"
    if kind not in MONEY_SIGN:
        raise ProtocolError(f"{kind!r:.40} is not a money record kind ({', '.join(MONEY_SIGN)})")
    if isinstance(detail, str):
        try:
            detail = json.loads(detail)
        except (json.JSONDecodeError, RecursionError):
            raise ProtocolError(f"{where} is not JSON") from None
    if not isinstance(detail, dict):
        raise ProtocolError(f"{where} must be a JSON object")
    required = COMMON + EXTRA_REQUIRED[kind]
    allowed = set(required) | set(EXTRA_OPTIONAL[kind])
    missing = [k for k in required if k not in detail]
    if missing:
        raise ProtocolError(f"{where}: field {missing[0]!r} is missing")
    unknown = sorted(k for k in detail if k not in allowed)
    if unknown:
        raise ProtocolError(f"{where}: field {unknown[0][:40]!r} is not part of a {kind} record")
    for k, v in detail.items():
        problem = CHECKS[k](v)
        if problem:
            raise ProtocolError(f"{where}: field {k!r} {problem}")
    present = [k for k in TWO_PURSE_FIELDS if k in detail]
    if present and (len(present) != len(TWO_PURSE_FIELDS) or detail["subsidy_amount"] > detail["amount"]):
        raise ProtocolError(f"{where}: a two-purse sale has all of {', '.join(TWO_PURSE_FIELDS)}, subsidy <= amount")
    return detail


def _check_fields(where: str, detail, required: tuple[str, ...], optional: tuple[str, ...]) -> dict:
    if isinstance(detail, str):
        try:
            detail = json.loads(detail)
        except (json.JSONDecodeError, RecursionError):
            raise ProtocolError(f"{where} is not JSON") from None
    if not isinstance(detail, dict):
        raise ProtocolError(f"{where} must be a JSON object")
    missing = [k for k in required if k not in detail]
    if missing:
        raise ProtocolError(f"{where}: field {missing[0]!r} is missing")
    unknown = sorted(k for k in detail if k not in set(required) | set(optional))
    if unknown:
        raise ProtocolError(f"{where}: field {unknown[0][:40]!r} is not part of this record")
    for k, v in detail.items():
        problem = CHECKS[k](v)
        if problem:
            raise ProtocolError(f"{where}: field {k!r} {problem}")
    return detail


def check_subsidy_detail(kind: str, detail) -> dict:
    """A subsidy purse record (subsidy.load, subsidy.withdraw): the money record's common fields plus its own."""
    if kind not in SUBSIDY_EXTRA:
        raise ProtocolError(f"{kind!r:.40} is not a subsidy record kind ({', '.join(SUBSIDY_EXTRA)})")
    return _check_fields(f"{kind} detail", detail, COMMON + SUBSIDY_EXTRA[kind], SUBSIDY_OPTIONAL[kind])


def two_purse_parts(detail: dict) -> tuple[int, int]:
    """(subsidy part, cash part) of a pos.purchase detail; a cash-only sale is (0, amount)."""
    subsidy = detail.get("subsidy_amount", 0)
    return subsidy, detail["amount"] - subsidy


def balance_before(kind: str, detail: dict) -> int:
    return detail["balance_after"] - MONEY_SIGN[kind] * detail["amount"]


# ---- card_action.failed: the terminal reports that the card refused a queued card action --------------------

CARD_ACTION_FAILED = "card_action.failed"
_SW = re.compile(r"[0-9A-F]{4}\Z")
_REASON = re.compile(r"[a-z0-9_]{1,40}\Z")


def check_action_failed_detail(detail) -> dict:
    """{action_id, reason_code, sw}: sw is the card's status word as 4 uppercase hex digits, or null when the card
    was not asked (e.g. the amount was over the terminal's limit)."""
    where = f"{CARD_ACTION_FAILED} detail"
    if isinstance(detail, str):
        try:
            detail = json.loads(detail)
        except (json.JSONDecodeError, RecursionError):
            raise ProtocolError(f"{where} is not JSON") from None
    if not isinstance(detail, dict):
        raise ProtocolError(f"{where} must be a JSON object")
    if set(detail) != {"action_id", "reason_code", "sw"}:
        raise ProtocolError(
            f"{where} must have exactly action_id, reason_code and sw (has "
            f"{', '.join(sorted(str(k)[:20] for k in detail))})"
        )
    for key, check in (
        ("action_id", _text(_ID, "1-64 characters of [A-Za-z0-9._-]")),
        ("reason_code", _text(_REASON, "1-40 characters of [a-z0-9_]")),
    ):
        problem = check(detail[key])
        if problem:
            raise ProtocolError(f"{where}: field {key!r} {problem}")
    sw = detail["sw"]
    if sw is not None and not (isinstance(sw, str) and _SW.match(sw)):
        raise ProtocolError(f"{where}: field 'sw' must be 4 uppercase hex digits or null")
    return detail
