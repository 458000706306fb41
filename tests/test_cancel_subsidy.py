"""A cancelled card (销户/退卡) accounts for its subsidy purse (docs/card-application.md 8.5, docs/canteen.md "Subsidy
wallet", docs/sync-protocol.md "Issuing station registry"): the issuing station freezes it with the cash purse
(APPLICATION BLOCK P1 01), the cash is refunded to the holder, the subsidy is never paid out but returned to the
enterprise, and the platform stores what the card proved (its MAC re-checked). End to end with the issuing station,
a real till collecting and spending, and the platform (SQLite and PostgreSQL) ingesting what the till uploads."""

from __future__ import annotations

import datetime as dt

import pytest

from central.db import PlatformError
from central.station_registry import InProcessRegistry
from common.registry import RegistryError
from terminal import card_protocol as cp
from terminal import rekey
from terminal.decision import Refusal
from terminal.issuing import void_purse
from terminal.reader import CardRemoved
from terminal.subsidy_protocol import allowances_from_body
from tests.support import MONDAY_10AM
from tests.test_card_v2 import ISSUING_TERMINAL, A, pos_terminal, station, tap_run
from tests.test_ota_status_delete import B as OTA_B
from tests.test_ota_status_delete import world  # noqa: F401
from tests.test_replacement_subsidy import ENT, EXPIRY, cash, old_card, platform, sub, upload  # noqa: F401

__all__ = ["platform", "world"]


def collect(platform, tmp_path, card, label="2026-11", amount=3_000, spend=1_000, pos=None):
    """The platform issues an allowance; a till (`pos`, or a new one) collects it and sells `spend` from the subsidy
    purse; its log is uploaded."""
    platform.issue_subsidy(ENT, ["E1001"], amount, EXPIRY, "subsidy_first", label)
    if pos is None:
        tmp_path.mkdir(exist_ok=True)
        pos = pos_terminal(tmp_path, A)
    offered = allowances_from_body(platform.subsidy_allowances_body(ENT))
    pos.pending_allowances = lambda asn: [a for a in offered if a.asn == asn]
    tap_run(card, lambda t: pos.purchase(t, spend, MONDAY_10AM))
    upload(platform, pos.event_log)


def events(st, kind):
    return [e for e in st.event_log.events() if e.kind == kind]


def returned(platform, asn):
    row = platform.conn.execute("SELECT amount_cents, expiry FROM subsidy_returned WHERE asn = ?", (asn,)).fetchone()
    return None if row is None else tuple(row)


def refunded(platform, asn):
    (total,) = platform.conn.execute(
        "SELECT coalesce(sum(amount_cents), 0) FROM refunds WHERE asn = ?", (asn,)
    ).fetchone()
    return int(total)


