"""The spending password (消费密码, docs/card-application.md 5.5): VERIFY on the simulated card byte for byte, the
secured set / unblock under the enterprise's admin key, the DEBIT flag bound into the TAC, the till's keypad flow over
a real pty with pyserial, and the PIN never reaching a log, the event log or the SQLite files."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common import transactions as tx
from sam import purse_crypto as pc
from simulator.inprocess import InProcessReader
from terminal import spending_pin as sp
from terminal.authenticate import select_card
from terminal.rekey import AdminChannel
from tests.support import ENTERPRISE, make_card, make_sam
from tests.test_pos_terminal import Running, SerialPad

SELECT_V1 = bytes.fromhex("00A4040009F04F4E45434152440100")
H = bytes.fromhex


@pytest.fixture
def sam():
    return make_sam()


def selected(sam, pin="1234", **kw):
    card = make_card(sam, spending_pin=pin, opening_balance=10_000, **kw)
    card.transmit(SELECT_V1)
    return card


def test_pin_block_is_iso_9564_format_2():
    assert sp.parse_pin("1234").block() == H("241234FFFFFFFFFF")
    assert sp.parse_pin("123456789012").block() == H("2C123456789012FF")
    assert bytes(sp.verify_command(sp.parse_pin("0007").block())) == H("0020008008240007FFFFFFFFFF")
    assert sp.status_command() == H("00200080")
    assert sp.parse_pin_block(H("241234FFFFFFFFFF")) == "1234"
    for bad in ("241234FFFFFFFFF0", "341234FFFFFFFFFF", "2312 3FFFFFFFFFFF", "2D1234FFFFFFFFFF", "24123AFFFFFFFFFF"):
        assert sp.parse_pin_block(H(bad)) is None


def test_verify_conversation_right_wrong_blocked_unblock(sam):
    card = selected(sam)
    t = card.transmit
    assert t(H("00200080")) == H("63C3")  # case 1: 3 tries, nothing counted
    assert t(H("0020008008241111FFFFFFFFFF")) == H("63C2")
    assert t(H("0020008008241234FFFFFFFFFF")) == H("9000")  # right: counter back to 3
    assert card.state.pin_tries == 3
    assert t(H("00200080")) == H("9000")  # verified in this session
    assert t(H("0020008008249999FFFFFFFFFF")) == H("63C2")  # a wrong try ends the verification
    assert t(H("0020008008249999FFFFFFFFFF")) == H("63C1")
    assert t(H("0020008008249999FFFFFFFFFF")) == H("63C0")
    assert t(H("0020008008241234FFFFFFFFFF")) == H("6983")  # blocked: the right PIN is not even compared
    assert t(H("00200080")) == H("6983")
    assert t(H("0020008008241234FFFFFFFF0F")) == H("6983")
    # the card office unblocks it under the enterprise's UPDATE key
    info = select_card(t, ENTERPRISE)
    AdminChannel(t, sam, info).unblock_spending_pin()
    assert card.state.pin_tries == 3 and card.state.pin == "1234"
    assert t(H("0020008008241234FFFFFFFFFF")) == H("9000")


def test_verify_refusals(sam):
    card = selected(sam)
    t = card.transmit
    assert t(H("0020008008241234FFFFFFFF0F")) == H("6A80")  # not a PIN block: not counted
    assert card.state.pin_tries == 3
    assert t(H("002000010824 1234FFFFFFFFFF".replace(" ", ""))) == H("6A86")
    assert t(H("0020008004241234FF")) == H("6700")
    no_pin = selected(sam, pin=None)
    assert no_pin.transmit(H("00200080")) == H("6984")
    assert no_pin.transmit(H("0020008008241234FFFFFFFFFF")) == H("6984")
    fresh = make_card(sam, spending_pin="1234")
    assert fresh.transmit(H("00200080")) == H("6986")  # nothing selected


def test_verification_ends_at_select_and_power_off_and_is_used_by_one_debit(sam):
    card = selected(sam)
    t = card.transmit
    assert t(H("0020008008241234FFFFFFFFFF")) == H("9000")
    t(SELECT_V1)
    assert t(H("00200080")) == H("63C3")
    assert t(H("0020008008241234FFFFFFFFFF")) == H("9000")
    card.power_off()
    card.power_on()
    t(SELECT_V1)
    assert t(H("00200080")) == H("63C3")


def test_set_pin_is_enciphered_and_resets_the_counter(sam):
    card = selected(sam, pin=None)
    t = card.transmit
    sent = []

    def spy(apdu):
        sent.append(bytes(apdu))
        return t(apdu)

    info = select_card(spy, ENTERPRISE)
    AdminChannel(spy, sam, info).set_spending_pin(sp.parse_pin("864209"))
    assert card.state.pin == "864209" and card.state.pin_tries == 3
    change = next(a for a in sent if a[:4] == H("84240080"))
    assert change[4] == 0x18 and len(change) == 5 + 0x18
    assert b"864209" not in b"".join(sent) and H("26864209") not in b"".join(sent)  # never in clear
    # replayed: no fresh challenge, refused
    assert t(change) == H("6982")


@given(st.binary(max_size=16))
def test_pin_parser_parses_or_raises_its_own_error(typed):
    try:
        pin = sp.parse_pin(typed)
    except sp.PinFormatError as exc:
        # one of two fixed sentences: nothing of what was typed is repeated
        assert str(exc) in (
            "the spending password is digits only: type it again",
            "the spending password has 4 to 12 digits: type it again",
        )
        return
    assert typed.isdigit() and 4 <= len(typed) <= 12
    block = pin.block()
    assert sp.parse_pin_block(bytes(block)) == typed.decode()
    pin.wipe()
    assert len(pin) == 0


@given(st.binary(min_size=0, max_size=10))
def test_verify_answer_parser_is_total(rapdu):
    answer = sp.parse_verify(rapdu)
    assert answer.state in ("verified", "wrong", "blocked", "not_set", "refused")
    if answer.state == "wrong":
        assert rapdu[0] == 0x63 and answer.tries_left == rapdu[1] & 0x0F <= 3


@given(st.binary(min_size=8, max_size=8))
def test_card_and_terminal_read_pin_blocks_alike(block):
    from simulator.card import pin_block_digits

    assert pin_block_digits(block) == sp.parse_pin_block(block)


# --- the till: the holder types the PIN on a serial keypad (pyserial over a real pty) -------------------------


def pin_till(tmp_path, sam, reader, pad, pin_above=5000):
    running = Running(tmp_path, sam, "pos", reader, "", keypad=pad.keypad)
    pos = running.term.config.pos
    running.term.config = dataclasses.replace(running.term.config, pos=dataclasses.replace(pos, pin_above=pin_above))
    running.term.purse.config = running.term.config
    return running


def test_till_asks_the_pin_above_the_threshold_and_never_logs_it(tmp_path, sam, caplog):
    caplog.set_level(logging.DEBUG)
    card = make_card(sam, spending_pin="2468", opening_balance=20_000)
    reader, pad = InProcessReader(), SerialPad()
    pos = pin_till(tmp_path, sam, reader, pad)
    try:
        pad.press(b"60.00\r")
        assert pos.shows("Pay 60.00: please tap your card")
        reader.tap(card)
        assert pos.shows("spending password (3 tries left)")
        pad.press(b"13")
        assert pos.shows("spending password ** (3 tries left)")
        pad.press(b"57\r")
        assert pos.shows("Wrong password: 2 tries left")
        pad.press(b"2468\r")
        assert pos.shows("Paid 60.00")
        reader.remove()
        pad.press(b"20.00\r")  # below the threshold: no PIN asked
        assert pos.shows("Pay 20.00")
        reader.tap(card)
        assert pos.shows("Paid 20.00")
        reader.remove()
    finally:
        events = pos.finish()
        pad.close()
    assert card.state.purse.balance == 20_000 - 6000 - 2000
    purchases = [e for e in events if e.kind == "pos.purchase"]
    assert [e.detail.get("pin_verified") for e in purchases] == [True, None]
    # the TAC of the PIN sale covers the flag (type byte 86): the platform's check proves it
    rec = card.state.purse.records[-2]
    expected = pc.tac(
        card.state.algorithm,
        card.state.purse.tac_key,
        amount=6000,
        tx_type=tx.PURCHASE_WITH_PIN_TAC,
        terminal_id=H("000000000101"),
        tsn=rec["tsn"],
        date=H(rec["date"]),
        time=H(rec["time"]),
        counter=rec["counter"],
        balance_after=rec["balance_after"],
    )
    assert rec["tac"] == expected.hex() == purchases[0].detail["tac"]
    # the wrong try before the right one is logged, with the card and the tries left, never the password
    wrong = [r.getMessage() for r in caplog.records if "event=pin.wrong" in r.getMessage()]
    assert len(wrong) == 1 and f"asn={card.state.asn.hex().upper()}" in wrong[0] and "tries_left=2" in wrong[0]
    # nowhere: not in the logs, the event log or any SQLite file (or its WAL)
    secrets = [b"2468", b"1357", H("242468FFFFFFFFFF"), b"242468ffffffffff", b"242468FFFFFFFFFF"]
    assert not any(s.decode("latin-1") in caplog.text for s in secrets)
    assert "2468" not in pos.screen.getvalue() and "1357" not in pos.screen.getvalue()
    files = [p for p in Path(tmp_path).rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in files)
    for p in files:
        if p.suffix in (".db", ".db-wal", ".db-journal", ".log") or p.name.endswith(("-wal", "-shm")):
            data = p.read_bytes()
            assert not any(s in data for s in secrets), p


def test_blocked_pin_refuses_the_sale_and_cashier_can_cancel(tmp_path, sam):
    card = make_card(sam, spending_pin="2468", opening_balance=20_000)
    card.state.pin_tries = 0
    other = make_card(sam, spending_pin="2468", opening_balance=20_000)
    reader, pad = InProcessReader(), SerialPad()
    pos = pin_till(tmp_path, sam, reader, pad)
    try:
        pad.press(b"60.00\r")
        assert pos.shows("Pay 60.00")
        reader.tap(card)
        assert pos.shows("Spending password blocked: nothing charged. Unblock it at the card office")
        reader.remove()
        pad.press(b"60.00\r")
        assert wait_count(pos, "Pay 60.00: please tap your card", 2)
        reader.tap(other)
        assert pos.shows("spending password (3 tries left)")
        pad.press(b"24\x1b")  # Esc: the cashier cancels
        assert pos.shows("Spending password not entered: cancelled, nothing charged")
        reader.remove()
    finally:
        events = pos.finish()
        pad.close()
    assert card.state.purse.balance == other.state.purse.balance == 20_000
    assert [(e.kind, e.reason_code) for e in events] == [("pos.deny", "pin_blocked"), ("pos.deny", "pin_cancelled")]


def test_card_pulled_after_verify_before_debit_charges_nothing_and_asks_again(tmp_path, sam):
    card = make_card(sam, spending_pin="2468", opening_balance=20_000)
    reader, pad = InProcessReader(), SerialPad()
    pos = pin_till(tmp_path, sam, reader, pad)
    try:
        pad.press(b"60.00\r")
        assert pos.shows("Pay 60.00")
        # SELECT v2 (6A 82), SELECT v1, VERIFY status, VERIFY: the card leaves before INITIALIZE
        reader.tap(card, tear_after=4)
        assert pos.shows("spending password (3 tries left)")
        pad.press(b"2468\r")
        assert pos.shows("tap again")
        assert card.state.purse.balance == 20_000 and not card.pin_verified
        reader.tap(card)
        assert wait_count(pos, "spending password (3 tries left)", 2)
        pad.press(b"2468\r")
        assert pos.shows("Paid 60.00")
        reader.remove()
    finally:
        events = pos.finish()
        pad.close()
    assert card.state.purse.balance == 14_000
    assert [e.kind for e in events] == ["pos.purchase.intent", "pos.purchase"]


def wait_count(pos, text, n):
    from tests.test_pos_terminal import wait_for

    return wait_for(lambda: pos.screen.getvalue().count(text) >= n)


def test_flagged_debit_without_verify_is_refused_by_the_card(sam):
    card = selected(sam)
    t = card.transmit
    init = t(H("805001020B01") + (100).to_bytes(4, "big") + H("000000000101") + b"\x0f")
    assert init[-2:] == H("9000")
    assert t(H("80540180 13".replace(" ", "")) + bytes(19) + b"\x10") == H("6982")


def test_pin_config_key_is_validated(tmp_path):
    from common.config import ConfigError, load_config
    from tests.support import TERMINAL_TOML

    def load(value):
        cfg = tmp_path / "t.toml"
        text = TERMINAL_TOML.format(kind="pos", db=tmp_path / "x.db", bl=tmp_path / "b.db")
        cfg.write_text(text.replace('offline_limit = "150.00"', f'offline_limit = "150.00"\npin_above = {value}'))
        return load_config(cfg)

    assert load('"50.00"').pos.pin_above == 5000
    assert load('"0"').pos.pin_above == 0
    for bad in ('"-1"', '"abc"', "12"):
        with pytest.raises(ConfigError, match=r"\[pos\]\.pin_above"):
            load(bad)
