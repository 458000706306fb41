"""The spending password (消费密码) in a two-purse sale (docs/card-application.md 5.5, 5.6): the till asks for it
above `[pos].pin_above` exactly as for a plain purchase, the two-purse DEBIT carries P2 80, the card refuses the flag
without a VERIFY in the session, both TACs carry the flagged types (85 subsidy, 86 cash), and the platform's TAC
checks prove the PIN was entered (and catch a record whose flag was added or stripped)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.store import Platform
from common import bcd
from common import sync_protocol as p
from common import transactions as tx
from simulator.card import SubsidyPurse
from terminal import spending_pin as spin
from terminal.decision import Refusal
from terminal.subsidy_protocol import Allowance
from tests.support import ALL_USAGES, MONDAY_10AM, make_card_v2, make_sam
from tests.test_purse import make_purse_terminal, present
from tests.test_subsidy_terminal import tac_ok

H = bytes.fromhex
SELECT_A = H("00A404000DF04F4E4543415244020001000100")
THRESHOLD = 5_000
KEY = Ed25519PrivateKey.generate()
ENT, TID = "00010001", "000000000101"


@pytest.fixture
def sam():
    from sam.interface import KeyUsage

    return make_sam(usages=(*ALL_USAGES, KeyUsage.SUBSIDY))


def pin_card(sam, pin="2468", cash=10_000, subsidy=3_000):
    card = make_card_v2(sam, opening_balance=cash, spending_pin=pin)
    card.state.subsidy = SubsidyPurse(subsidy, bcd.encode_date(dt.date(2026, 12, 31)), 100_000)
    return card


def till(tmp_path, sam, card, typed=("2468",), policy="subsidy_first"):
    """A POS whose keypad types `typed` in turn (None: the cashier cancels); `asked` records each prompt."""
    t = make_purse_terminal(tmp_path, sam)
    t.config = dataclasses.replace(t.config, pos=dataclasses.replace(t.config.pos, pin_above=THRESHOLD))
    t.pending_allowances = lambda asn: [Allowance("p", asn, 1, dt.date(2026, 1, 1), policy)]  # policy only
    answers = list(typed)
    t.asked = []

    def ask(amount, note):
        t.asked.append(note)
        typed_now = answers.pop(0) if answers else None
        return None if typed_now is None else spin.parse_pin(typed_now)

    t.ask_pin = ask
    return t


def sale(t, card, amount):
    return t.purchase(present(card)[1], amount, MONDAY_10AM)


@pytest.mark.parametrize("amount, asked", [(THRESHOLD - 1, False), (THRESHOLD, False), (THRESHOLD + 1, True)])
def test_the_two_purse_sale_asks_the_pin_strictly_above_the_threshold(tmp_path, sam, amount, asked):
    card = pin_card(sam)
    t = till(tmp_path, sam, card)
    decision = sale(t, card, amount)
    assert decision.accepted and len(t.asked) == int(asked)
    d = t.event_log.events()[-1].detail
    assert d.get("pin_verified") is (True if asked else None)
    s, c = d["subsidy_amount"], amount - d["subsidy_amount"]
    assert (s, c) == (3_000, amount - 3_000)
    # the TAC types: 85 / 86 when flagged, 05 / 06 otherwise; each TAC is what the card recorded
    tac_ok(sam, card, t, 0x85 if asked else 0x05, s, 0, 0, d["tsn"], d, d["subsidy_tac"])
    tac_ok(sam, card, t, 0x86 if asked else 0x06, c, 0, 10_000 - c, d["tsn"], d, d["tac"])
    assert card.state.subsidy.records[-1]["tac"] == d["subsidy_tac"]
    assert card.state.purse.records[-1]["tac"] == d["tac"]
    # the records and MAC2 keep their own types: only the TAC input is flagged
    assert (card.state.subsidy.records[-1]["type"], card.state.purse.records[-1]["type"]) == (0x05, 0x06)


def test_a_flagged_two_purse_sale_from_the_subsidy_purse_alone_flags_its_one_tac(tmp_path, sam):
    card = pin_card(sam, subsidy=9_000)
    t = till(tmp_path, sam, card)
    d = sale(t, card, 6_000).detail
    assert d["pin_verified"] is True and d["tac"] == "0" * 16 and card.state.purse.offline_counter == 0
    tac_ok(sam, card, t, tx.SUBSIDY_PURCHASE_WITH_PIN_TAC, 6_000, 0, 3_000, d["tsn"], d, d["subsidy_tac"])


def test_a_wrong_pin_then_the_right_one_charges_once(tmp_path, sam):
    card = pin_card(sam)
    t = till(tmp_path, sam, card, typed=("1357", "2468"))
    decision = sale(t, card, 6_000)
    assert decision.message == "Paid 60.00 (subsidy 30.00, cash 30.00)"
    assert t.asked == ["3 tries left", "Wrong password: 2 tries left"]
    assert card.state.pin_tries == 3 and card.state.purse.balance == 7_000 and card.state.subsidy.balance == 0


def test_three_wrong_pins_block_it_and_nothing_is_charged(tmp_path, sam):
    card = pin_card(sam)
    t = till(tmp_path, sam, card, typed=("1111", "2222", "3333"))
    with pytest.raises(Refusal) as r:
        sale(t, card, 6_000)
    assert r.value.reason_code == "pin_blocked"
    assert r.value.message == "Wrong spending password: now blocked, nothing charged. Unblock it at the card office"
    assert (card.state.purse.balance, card.state.subsidy.balance, card.state.pin_tries) == (10_000, 3_000, 0)
    (tmp_path / "again").mkdir()
    t2 = till(tmp_path / "again", sam, card)
    with pytest.raises(Refusal) as r:
        sale(t2, card, 6_000)
    assert r.value.message == spin.BLOCKED_MESSAGE and t2.asked == []
    assert not [e for e in t.event_log.events() if e.kind.startswith("pos.purchase")]


def test_the_card_refuses_a_flagged_two_purse_debit_without_verify(sam):
    card = pin_card(sam)
    card.power_on()
    t = card.transmit
    assert t(SELECT_A)[-2:] == H("9000")
    init = t(H("805001030C01") + (6_000).to_bytes(4, "big") + H("000000000101") + b"\x01\x1a")
    assert init[-2:] == H("9000")
    assert t(H("8054018013") + bytes(19) + b"\x10") == H("6982")  # nothing changed, the session ends
    assert t(H("8054010013") + bytes(19) + b"\x10") == H("6901")
    assert card.state.purse.balance == 10_000 and card.state.subsidy.balance == 3_000
    # a withdrawal is never flagged: P2 80 is not its P1 P2
    card.state.subsidy.expiry = bcd.encode_date(dt.date(2026, 1, 1))
    assert t(H("805002010B0100000000000000000101 0F".replace(" ", "")))[-2:] == H("9000")
    assert t(H("0020008008242468FFFFFFFFFF")) == H("9000")
    assert t(H("8054018013") + bytes(19) + b"\x10") == H("6A86")


def test_the_verification_is_used_up_by_one_two_purse_debit(sam):
    """VERIFY, INITIALIZE, DEBIT (flagged, MAC1 wrong: 93 02): the flag is gone, a second flagged DEBIT is 69 82."""
    card = pin_card(sam)
    card.power_on()
    t = card.transmit
    t(SELECT_A)
    assert t(H("0020008008242468FFFFFFFFFF")) == H("9000")
    init = H("805001030C01") + (6_000).to_bytes(4, "big") + H("000000000101") + b"\x01\x1a"
    assert t(init)[-2:] == H("9000")
    assert t(H("8054018013") + bytes(19) + b"\x10") == H("9302")
    assert t(init)[-2:] == H("9000")
    assert t(H("8054018013") + bytes(19) + b"\x10") == H("6982")


def _upload(pf, t):
    events = [
        p.WireEvent(
            e.seq, p.format_time(e.time), e.kind, e.asn, e.reason_code, e.message, e.detail_json, e.prev_hash, e.hash
        )
        for e in t.event_log.events()
    ]
    return pf.ingest(TID, events)


def _platform(platform_db, sam, card):
    pf = Platform(platform_db, KEY, clock=lambda: MONDAY_10AM, tac_sam=sam)
    pf.add_enterprise(ENT, "Test Co")
    pf.add_terminal(TID, ENT, kind="pos")
    pf.add_holder(ENT, "E1001", "Zhang Wei")
    pf.issue_card(ENT, "E1001", card.state.asn.hex().upper(), balance_cents=10_000)
    return pf


def test_the_platform_verifies_both_flagged_tacs(platform_db, tmp_path, sam):
    card = pin_card(sam)
    t = till(tmp_path, sam, card)
    sale(t, card, 6_000)
    sale(t, card, 1_000)  # below the threshold: 06, from cash only (the subsidy purse is empty)
    pf = _platform(platform_db, sam, card)
    try:
        _upload(pf, t)
        sub = pf.conn.execute("SELECT amount_cents, tac_status FROM subsidy_transactions").fetchall()
        assert sub == [(3_000, "ok")]
        cash = pf.conn.execute(
            "SELECT amount_cents, tac_status FROM purse_transactions WHERE kind = 'pos.purchase' ORDER BY counter"
        ).fetchall()
        assert cash == [(3_000, "ok"), (1_000, "ok")]
        assert pf.card(card.state.asn.hex().upper())["balance_cents"] == 6_000 == card.state.purse.balance
    finally:
        pf.close()


@pytest.mark.parametrize("tamper", ["strip", "add"])
def test_a_record_whose_flag_was_stripped_or_added_fails_both_tac_checks(platform_db, tmp_path, sam, tamper):
    from common import money_records as mr

    card = pin_card(sam)
    t = till(tmp_path, sam, card)
    sale(t, card, 6_000 if tamper == "strip" else 4_000)  # flagged / not flagged
    pf = _platform(platform_db, sam, card)
    try:
        event = SimpleNamespace(asn=card.state.asn.hex().upper(), seq=1, kind="pos.purchase")
        true = dict(t.event_log.events()[-1].detail)
        forged = dict(true)
        if tamper == "strip":
            del forged["pin_verified"]
        else:
            forged["pin_verified"] = True

        def statuses(d):
            cash = {k: v for k, v in d.items() if k not in mr.TWO_PURSE_FIELDS}
            cash["amount"] = d["amount"] - d["subsidy_amount"]
            return (
                pf._check_subsidy_tac(
                    TID,
                    ENT,
                    event,
                    d,
                    "purchase",
                    d["subsidy_amount"],
                    d["subsidy_counter"],
                    d["subsidy_balance_after"],
                    d["subsidy_tac"],
                ),
                pf._check_tac(TID, event, cash),
            )

        assert statuses(true) == ("ok", "ok")
        assert statuses(forged) == ("bad", "bad")
    finally:
        pf.close()


def test_the_flagged_two_purse_example_of_section_5_6_is_byte_exact():
    """The flagged sale of docs/card-application.md 5.6, replayed on the worked example's card with a PIN."""
    from simulator import card as sim
    from tests import test_subsidy_worked_example as w

    heading = "Exact bytes of a flagged two-purse sale"
    block = w.DOC[w.DOC.index(heading) :]
    block = block[block.index("```") + 3 :]
    block = block[: block.index("```")]
    pairs: list[list[bytes]] = []
    for line in block.splitlines():
        code = line.split("#")[0].rstrip()
        if code.startswith("> "):
            pairs.append([H(code[2:]), b""])
        elif code.startswith("< "):
            pairs[-1][1] = H(code[2:])
    stated = dict(
        line.split(" = mac8")[0:1] + [line.rsplit("= ", 1)[1]] for line in block.splitlines() if "mac8" in line
    )
    saved = sim.os
    sim.os = w._FixedRandom()
    try:
        card = w.office_card()
        card.card.apps[0].pin = "2468"
        card.power_on()
        t = card.transmit
        t(w.SELECT_OFFICE)
        init = w.sp.parse_subsidy_load(t(w.sp.subsidy_load_command(w.LOAD, w.TERMINAL, w.EXPIRY, w.NUMBER)))
        sk_l = w.pc.load_session_key(w.AES, w.K_LOAD, init.random, init.counter)
        expiry = bcd.encode_date(w.EXPIRY)
        mac2 = w.pc.load_mac2(w.AES, sk_l, w.LOAD, w.TERMINAL, *w.LOAD_AT, tx.SUBSIDY_LOAD, expiry, w.NUMBER)
        assert t(w.pp.credit_command(*w.LOAD_AT, mac2))[-2:] == H("9000")
        assert len(pairs) == 3
        for command, answer in pairs:
            assert t(command).hex(" ") == answer.hex(" "), command.hex()
    finally:
        sim.os = saved
    debit = w.sp.parse_two_purse_debit(pairs[2][1])
    common = dict(terminal_id=w.TERMINAL, date=w.SALE_AT[0], time=w.SALE_AT[1], tsn=w.TSN)
    tac_s = w.pc.tac(w.AES, w.K_TAC, amount=3_000, tx_type=0x85, counter=0, balance_after=0, **common)
    tac_c = w.pc.tac(w.AES, w.K_TAC, amount=500, tx_type=0x86, counter=0, balance_after=9_500, **common)
    assert (debit.subsidy_tac, debit.cash_tac) == (tac_s, tac_c)
    assert stated == {"TAC_s": w.spaced(tac_s), "TAC_c": w.spaced(tac_c)}
    # the command is the terminal's own, and the unflagged sale of the worked example differs only in P2 and TACs
    unflagged = dict(w.documented_pairs())
    flagged_debit = pairs[2][0]
    plain_debit = next(c for c in unflagged if c[:2] == H("8054"))
    assert flagged_debit[:3] + flagged_debit[4:] == plain_debit[:3] + plain_debit[4:] and flagged_debit[3] == 0x80
    assert unflagged[plain_debit][16:] == pairs[2][1][16:]  # the same MAC2
    assert unflagged[plain_debit][:16] != pairs[2][1][:16]
