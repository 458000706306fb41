"""The spending bill lists every booked item: sales, undos, loads at a top-up terminal and over-the-air top-ups
(issue 12), so that opening balance + items = closing balance, in the SMS text and in the administrator's CSV.

A real platform database; the terminal items come from real purse terminals' event logs (the card's own TACs,
checked by the platform), the OTA top-up from the real OTA path (smpplib gateway, SMSC simulator, the SIM's OTA
side, the same simulated card, booked by `ota_settle_load`)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.bills import spending_bills_csv
from central.ota_channel import OtaChannel, OtaStore
from central.ota_gateway import SmppGateway
from central.sms_bills import send_bill
from central.store import Platform
from common import sync_protocol as p
from common.config import load_config
from sam.interface import Algorithm, CardIdentity
from sam.ota_keys import OtaSam
from sam.software import SoftwareSam
from simulator import ota_sim
from simulator.inprocess import InProcessReader
from simulator.ota_handset import SimHandset
from simulator.smsc import Smsc
from terminal.blacklist import Blacklist
from terminal.event_log import EventLog
from terminal.purse_flow import PurseTerminal
from tests.support import ENTERPRISE, TERMINAL_TOML, make_card, make_keystore

EID = ENTERPRISE.hex()
MSISDN = "8613900000007"
TOPUP, POS = "000000000401", "000000000301"
UTC = dt.timezone.utc


def at(month: int, day: int, hour: int) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = at(10, 30, 2)

    def __call__(self) -> dt.datetime:
        return self.t


def purse_terminal(tmp, sam, kind, tid):
    cfg = tmp / f"{kind}.toml"
    toml = TERMINAL_TOML.format(kind=kind, db=tmp / f"{kind}.db", bl=tmp / f"{kind}-bl.db")
    cfg.write_text(toml.replace('id = "000000000101"', f'id = "{tid}"'), encoding="utf-8")
    config = load_config(cfg)
    log = EventLog.open(config.terminal.database, config.terminal.id)
    return PurseTerminal(config, sam, log, Blacklist.open(config.terminal.blacklist))


def upload(pf, term) -> None:
    """The terminal's whole chain, as its sync agent would send it (the platform ignores what it already has)."""
    events = [
        p.WireEvent(
            e.seq, p.format_time(e.time), e.kind, e.asn, e.reason_code, e.message, e.detail_json, e.prev_hash, e.hash
        )
        for e in term.event_log.events()
    ]
    pf.ingest(term.config.terminal.id, events)


def tap(card):
    reader = InProcessReader()
    reader.tap(card)
    return reader.wait_for_card(0).transmit


@pytest.fixture
def world(tmp_path):
    ks = make_keystore()
    sam = SoftwareSam(ks)
    card = make_card(sam, tmp_path / "card.json")
    clock = Clock()
    pf = Platform(tmp_path / "p.db", Ed25519PrivateKey.generate(), clock=clock, tac_sam=sam)
    pf.add_enterprise(EID, "Co")
    pf.add_terminal(TOPUP, EID, "Top-up 1F", kind="topup")
    pf.add_terminal(POS, EID, "Canteen till", kind="pos")
    pf.add_holder(EID, "E1001", "Zhang Wei", MSISDN)
    asn = card.state.asn.hex().upper()
    pf.issue_card(EID, "E1001", asn)
    ident = CardIdentity(card.state.asn, ENTERPRISE, 1, Algorithm.AES128)
    otasam = OtaSam(ks)
    keys = otasam.personalise_keys(ident)
    handset = SimHandset(ota_sim.OtaSim(card, ota_sim.OtaState(keys.kic, keys.kid, keys.version)))
    smsc = Smsc(now=clock).start()
    smsc.add_handset(MSISDN, handset)
    gw = SmppGateway("127.0.0.1", smsc.port, "onecard", "secret", "10657000", timeout=3.0)
    gw.connect()
    topup, pos = purse_terminal(tmp_path, sam, "topup", TOPUP), purse_terminal(tmp_path, sam, "pos", POS)

    # October: 100.00 loaded at the top-up terminal.
    assert topup.top_up(tap(card), 10000, at(10, 30, 2)).accepted
    upload(pf, topup)
    # November: lunch, a wrong dish undone, another lunch; then 25.00 over the air to the phone, away from any till.
    assert pos.purchase(tap(card), 1250, at(11, 23, 4)).accepted
    assert pos.undo_last(tap(card), at(11, 23, 4) + dt.timedelta(minutes=1)).accepted
    assert pos.purchase(tap(card), 800, at(11, 23, 4) + dt.timedelta(minutes=2)).accepted
    upload(pf, pos)
    clock.t = at(11, 24, 1)
    channel = OtaChannel(gw, otasam, OtaStore(pf), validity_seconds=3600, por_wait_seconds=2.0)
    top = channel.top_up("ota-bill-1", ident, ident, MSISDN, 2500, bytes.fromhex("000000000901"), sam)
    assert top.proof is not None and pf.ota_load("ota-bill-1")["ledger"] == "accounted"
    # December: a sale after the month.
    clock.t = at(12, 1, 4)
    assert pos.purchase(tap(card), 500, at(12, 1, 4)).accepted
    upload(pf, pos)
    assert pf.card(asn)["balance_cents"] == card.state.purse.balance == 11200
    yield dict(pf=pf, card=card, gw=gw, handset=handset, asn=asn)
    gw.close()
    smsc.stop()
    pf.close()