def test_a_readable_card_is_cancelled_cash_refunded_and_subsidy_returned_to_the_enterprise(platform, tmp_path):
    card = old_card(platform)
    collect(platform, tmp_path / "pos", card)
    asn = card.sub_application(A).asn.hex().upper()
    assert (cash(card), sub(card).balance) == (5_000, 2_000)
    st = station(platform, tmp_path, A)
    # without the settlement: refused before anything changes
    with pytest.raises(Refusal) as refused:
        tap_run(card, lambda t: st.cancel(t, MONDAY_10AM))
    assert refused.value.reason_code == "balance_remains"
    assert card.sub_application(A).status == 1 and platform.card(asn)["status"] == "ACTIVE"
    settled, n = tap_run(card, lambda t: st.cancel(t, MONDAY_10AM, settle=True))
    assert settled == 5_000 and st.outcome == {"subsidy_returned": 2_000}
    assert n == 7  # SELECT; GET CHALLENGE + secured GET BALANCE, + BLOCK P1 01, + ERASE
    # the card: voided, purses gone
    app = card.sub_application(A)
    assert (app.status, app.purse, app.subsidy) == (2, None, None)
    # the station's log: the settlement with both frozen purses, the subsidy returned (never refunded)
    [s] = events(st, "issue.cancel.settled")
    assert s.message == "Balance 50.00 settled; subsidy 20.00 returned to the enterprise"
    assert (s.detail["balance"], s.detail["subsidy_balance"], s.detail["subsidy_expiry"]) == (
        5_000,
        2_000,
        "2026-12-31",
    )
    assert (s.detail["subsidy_online_counter"], s.detail["subsidy_offline_counter"]) == (1, 1)
    [done] = events(st, "issue.cancel")
    assert done.detail == {"settled": 5_000, "subsidy_returned": 2_000}
    # the platform: cash refunded, subsidy returned, both equal to what the card proved
    c = platform.card(asn)
    assert (c["status"], c["balance_cents"], c["subsidy_cents"], c["subsidy_expiry"]) == ("CANCELLED", 0, 0, None)
    assert refunded(platform, asn) == s.detail["balance"] == 5_000
    assert returned(platform, asn) == (s.detail["subsidy_balance"], "2026-12-31")
    v = platform.voided(asn)
    assert (v["frozen_cents"], v["subsidy_cents"], v["subsidy_expiry"], v["mac_status"]) == (
        5_000,
        2_000,
        "20261231",
        "ok",
    )
    assert (v["offline_counter"], v["online_counter"], v["subsidy_offline_counter"], v["subsidy_online_counter"]) == (
        0,
        0,
        1,
        1,
    )
    assert v["proof"] == s.detail["proof"] and len(v["challenge"]) == 16 and v["key_version"] == 1
    report = platform.subsidy_report(ENT)
    assert (report["collected"], report["spent"], report["returned"], report["on_cards"]) == (3_000, 1_000, 2_000, 0)
    [bill] = platform.spending_bills("2026-11", ENT, "E1001")
    assert (bill.subsidy_opening, bill.subsidy_closing, bill.closing) == (0, 0, 0)
    items = [(i.wallet, i.label, i.amount) for i in bill.items if i.kind in ("returned", "payout")]
    assert sorted(items) == [("cash", "paid out", -5_000), ("subsidy", "subsidy returned to the enterprise", -2_000)]
    [returned_item] = [i for i in bill.items if i.kind == "returned"]
    assert returned_item.sms().split(" ", 2)[2] == "subsidy returned to the enterprise 20.00 at cancellation"
    [(text,)] = platform.conn.execute(
        "SELECT text FROM card_history WHERE asn = ? AND action = 'cancel'", (asn,)
    ).fetchall()
    assert text.startswith("cancelled, 50.00 yuan refunded, subsidy 20.00 yuan returned to the enterprise;")


def test_a_card_holding_only_a_subsidy_needs_the_settlement(platform, tmp_path):
    card = old_card(platform, cash=0)
    collect(platform, tmp_path / "pos", card, amount=500, spend=100)
    st = station(platform, tmp_path, A)
    with pytest.raises(Refusal) as refused:
        tap_run(card, lambda t: st.cancel(t, MONDAY_10AM))
    assert refused.value.message == (
        "Card still holds a subsidy balance: it is returned to the enterprise at cancellation, never paid out in "
        "cash; confirm the settlement to cancel; nothing was changed"
    )
    assert card.sub_application(A).status == 1 and sub(card).balance == 400
    assert tap_run(card, lambda t: st.cancel(t, MONDAY_10AM, settle=True))[0] == 0
    asn = card.sub_application(A).asn.hex().upper()
    assert (refunded(platform, asn), returned(platform, asn)) == (0, (400, "2026-12-31"))


def test_a_lost_card_cancelled_from_the_platforms_records_returns_its_subsidy_ledger(platform, tmp_path):
    card = old_card(platform)
    collect(platform, tmp_path / "pos", card, spend=1_200)
    asn = card.sub_application(A).asn.hex().upper()
    platform.report_loss(asn)
    assert platform.subsidy_ledger(asn) == (1_800, "2026-12-31")
    with pytest.raises(PlatformError) as refused:
        platform.cancel(asn)
    assert str(refused.value) == (
        f"card {asn} has a balance of 50.00 yuan; settle it first: rerun with --settle to record the refund"
    )
    platform.conn.execute("UPDATE cards SET balance_cents = 0 WHERE asn = ?", (asn,))
    with pytest.raises(PlatformError) as refused:
        platform.cancel(asn)
    assert str(refused.value) == (
        f"card {asn} has a subsidy balance of 18.00 yuan, returned to the enterprise at cancellation (never paid "
        "out in cash); rerun with --settle to record it"
    )
    platform.conn.execute("UPDATE cards SET balance_cents = 5000 WHERE asn = ?", (asn,))
    platform.cancel(asn, settle=True)
    assert (refunded(platform, asn), returned(platform, asn)) == (5_000, (1_800, "2026-12-31"))
    assert platform.subsidy_ledger(asn) == (0, None)
    assert platform.subsidy_report(ENT)["returned"] == 1_800
    with pytest.raises(PlatformError):
        platform.cancel(asn, settle=True)  # already CANCELLED: nothing is returned twice
    assert returned(platform, asn) == (1_800, "2026-12-31")


