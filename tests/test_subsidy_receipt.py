"""The receipt of a two-purse sale (docs/canteen.md "Receipts", card-application.md 5.6): the split the card's MAC2
covers (subsidy paid, cash paid), both TACs, and a subsidy balance only when a load's MAC3 on the same tap verified
it; the cash balance of a sale is the card's claim and is never printed. python-escpos Dummy, bytes interpreted."""

from __future__ import annotations

import datetime as dt
import io

from escpos.printer import Dummy

from common.config import load_config
from sam.interface import KeyUsage
from simulator.card import SubsidyPurse
from terminal.app import Terminal
from terminal.blacklist import Blacklist
from terminal.event_log import EventLog
from terminal.keypad import Charge
from terminal.outputs import ConsoleOutputs
from terminal.subsidy_protocol import Allowance
from tests.escpos_render import interpret
from tests.support import ALL_USAGES, make_card_v2, make_sam
from tests.test_canteen import local, sign_in, tap, write_config

ASN = bytes.fromhex("1000000000004821")


def two_purse_receipts(tmp_path, printer, collect: bool, subsidy: int = 0, cash: int = 10_000):
    """Two sales on a card with a subsidy purse: the first tap collects a 30.00 allowance when `collect`."""
    sam = make_sam(usages=(*ALL_USAGES, KeyUsage.SUBSIDY))
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = load_config(write_config(tmp_path))
    term = Terminal(
        config,
        sam,
        EventLog.open(config.terminal.database, config.terminal.id),
        Blacklist.open(config.terminal.blacklist),
        ConsoleOutputs(config.terminal.name, io.StringIO(), color=False),
        printer=printer,
    )
    card = make_card_v2(sam, opening_balance=cash, asn=ASN)
    card.state.subsidy = SubsidyPurse(subsidy, bytes.fromhex("20261231") if subsidy else bytes(4), 100_000)
    a = Allowance("2026-11.E1001", ASN.hex().upper(), 3_000, dt.date(2026, 11, 30), "subsidy_first")
    term.purse.pending_allowances = lambda asn: [a] if collect else []
    try:
        sign_in(term, local(23, 11))
        first = tap(term, card, Charge(1200, "Set meal A"), local(23, 12, 5))
        assert first.accepted, first.message
        return first, card
    finally:
        term.event_log.close()


def texts(out: bytes) -> list[str]:
    return [t for t, _ in interpret(out)]


def test_a_sale_that_collected_prints_the_split_and_the_verified_subsidy_balance(tmp_path):
    printer = Dummy()
    decision, card = two_purse_receipts(tmp_path, printer, collect=True)
    lines = texts(printer.output)
    assert lines[:4] == ["Test pos", "Terminal 000000000101", "-" * 32, "PAYMENT"]
    assert "Amount                     12.00" in lines
    assert "Subsidy paid               12.00" in lines and "Cash paid                   0.00" in lines
    assert "Subsidy balance            18.00" in lines and card.state.subsidy.balance == 1_800
    assert not any(t.startswith("Balance") for t in lines)  # the cash balance is the card's claim
    assert f"Subsidy TAC             {decision.detail['subsidy_tac'][:8].upper()}" in lines
    assert not any(t.startswith("TAC ") for t in lines)  # no cash share: its TAC field is zeros, not printed
    assert lines[-1] == "--cut--"


def test_a_split_sale_without_a_collection_prints_both_tacs_and_no_balance(tmp_path):
    printer = Dummy()
    decision, card = two_purse_receipts(tmp_path, printer, collect=False, subsidy=500)
    lines = texts(printer.output)
    assert "Subsidy paid                5.00" in lines and "Cash paid                   7.00" in lines
    assert (card.state.subsidy.balance, card.state.purse.balance) == (0, 10_000 - 700)
    assert not any("balance" in t.lower() for t in lines)  # nothing this tap verified a balance of
    assert f"TAC                     {decision.detail['tac'][:8].upper()}" in lines
    assert f"Subsidy TAC             {decision.detail['subsidy_tac'][:8].upper()}" in lines
    assert "subsidy_balance_verified" not in decision.detail
