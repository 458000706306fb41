"""A replaced card (补卡/换卡) keeps its subsidy (docs/card-application.md 8.2, 8.5; docs/canteen.md "Subsidy wallet"):
APPLICATION BLOCK P1 01 freezes and proves the subsidy purse with the cash purse, the issuing station loads it onto
the new card by a subsidy load with the old expiry (or lets an expired one lapse), exactly once across tears, and
the platform moves the subsidy ledger and the uncollected allowances to the new card, apart from cash. End to end
with the issuing station, a real till collecting and spending, and the platform ingesting what the till uploads."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.store import Platform
from common import bcd
from common import sync_protocol as p
from common import transactions as tx
from sam.interface import Algorithm, CardIdentity
from simulator.card import OneCardV2Applet, SubsidyPurse
from simulator.personalise import multi_card, sub_application, transport_sub_application
from terminal import card_protocol as cp
from terminal import rekey
from terminal.decision import Refusal
from terminal.reader import CardRemoved
from terminal.subsidy_protocol import allowances_from_body
from tests.support import MONDAY_10AM
from tests.test_card_v2 import ISSUER_SAM, SAMS, A, person, pos_terminal, station, tap_run

ENT, POS_ID = A.hex(), "000000000101"
EXPIRY = dt.date(2026, 12, 31)
KEY = Ed25519PrivateKey.generate()


@pytest.fixture
def platform(platform_db):
    pf = Platform(platform_db, KEY, clock=lambda: MONDAY_10AM, tac_sam=SAMS[A])
    pf.add_enterprise(ENT, "Acme")
    pf.add_terminal(POS_ID, ENT, kind="pos")
    pf.add_holder(ENT, "E1001", "Zhang Wei", phone="13800000001")
    yield pf
    pf.close()


def old_card(platform, cash=5_000, subsidy=None, asn=None, register=True) -> OneCardV2Applet:
    """An issued version 2 card (sub-application of A) with a new subsidy purse, registered with `cash`;
    `subsidy`: (balance, expiry) put on the card directly (the platform's ledger then knows nothing of it)."""
    holder = person(A, "E1001", "Zhang Wei", {1, 2}, opening_balance=cash, asn=asn)
    app = sub_application(SAMS[A], holder, "Office")
    app.subsidy = SubsidyPurse(0, bytes(4), 100_000)
    if subsidy is not None:
        app.subsidy = SubsidyPurse(subsidy[0], bcd.encode_date(subsidy[1]), 100_000)
    card = OneCardV2Applet(multi_card([app], issuer_sam=ISSUER_SAM))
    if register:
        platform.issue_card(ENT, "E1001", app.asn.hex().upper(), {"door_groups": [1, 2]}, balance_cents=cash)
    return card


def blank_card(asn: bytes) -> OneCardV2Applet:
    """A new version 2 card with A's sub-application at transport state, washed to A's keys version 1."""
    return OneCardV2Applet(multi_card([transport_sub_application(SAMS[A], A, "Office", asn=asn)], ISSUER_SAM))


def wash(st, card):
    tap_run(card, lambda t: rekey.rekey_card(t, st.sam, A, 1, st.event_log, MONDAY_10AM, rekey.WASH))


def upload(pf, log):
    events = [
        p.WireEvent(
            e.seq, p.format_time(e.time), e.kind, e.asn, e.reason_code, e.message, e.detail_json, e.prev_hash, e.hash
        )
        for e in log.events()
    ]
    pf.ingest(POS_ID, events)


def collect_and_spend(platform, tmp_path, card, spend=1_000, upload_it=True):
    """The platform issues two allowances (30.00 and, later, 5.00 left uncollected); a till collects the first and
    sells `spend` from the subsidy purse; its log is uploaded. Returns the till."""
    platform.issue_subsidy(ENT, ["E1001"], 3_000, EXPIRY, "subsidy_first", "2026-11")
    pos = pos_terminal(tmp_path, A)
    allowances = allowances_from_body(platform.subsidy_allowances_body(ENT))
    pos.pending_allowances = lambda asn: [a for a in allowances if a.asn == asn]
    decision = tap_run(card, lambda t: pos.purchase(t, spend, MONDAY_10AM))[0]
    assert "subsidy of 30.00 collected" in decision.message
    if upload_it:
        upload(platform, pos.event_log)
    platform.issue_subsidy(ENT, ["E1001"], 500, EXPIRY, "subsidy_first", "2026-11-bonus")
    return pos


def sub(card):
    return card.sub_application(A).subsidy


def cash(card):
    return card.sub_application(A).purse.balance


def kinds(st):
    return [e.kind for e in st.event_log.events()]


def tac_verifies(card, kind_detail, tx_type):
    d = kind_detail
    SAMS[A].verify_tac(
        CardIdentity(card.sub_application(A).asn, A, d["key_version"], Algorithm[d["algorithm"]]),
        amount=d["amount"],
        tx_type=tx_type,
        terminal_id=bytes.fromhex("000000000900"),
        tsn=d.get("allowance_no", 0),  # the carried last allowance number (card-application.md 5.6)
        date=bytes.fromhex(d["date"]),
        time=bytes.fromhex(d["time"]),
        counter=d["counter"],
        balance_after=d["balance_before"] + d["amount"],
        tac=bytes.fromhex(d["tac"]),
    )


NEW = bytes.fromhex("C0C0C0C0C0C0C0C1")


def test_a_readable_old_card_carries_its_proven_subsidy_and_the_platform_moves_its_ledger(platform, tmp_path):
    old = old_card(platform)
    collect_and_spend(platform, tmp_path, old)
    old_asn = old.sub_application(A).asn.hex().upper()
    assert (sub(old).balance, cash(old)) == (2_000, 5_000)
    assert platform.subsidy_ledger(old_asn) == (2_000, "2026-12-31")
    st = station(platform, tmp_path, A)
    backup, _ = tap_run(old, lambda t: st.backup_and_void(t, MONDAY_10AM))
    assert (backup.balance, backup.subsidy_balance, backup.subsidy_expiry) == (5_000, 2_000, EXPIRY)
    void = [e for e in st.event_log.events() if e.kind == "issue.void"][0].detail
    assert (void["subsidy_balance"], void["subsidy_expiry"], void["subsidy_online_counter"]) == (
        2_000,
        "2026-12-31",
        1,
    )
    assert old.sub_application(A).status == 2
    new = blank_card(NEW)
    wash(st, new)
    new_asn, _ = tap_run(new, lambda t: st.replace(t, backup, MONDAY_10AM))
    # the new card: the cash by a cash load, the subsidy by a subsidy load with the old expiry, both MAC3-verified
    assert (cash(new), sub(new).balance, sub(new).expiry) == (5_000, 2_000, bytes.fromhex("20261231"))
    assert [r["type"] for r in sub(new).records] == [tx.SUBSIDY_LOAD]
    restored = [e for e in st.event_log.events() if e.kind == "issue.restore_subsidy"]
    assert len(restored) == 1 and restored[0].detail["expiry"] == "20261231"
    tac_verifies(new, restored[0].detail, tx.SUBSIDY_LOAD)
    assert restored[0].detail["tac"] == sub(new).records[0]["tac"]
    # the old card's last allowance number travels with it: no allowance the old card loaded loads again
    assert sub(new).last_allowance == sub(old).last_allowance == restored[0].detail["allowance_no"] == 1
    replaced = [e for e in st.event_log.events() if e.kind == "issue.replace"][0]
    assert replaced.message == "Replaces " + old_asn + "; balance 50.00 carried, subsidy 20.00 carried"
    assert (replaced.detail["subsidy_carried"], replaced.detail["subsidy_loaded"]) == (2_000, 2_000)
    assert replaced.detail["subsidy_lapsed"] == 0
    # the platform: cash and subsidy ledgers equal the new card's verified balances, and stay apart
    c = platform.card(new_asn)
    assert (c["balance_cents"], c["subsidy_cents"], c["subsidy_expiry"]) == (5_000, 2_000, "2026-12-31")
    assert platform.subsidy_ledger(old_asn) == (0, None)
    assert platform.card(old_asn)["balance_cents"] == 0
    report = platform.subsidy_report(ENT)
    assert (report["carried"], report["lapsed"], report["on_cards"]) == (2_000, 0, 2_000)
    [bill] = platform.spending_bills("2026-11", ENT, "E1001")
    assert (bill.subsidy_opening, bill.subsidy_closing, bill.closing) == (0, 2_000, 5_000)
    assert not [i for i in bill.items if i.kind == "lapsed"]
    # the allowance not yet collected is now announced for the new card (the collected one stays collected)
    body = platform.subsidy_allowances_body(ENT)["allowances"]
    assert sorted((a["asn"], a["amount"], a["collected"]) for a in body) == [
        (new_asn, 500, False),
        (new_asn, 3_000, True),
    ]
    (tmp_path / "2").mkdir()
    pos = pos_terminal(tmp_path / "2", A)
    offered = allowances_from_body(platform.subsidy_allowances_body(ENT))
    pos.pending_allowances = lambda asn: [a for a in offered if a.asn == asn]
    decision = tap_run(new, lambda t: pos.purchase(t, 100, MONDAY_10AM + dt.timedelta(minutes=5)))[0]
    assert "subsidy of 5.00 collected - subsidy balance 25.00" in decision.message
    assert sub(new).balance == 2_400


def test_a_lost_card_carries_the_platforms_subsidy_ledger(platform, tmp_path):
    old = old_card(platform)
    collect_and_spend(platform, tmp_path, old, spend=1_200)
    old_asn = old.sub_application(A).asn.hex().upper()
    platform.report_loss(old_asn)
    st = station(platform, tmp_path, A)
    from terminal.issuing import IssueRequest

    request = IssueRequest(A, "E1001", frozenset({1, 2}), dt.date(2026, 1, 1), dt.date(2028, 12, 31))
    backup = st.backup_from_platform(old_asn, request)
    assert (backup.source, backup.balance, backup.subsidy_balance, backup.subsidy_expiry) == (
        "platform",
        5_000,
        1_800,
        EXPIRY,
    )
    new = blank_card(NEW)
    wash(st, new)
    new_asn, _ = tap_run(new, lambda t: st.replace(t, backup, MONDAY_10AM))
    assert (cash(new), sub(new).balance, sub(new).expiry) == (5_000, 1_800, bytes.fromhex("20261231"))
    c = platform.card(new_asn)
    assert (c["balance_cents"], c["subsidy_cents"]) == (cash(new), sub(new).balance)
    assert platform.card(old_asn)["status"] == "REPLACED"


def test_a_lost_cards_offline_subsidy_sale_uploaded_late_shows_as_the_amount_at_risk(platform, tmp_path):
    """docs/card-application.md 8.5: what the platform had not received when the card was replaced was carried
    anyway; the late record then leaves the old card's ledger below 0 by exactly that amount."""
    old = old_card(platform)
    pos = collect_and_spend(platform, tmp_path, old, spend=1_000)
    tap_run(old, lambda t: pos.purchase(t, 700, MONDAY_10AM + dt.timedelta(minutes=1)))  # not uploaded yet
    old_asn = old.sub_application(A).asn.hex().upper()
    platform.report_loss(old_asn)
    st = station(platform, tmp_path, A)
    from terminal.issuing import IssueRequest

    request = IssueRequest(A, "E1001", frozenset({1, 2}), dt.date(2026, 1, 1), dt.date(2028, 12, 31))
    backup = st.backup_from_platform(old_asn, request)
    assert backup.subsidy_balance == 2_000  # the platform's figure; the card holds 13.00
    new = blank_card(NEW)
    wash(st, new)
    tap_run(new, lambda t: st.replace(t, backup, MONDAY_10AM))
    upload(platform, pos.event_log)  # the till syncs later
    assert platform.subsidy_ledger(old_asn) == (-700, None)


def test_an_expired_subsidy_lapses_at_the_replacement_and_is_logged(platform, tmp_path):
    old = old_card(platform, subsidy=(1_500, dt.date(2026, 11, 22)))  # the day before MONDAY_10AM
    st = station(platform, tmp_path, A)
    backup, _ = tap_run(old, lambda t: st.backup_and_void(t, MONDAY_10AM))
    assert (backup.subsidy_balance, backup.subsidy_expiry) == (1_500, dt.date(2026, 11, 22))
    new = blank_card(NEW)
    wash(st, new)
    tap_run(new, lambda t: st.replace(t, backup, MONDAY_10AM))
    assert (sub(new).balance, sub(new).expiry, cash(new)) == (0, bytes(4), 5_000)
    assert "issue.restore_subsidy" not in kinds(st)
    replaced = [e for e in st.event_log.events() if e.kind == "issue.replace"][0]
    assert replaced.message.endswith("balance 50.00 carried, expired subsidy 15.00 lapsed")
    assert (replaced.detail["subsidy_loaded"], replaced.detail["subsidy_lapsed"]) == (0, 1_500)


def test_an_unexpired_subsidy_on_its_last_day_is_carried(platform, tmp_path):
    old = old_card(platform, subsidy=(1_500, dt.date(2026, 11, 23)))  # MONDAY_10AM is 2026-11-23 10:00 local
    st = station(platform, tmp_path, A)
    backup, _ = tap_run(old, lambda t: st.backup_and_void(t, MONDAY_10AM))
    new = blank_card(NEW)
    wash(st, new)
    tap_run(new, lambda t: st.replace(t, backup, MONDAY_10AM))
    assert (sub(new).balance, sub(new).expiry) == (1_500, bytes.fromhex("20261123"))


def test_the_platform_lets_an_expired_ledger_balance_lapse_at_replace(platform, tmp_path):
    old = old_card(platform)
    collect_and_spend(platform, tmp_path, old)
    old_asn = old.sub_application(A).asn.hex().upper()
    platform.clock = lambda: MONDAY_10AM + dt.timedelta(days=40)  # past 2026-12-31
    platform.report_loss(old_asn)
    platform.replace(old_asn, NEW.hex().upper(), 1)
    assert platform.subsidy_ledger(NEW.hex().upper()) == (0, None)
    assert platform.subsidy_ledger(old_asn) == (0, None)
    report = platform.subsidy_report(ENT)
    assert (report["carried"], report["lapsed"], report["on_cards"]) == (0, 2_000, 0)
    # the holder's bill: the lapse is an item of the month it happened; a carry between own cards is none
    [bill] = platform.spending_bills("2027-01", ENT, "E1001")
    assert (bill.subsidy_opening, bill.subsidy_closing) == (2_000, 0)
    assert [(i.wallet, i.label, i.amount, i.sms().split(" ", 2)[2]) for i in bill.items] == [
        ("subsidy", "subsidy lapsed", -2_000, "subsidy lapsed 20.00 at replacement")
    ]


def test_a_version_1_new_card_is_refused_before_anything_changes_when_a_subsidy_is_carried(platform, tmp_path):
    from tests.test_card_washing import new_transport_card

    old = old_card(platform, subsidy=(1_500, EXPIRY))
    st = station(platform, tmp_path, A)
    backup, _ = tap_run(old, lambda t: st.backup_and_void(t, MONDAY_10AM))
    v1 = new_transport_card(SAMS[A])
    tap_run(v1, lambda t: rekey.rekey_card(t, st.sam, A, 1, st.event_log, MONDAY_10AM, rekey.WASH))
    with pytest.raises(Refusal) as r:
        tap_run(v1, lambda t: st.replace(t, backup, MONDAY_10AM))
    assert r.value.reason_code == "no_subsidy_purse" and "15.00" in r.value.message
    assert v1.state.status == 0 and "issue.card.intent" not in kinds(st)[-1:]


def test_the_void_proof_covers_the_subsidy_purse(platform, tmp_path):
    """APPLICATION BLOCK P1 01 (84 1E 01 00 08 <MAC> 1C): 20 data bytes, MAC'd under K_UPDATE after challenge || 1E."""
    from sam.crypto import mac8

    old = old_card(platform, subsidy=(1_234, EXPIRY))
    st = station(platform, tmp_path, A)
    seen = []

    def run(t):
        info = st._select(t)

        def spy(apdu):
            answer = t(apdu)
            seen.append((apdu, answer))
            return answer

        return rekey.AdminChannel(spy, st.sam, info).block(with_subsidy=True)

    frozen, _ = tap_run(old, run)
    (_, challenge), (apdu, answer) = seen[-2][0:2], seen[-1]
    challenge = challenge[:8]
    assert apdu[:5] == bytes.fromhex("841E010008") and apdu[-1] == 0x1C and len(apdu) == 14
    data = bytes.fromhex("00001388 0000 0000 000004D2 20261231 0000 0000".replace(" ", ""))
    assert answer[:20] == data and answer[-2:] == bytes.fromhex("9000") and len(answer) == 30
    from tests.test_card_spec_tables import DOC

    assert "< " + data.hex(" ").upper() + " <MAC: 8> 90 00" in DOC and "> 84 1E 01 00 08 <MAC: 8> 1C" in DOC
    key = old.sub_application(A).update_key
    assert answer[20:28] == mac8(Algorithm.AES128, key, challenge + b"\x1e" + data)
    assert answer[20:28] != mac8(Algorithm.AES128, key, challenge + b"\x1e" + data[:8])  # P1 00's input
    assert frozen.subsidy == cp.FrozenSubsidy(1_234, EXPIRY, 0, 0) and frozen.balance == 5_000
    # a version 2 card without a subsidy purse refuses P1 01 (nothing changes): 6A 81
    bare = old_card(platform, register=False)
    bare.sub_application(A).subsidy = None
    with pytest.raises(cp.CardProtocolError):
        tap_run(bare, lambda t: rekey.AdminChannel(t, st.sam, st._select(t)).block(with_subsidy=True))
    assert bare.sub_application(A).status == 1


def _round(platform, tmp_path, k, old_asn, new_asn, phase):
    """One replacement of a card with 20.00 subsidy and 50.00 cash, torn after APDU k of `phase`."""
    old = old_card(platform, subsidy=(2_000, EXPIRY), asn=old_asn)
    st = station(platform, tmp_path, A)
    if phase == "void":
        try:
            backup, _ = tap_run(old, lambda t: st.backup_and_void(t, MONDAY_10AM), tear_after=k)
        except (CardRemoved, Refusal):
            backup, _ = tap_run(old, lambda t: st.backup_and_void(t, MONDAY_10AM))
    else:
        backup, _ = tap_run(old, lambda t: st.backup_and_void(t, MONDAY_10AM))
    new = blank_card(new_asn)
    wash(st, new)
    done = False
    if phase == "new":
        try:
            tap_run(new, lambda t: st.replace(t, backup, MONDAY_10AM), tear_after=k)
            done = True
        except (CardRemoved, Refusal):
            pass
    if not done:
        tap_run(new, lambda t: st.replace(t, backup, MONDAY_10AM + dt.timedelta(seconds=30)))
    return st, old, new, backup


def test_a_replacement_torn_at_every_apdu_carries_cash_and_subsidy_exactly_once(platform, tmp_path):
    # the untorn replacement, to count its APDUs on the new card (the rounds below tear after each of them)
    (tmp_path / "count").mkdir()
    st = station(platform, tmp_path / "count", A)
    backup, _ = tap_run(old_card(platform, subsidy=(2_000, EXPIRY)), lambda t: st.backup_and_void(t, MONDAY_10AM))
    new = blank_card(NEW)
    wash(st, new)
    _, n = tap_run(new, lambda t: st.replace(t, backup, MONDAY_10AM))
    platform.cancel(NEW.hex().upper(), settle=True)  # frees the phone number for the rounds
    assert n == 16  # SELECT x2, 5 secured writes (GET CHALLENGE + UPDATE BINARY), cash load 2, subsidy load 2
    for k in range(1, n):
        d = tmp_path / f"r{k}"
        d.mkdir()
        old_asn, new_asn = bytes([0x10, k]) + bytes(6), bytes([0x20, k]) + bytes(6)
        st, old, new, _ = _round(platform, d, k, old_asn, new_asn, "new")
        assert (cash(new), sub(new).balance, sub(new).expiry) == (5_000, 2_000, bytes.fromhex("20261231")), k
        assert sub(new).online_counter == 1 and new.sub_application(A).purse.online_counter == 1, k
        assert kinds(st).count("issue.restore_subsidy") == 1 and kinds(st).count("issue.replace") == 1, k
        assert platform.card(new_asn.hex().upper())["balance_cents"] == cash(new), k
        platform.cancel(new_asn.hex().upper(), settle=True)


def test_a_void_torn_at_every_apdu_backs_up_the_same_subsidy(platform, tmp_path):
    for k in range(1, 12):
        d = tmp_path / f"v{k}"
        d.mkdir()
        old_asn, new_asn = bytes([0x30, k]) + bytes(6), bytes([0x40, k]) + bytes(6)
        st, old, new, backup = _round(platform, d, k, old_asn, new_asn, "void")
        assert (backup.subsidy_balance, backup.subsidy_expiry) == (2_000, EXPIRY), k
        assert (sub(new).balance, cash(new)) == (2_000, 5_000), k
        assert kinds(st).count("issue.void") == 1, k
        platform.cancel(new_asn.hex().upper(), settle=True)


def test_the_issuing_command_line_says_what_became_of_the_subsidy(tmp_path, capsys):
    """`onecard issue replace --old-card OLD --card NEW` with the platform in process: the subsidy is carried."""
    from central.db import load_signing_key, write_signing_key
    from onecard.cli import main
    from sam.keystore import KeystoreUnlock
    from sam.software import SoftwareSam
    from simulator.card import MultiCardStateFile

    d = tmp_path
    (d / "pass").write_text("lab bench\n")
    ks = ["--keystore", d / "ks", "--passphrase-file", d / "pass", "--enterprise", ENT]
    assert main([str(a) for a in ("sam", "create-keystore", "--out", d / "ks", "--passphrase-file", d / "pass",
                                  "--enterprise", ENT)]) == 0  # fmt: skip
    write_signing_key(d / "pf.key")
    pf = Platform(d / "platform.db", load_signing_key(d / "pf.key"))
    pf.add_enterprise(ENT, "Acme")
    pf.add_holder(ENT, "E1001", "Zhang Wei", phone="13800000001")
    factory = SoftwareSam.open(d / "ks", KeystoreUnlock.from_passphrase_file(d / "pass"))
    app = sub_application(factory, person(A, "E1001", "Zhang Wei", {1, 2}, opening_balance=2_500), "Office")
    app.subsidy = SubsidyPurse(1_800, bcd.encode_date(dt.date(2099, 12, 31)), 100_000)
    MultiCardStateFile(d / "old.json").save(multi_card([app], issuer_sam=ISSUER_SAM))
    pf.issue_card(ENT, "E1001", app.asn.hex().upper(), {"door_groups": [1, 2]}, balance_cents=2_500)
    pf.close()
    new = multi_card([transport_sub_application(factory, A, "Office")], issuer_sam=ISSUER_SAM)
    MultiCardStateFile(d / "new.json").save(new)
    wash = ["issue", "wash", *ks, "--card", d / "new.json", "--log", d / "station.db", "--to-version", 1]
    assert main([str(a) for a in wash]) == 0, capsys.readouterr().err
    capsys.readouterr()
    lab = ["--lab-platform-db", d / "platform.db", "--lab-platform-key", d / "pf.key"]
    args = ["issue", "replace", *ks, "--log", d / "station.db", "--wait", "2", *lab]
    code = main([str(a) for a in (*args, "--old-card", d / "old.json", "--card", d / "new.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    new_state = MultiCardStateFile(d / "new.json").load().apps[0]
    assert (new_state.purse.balance, new_state.subsidy.balance) == (2_500, 1_800)
    assert out.rstrip().endswith("balance and rights carried over; subsidy 18.00 yuan carried over")
    # cancelling the new card: the cash refunded to the holder, the subsidy returned to the enterprise
    cancel = ["issue", "cancel", *ks, "--log", d / "station.db", "--wait", "2", *lab, "--card", d / "new.json"]
    assert main([str(a) for a in (*cancel, "--settle")]) == 0, capsys.readouterr().err
    assert (
        capsys.readouterr()
        .out.rstrip()
        .endswith(
            "card cancelled; balance settled: 25.00 yuan refunded to the holder; subsidy 18.00 yuan returned to the "
            "enterprise (not paid out)"
        )
    )
    pf = Platform(d / "platform.db", load_signing_key(d / "pf.key"))
    new_asn = new_state.asn.hex().upper()
    assert pf.card(new_asn)["status"] == "CANCELLED"
    # the platform books its own ledger: this subsidy was put on the old card directly, so it knew none of it; what
    # the card froze is kept with the void (its MAC unchecked: this platform holds no UPDATE key)
    assert pf.subsidy_report(ENT)["returned"] == 0
    assert (pf.voided(new_asn)["subsidy_cents"], pf.voided(new_asn)["mac_status"]) == (1_800, "unchecked")
    pf.close()