def test_a_cancellation_torn_at_every_apdu_refunds_and_returns_exactly_once(platform, tmp_path):
    pos = pos_terminal(tmp_path, A)  # one till for every round: its log is one chain
    for k in range(1, 8):  # APDU k of the 7 of a cancellation processed, its answer lost
        d = tmp_path / f"t{k}"
        d.mkdir()
        card = old_card(platform, asn=bytes([0x50, k]) + bytes(6))
        asn = card.sub_application(A).asn.hex().upper()
        collect(platform, d, card, label=f"t{k}", amount=2_000, spend=300, pos=pos)
        st = station(platform, d, A)
        try:
            tap_run(card, lambda t: st.cancel(t, MONDAY_10AM, settle=True), tear_after=k)
        except (CardRemoved, Refusal):
            tap_run(card, lambda t: st.cancel(t, MONDAY_10AM + dt.timedelta(seconds=30), settle=True))
        [s] = events(st, "issue.cancel.settled")
        assert (s.detail["balance"], s.detail["subsidy_balance"]) == (5_000, 1_700), k
        assert len(events(st, "issue.cancel")) == 1, k
        assert platform.card(asn)["status"] == "CANCELLED", k
        assert refunded(platform, asn) == 5_000 and returned(platform, asn) == (1_700, "2026-12-31"), k
        # what the platform holds of the void is the card's proof of its real purses, not of the erased card
        v = platform.voided(asn)
        assert (v["frozen_cents"], v["subsidy_cents"], v["proof"], v["mac_status"]) == (
            5_000,
            1_700,
            s.detail["proof"],
            "ok",
        ), k
        app = card.sub_application(A)
        assert (app.status, app.purse, app.subsidy) == (2, None, None), k


def test_a_void_report_with_a_forged_subsidy_figure_is_refused(platform, tmp_path):
    card = old_card(platform, subsidy=(1_234, EXPIRY))
    asn = card.sub_application(A).asn.hex().upper()
    st = station(platform, tmp_path, A)
    seen = []

    def run(t):
        channel = rekey.AdminChannel(t, st.sam, st._select(t))
        frozen = channel.block(with_subsidy=True)
        seen.append(channel.block_challenge)
        return frozen

    frozen, _ = tap_run(card, run)
    purse = void_purse(frozen, seen[0], 1)
    assert purse == {
        "offline_counter": 0,
        "online_counter": 0,
        "challenge": seen[0].hex(),
        "key_version": 1,
        "subsidy_cents": 1_234,
        "subsidy_expiry": "20261231",
        "subsidy_offline_counter": 0,
        "subsidy_online_counter": 0,
    }
    registry = InProcessRegistry(platform)
    for forged in (
        {**purse, "subsidy_cents": 99_999},
        {**purse, "subsidy_expiry": "20991231"},
        {**purse, "subsidy_online_counter": 1},
        {**purse, "challenge": "00" * 8},
    ):
        with pytest.raises(RegistryError) as refused:
            registry.voided(asn, 5_000, frozen.mac.hex(), ISSUING_TERMINAL, forged)
        assert str(refused.value) == (
            f"void of card {asn} refused: the card's MAC over the frozen purse does not verify (forged or altered "
            "figures); nothing was recorded: tap the card again at the issuing station"
        )
    with pytest.raises(RegistryError):
        registry.voided(asn, 5_001, frozen.mac.hex(), ISSUING_TERMINAL, purse)  # the cash figure is covered too
    assert platform.voided(asn) is None and platform.card(asn)["status"] == "ACTIVE"
    registry.voided(asn, 5_000, frozen.mac.hex(), ISSUING_TERMINAL, purse)
    v = platform.voided(asn)
    assert (v["frozen_cents"], v["subsidy_cents"], v["subsidy_expiry"], v["mac_status"]) == (
        5_000,
        1_234,
        "20261231",
        "ok",
    )
    assert platform.card(asn)["status"] == "VOIDED"