def test_the_bill_lists_the_ota_top_up_once_and_its_balances_add_up(world):
    pf = world["pf"]
    [bill] = pf.spending_bills("2026-11", EID, "E1001")
    assert (bill.opening, bill.closing) == (10000, 11700)
    assert bill.opening + sum(i.amount for i in bill.items) == bill.closing
    # The card's balance now, less the December sale the card also holds: the month's closing balance.
    assert bill.closing == world["card"].state.purse.balance + 500
    text = pf.spending_bill(EID, "E1001", "2026-11")
    assert text.startswith(
        "[onecard] Zhang Wei (E1001), canteen 2026-11: opening 100.00 yuan, spent 8.00, topped up 25.00, "
        "closing balance 117.00 yuan. "
    )
    assert text.count("over the air") == 1 and "11-24 09:00 top-up 25.00 over the air." in text
    assert "11-23 12:00 paid 12.50 at Canteen till; 11-23 12:01 refund 12.50 at Canteen till; " in text
    assert "12-01" not in text and " paid 5.00" not in text  # December's sale is in December's bill
    october = pf.spending_bill(EID, "E1001", "2026-10")
    assert "opening 0.00 yuan" in october and "closing balance 100.00 yuan" in october
    assert "top-up 100.00 at Top-up 1F" in october and "over the air" not in october
    december = pf.spending_bill(EID, "E1001", "2026-12")
    assert "opening 117.00 yuan, spent 5.00" in december and "closing balance 112.00 yuan" in december


def test_the_csv_has_every_item_with_its_running_balance(world):
    rows = list(csv.reader(io.StringIO(spending_bills_csv(world["pf"].spending_bills("2026-11", EID)))))
    assert rows[0][:4] == ["enterprise_id", "employee_no", "name", "month"]
    body = [(r[6], r[7], r[8], r[9], r[10]) for r in rows[1:]]
    assert body == [
        ("opening balance", "", "", "", "100.00"),
        ("paid", "Canteen till", POS, "-12.50", "87.50"),
        ("refund", "Canteen till", POS, "12.50", "100.00"),
        ("paid", "Canteen till", POS, "-8.00", "92.00"),
        ("top-up", "over the air", "ota", "25.00", "117.00"),
        ("closing balance", "", "", "", "117.00"),
    ]
    assert re.fullmatch(r"2026-11-24T09:00:00\+08:00", rows[5][4])


def test_the_bill_arrives_on_the_phone_as_ucs2_sms(world):
    text = world["pf"].spending_bill(EID, "E1001", "2026-11")
    assert len(send_bill(world["gw"], MSISDN, text, reference=3)) > 1  # UCS-2, concatenated
    deadline = time.monotonic() + 10
    while not world["handset"].inbox and time.monotonic() < deadline:  # the SMSC delivers from its own thread
        time.sleep(0.02)
    assert world["handset"].inbox == [text]


def test_a_cancellation_pays_the_balance_out_and_the_bill_says_so(world):
    pf = world["pf"]
    pf.clock.t = at(12, 2, 1)  # the platform's clock: the next day
    pf.cancel(world["asn"], settle=True)
    [bill] = pf.spending_bills("2026-12", EID, "E1001")
    assert (bill.opening, bill.closing) == (11700, 0)
    assert [(i.label, i.amount) for i in bill.items] == [("paid", -500), ("paid out", -11200)]
    assert "spent 5.00, topped up 0.00, paid out 112.00, closing balance 0.00 yuan." in bill.sms()
    assert "paid out 112.00 at cancellation." in bill.sms()
    assert pf.spending_bills("2026-11", EID, "E1001")[0].closing == 11700  # November is unchanged
