"""Receipts on an ESC/POS printer (python-escpos over USB, serial or the network).

`receipt_lines` decides what a receipt says (sans-I/O, from the decision as logged); `print_receipt` lays the lines
out on any python-escpos printer (tests use escpos.printer.Dummy and check the bytes); `open_printer` is the adapter
for [printer]. A balance is printed only where this terminal verified it with a MAC (a refund's or a top-up's; a
purchase's balance is the card's claim, docs/card-application.md 5.2). A two-purse sale (5.6) prints its split
(MAC2 covers it) and a subsidy balance only when an allowance collected on the same tap verified it (MAC3). The
card number is masked to its last four digits, the TAC shortened to its first 8 hex digits (enough to find the
record; the whole TAC is in the log). Printing never decides anything: a printer fault is logged and the money
record stands.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from common.config import Config, PrinterSection
from common.money import format_yuan
from terminal.decision import Decision

TITLE = {"pos.purchase": "PAYMENT", "pos.undo": "REFUND", "topup.load": "TOP-UP"}
VERIFIED_BALANCE = frozenset({"pos.undo", "topup.load"})  # a MAC this terminal checked covers their balance_after


@dataclass(frozen=True)
class Line:
    text: str
    bold: bool = False
    big: bool = False
    center: bool = False


def mask_card(asn: str) -> str:
    return "**** " + asn[-4:] if asn else "****"


def _pair(label: str, value: str, width: int) -> Line:
    gap = max(1, width - len(label) - len(value))
    return Line(f"{label}{' ' * gap}{value}"[: max(width, len(label) + 1 + len(value))])


def receipt_lines(decision: Decision, config: Config, local: dt.datetime) -> list[Line]:
    """What a receipt of an accepted money decision says, `width` characters a line; [] for anything else."""
    if not decision.accepted or decision.kind not in TITLE or decision.reason_code == "unrecorded":
        return []
    d, t, width = decision.detail, config.terminal, config.printer.width
    lines = [
        Line(t.name[:width], bold=True, center=True),
        Line(f"Terminal {t.id}", center=True),
        Line("-" * width),
        Line(TITLE[decision.kind], bold=True, big=True, center=True),
        _pair("Time", f"{local:%Y-%m-%d %H:%M:%S}", width),
        _pair("Card", mask_card(decision.asn or ""), width),
    ]
    if d.get("item"):
        lines.append(_pair("Item", str(d["item"]), width))
    if d.get("meal_period"):
        lines.append(_pair("Meal", str(d["meal_period"]).capitalize(), width))
    lines.append(_pair("Amount", format_yuan(d["amount"]), width))
    two_purse = decision.kind == "pos.purchase" and isinstance(d.get("subsidy_amount"), int)
    if two_purse:
        # The split is covered by MAC2 (card-application.md 5.6); the balances are the card's claim but for a subsidy
        # balance a load's MAC3 verified on the same tap (subsidy_balance_verified).
        lines.append(_pair("Subsidy paid", format_yuan(d["subsidy_amount"]), width))
        lines.append(_pair("Cash paid", format_yuan(d["amount"] - d["subsidy_amount"]), width))
        if isinstance(d.get("subsidy_balance_verified"), int):
            lines.append(_pair("Subsidy balance", format_yuan(d["subsidy_balance_verified"]), width))
    two_purse_undo = decision.kind == "pos.undo" and isinstance(d.get("subsidy_refund"), int)
    if two_purse_undo:
        # Each share back into its own purse (card-application.md 5.6); both balances are MAC3-verified.
        lines.append(_pair("Cash refunded", format_yuan(d["cash_refund"]), width))
        lines.append(_pair("Subsidy refunded", format_yuan(d["subsidy_refund"]), width))
    if decision.kind in VERIFIED_BALANCE and isinstance(d.get("balance_after"), int):
        lines.append(_pair("Balance", format_yuan(d["balance_after"]), width))
    if d.get("operator"):
        lines.append(_pair("Operator", f"{d['operator']} / batch {d['batch']:06d}", width))
    if "tsn" in d:
        lines.append(_pair("TSN", str(d["tsn"]), width))
    if "tac" in d and not (two_purse and d["amount"] == d["subsidy_amount"]):
        lines.append(_pair("TAC", str(d["tac"])[:8].upper(), width))
    if two_purse and d["subsidy_amount"]:
        lines.append(_pair("Subsidy TAC", str(d["subsidy_tac"])[:8].upper(), width))
    if two_purse_undo and "subsidy_tac" in d:
        lines.append(_pair("Subsidy balance", format_yuan(d["subsidy_balance_after"]), width))
        lines.append(_pair("Subsidy TAC", str(d["subsidy_tac"])[:8].upper(), width))
    if "seq" in d:
        lines.append(_pair("Record", str(d["seq"]), width))
    lines += [Line("-" * width), Line("Thank you", center=True)]
    return lines


def print_receipt(printer: Any, lines: list[Line]) -> None:
    """Lay `lines` out on a python-escpos printer and cut the paper."""
    for line in lines:
        printer.set(
            align="center" if line.center else "left",
            bold=line.bold,
            double_height=line.big,
            double_width=line.big,
            normal_textsize=not line.big,
        )
        printer.text(line.text + "\n")
    printer.set(align="left", bold=False, normal_textsize=True)
    printer.cut()


def open_printer(section: PrinterSection) -> Any:
    """The python-escpos printer [printer] names, or None for driver "none"."""
    from escpos import printer as escpos_printer  # type: ignore[import-untyped]

    if section.driver == "usb":
        printer = escpos_printer.Usb(section.usb_vendor, section.usb_product)
    elif section.driver == "serial":
        printer = escpos_printer.Serial(section.device, baudrate=section.baudrate)
    elif section.driver == "network":
        printer = escpos_printer.Network(section.host, port=section.port, timeout=5)
    else:
        return None
    printer.open()  # now, so a wrong address or device is reported at start (python-escpos opens lazily)
    return printer


def reopen_later(printer: Any) -> None:
    """After a failed receipt (printer restarted, cable out): close it so the next receipt opens it afresh."""
    try:
        printer.close()
    except Exception:  # noqa: BLE001 - already broken; the next open reports what is wrong
        pass
    printer.device = False  # python-escpos: the next use opens the device again