def test_a_platform_without_the_update_key_keeps_the_void_unchecked(platform_db, tmp_path):
    from central.store import Platform
    from tests.test_replacement_subsidy import KEY

    pf = Platform(platform_db, KEY, clock=lambda: MONDAY_10AM)
    try:
        pf.add_enterprise(ENT, "Acme")
        pf.add_holder(ENT, "E1001", "Zhang Wei", phone="13800000001")
        card = old_card(pf, subsidy=(1_234, EXPIRY))
        asn = card.sub_application(A).asn.hex().upper()
        st = station(pf, tmp_path, A)
        tap_run(card, lambda t: st.cancel(t, MONDAY_10AM, settle=True))
        v = pf.voided(asn)
        assert (v["subsidy_cents"], v["mac_status"]) == (1_234, "unchecked")
        # the card's subsidy was put on it directly: the platform's ledger knew none, so none is returned
        assert returned(pf, asn) is None and pf.card(asn)["status"] == "CANCELLED"
    finally:
        pf.close()


def test_the_platforms_card_command_shows_the_void(tmp_path, capsys):
    import json

    from central.db import load_signing_key, write_signing_key
    from central.store import Platform
    from onecard.cli import main
    from tests.test_card_v2 import SAMS

    write_signing_key(tmp_path / "pf.key")
    pf = Platform(tmp_path / "platform.db", load_signing_key(tmp_path / "pf.key"), tac_sam=SAMS[A])
    pf.add_enterprise(ENT, "Acme")
    pf.add_holder(ENT, "E1001", "Zhang Wei", phone="13800000001")
    card = old_card(pf, subsidy=(1_234, EXPIRY))
    asn = card.sub_application(A).asn.hex().upper()
    tap_run(card, lambda t: station(pf, tmp_path, A).backup_and_void(t, MONDAY_10AM))
    pf.close()
    capsys.readouterr()
    assert (
        main(["platform", "card", asn, "--db", str(tmp_path / "platform.db"), "--key", str(tmp_path / "pf.key")]) == 0
    )
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "VOIDED"
    void = shown["void"]
    assert (void["frozen_cents"], void["subsidy_cents"], void["subsidy_expiry"], void["mac_status"]) == (
        5_000,
        1_234,
        "20261231",
        "ok",
    )
    assert (void["terminal_id"], void["key_version"], len(void["proof"]), len(void["challenge"])) == (
        ISSUING_TERMINAL,
        1,
        16,
        16,
    )


def test_the_frozen_subsidy_expiry_goes_as_the_cards_bcd_bytes():
    raw = bytes.fromhex("00001388 0001 0002 000004D2 00000000 0003 0004".replace(" ", ""))
    frozen = cp.FrozenPurse(5_000, 1, 2, bytes(8), raw, cp.FrozenSubsidy(1_234, None, 3, 4))
    assert void_purse(frozen, bytes(range(8)), 7) == {
        "offline_counter": 1,
        "online_counter": 2,
        "challenge": "0001020304050607",
        "key_version": 7,
        "subsidy_cents": 1_234,
        "subsidy_expiry": "00000000",
        "subsidy_offline_counter": 3,
        "subsidy_online_counter": 4,
    }
    bare = cp.FrozenPurse(5_000, 1, 2, bytes(8), raw[:8])
    assert void_purse(bare, bytes(8), 1) == {
        "offline_counter": 1,
        "online_counter": 2,
        "challenge": "0000000000000000",
        "key_version": 1,
    }


# --- over the air (docs/ota.md 5.2): `onecard platform cancel ASN --over-the-air --settle` ----------------------


def _ota_card_with_subsidy(w, subsidy_cents=1_234, ledger=True):
    """Enterprise B's sub-application gets a subsidy purse holding `subsidy_cents` until 2026-12-31; `ledger`: the
    platform's subsidy ledger holds the same (as a replacement would have carried it onto this card)."""
    from common import bcd
    from simulator.card import SubsidyPurse
    from tests.test_ota_status_delete import asn_b

    w["card"].sub_application(OTA_B).subsidy = SubsidyPurse(subsidy_cents, bcd.encode_date(EXPIRY), 100_000)
    if ledger:
        w["pf"].conn.execute(
            "INSERT INTO subsidy_carried VALUES (?, ?, ?, ?, 0, ?)",
            ("C0FFEE0000000001", asn_b(w), subsidy_cents, EXPIRY.isoformat(), "2026-12-01T00:00:00.000000Z"),
        )
    return asn_b(w)


def test_an_over_the_air_cancellation_proves_the_subsidy_and_returns_it_to_the_enterprise(world):
    from central import ota_ops
    from tests.test_ota_status_delete import MSISDN
    from tests.test_ota_status_delete import SAMS as OTA_SAMS

    w = world
    asn = _ota_card_with_subsidy(w)
    pf = w["pf"]
    assert pf.subsidy_known(asn) and pf.subsidy_ledger(asn) == (1_234, "2026-12-31")
    op = w["channel"].secured(
        "del-s",
        w["ident"],
        MSISDN,
        "delete",
        ota_ops.OtaDeletion(OTA_SAMS[OTA_B], w["ident"], settle=True, subsidy=True),
    )
    assert op.step is ota_ops.Step.DONE, op.reason
    # APPLICATION BLOCK P1 01: 20 frozen bytes and the MAC, checked by the platform's SAM
    assert (op.frozen.balance, op.frozen.subsidy_balance, len(op.frozen.proof)) == (5_000, 1_234, 28)
    assert op.frozen.proof[12:16] == bytes.fromhex("20261231")
    assert [e.enterprise_id for e in w["card"].directory()] != [] and OTA_B not in [
        e.enterprise_id for e in w["card"].directory()
    ]
    assert pf.card(asn)["status"] == "CANCELLED"
    assert refunded(pf, asn) == 5_000 and returned(pf, asn) == (1_234, "2026-12-31")
    v = pf.voided(asn)
    assert (v["terminal_id"], v["frozen_cents"], v["subsidy_cents"], v["subsidy_expiry"], v["mac_status"]) == (
        "ota",
        5_000,
        1_234,
        "20261231",
        "ok",
    )
    assert v["challenge"] == op.frozen.challenge.hex() and len(v["challenge"]) == 16
    assert len(w["smsc"].messages) == 7  # as without subsidy: BALANCE, BLOCK, DELETE (2 packets each), CHECK


def test_an_over_the_air_void_of_a_card_without_subsidy_purse_falls_back_to_p1_00(world):
    from central import ota_ops
    from tests.test_ota_status_delete import MSISDN, asn_b
    from tests.test_ota_status_delete import SAMS as OTA_SAMS

    w = world
    assert w["card"].sub_application(OTA_B).subsidy is None
    op = w["channel"].secured(
        "del-n",
        w["ident"],
        MSISDN,
        "delete",
        ota_ops.OtaDeletion(OTA_SAMS[OTA_B], w["ident"], settle=True, subsidy=True),
    )
    assert op.step is ota_ops.Step.DONE, op.reason
    assert (op.frozen.balance, op.frozen.subsidy_balance, len(op.frozen.proof)) == (5_000, None, 16)
    assert len(w["smsc"].messages) == 9  # BLOCK P1 01 answered 6A 81 (nothing changed), then P1 00
    assert refunded(w["pf"], asn_b(w)) == 5_000 and w["pf"].voided(asn_b(w))["subsidy_cents"] is None


def test_an_over_the_air_void_without_settle_refuses_a_frozen_subsidy(world):
    from central import ota_ops
    from tests.test_ota_status_delete import MSISDN
    from tests.test_ota_status_delete import SAMS as OTA_SAMS

    w = world
    w["card"].sub_application(OTA_B).purse.balance = 0
    asn = _ota_card_with_subsidy(w, ledger=False)
    op = w["channel"].secured(
        "del-u", w["ident"], MSISDN, "delete", ota_ops.OtaDeletion(OTA_SAMS[OTA_B], w["ident"], subsidy=True)
    )
    assert op.step is ota_ops.Step.FAILED
    assert op.reason == (
        "the card froze 0 fen and a subsidy of 1234 fen (returned to the enterprise): settle it (--settle records "
        "the refund)"
    )
    assert w["pf"].card(asn)["status"] == "ACTIVE" and returned(w["pf"], asn) is None
