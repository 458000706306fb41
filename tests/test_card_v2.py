"""Card application version 2 (docs/card-application.md section 9): one card, several enterprises (一卡多用).

Two enterprises' terminals on one card: each decides in 2 card APDUs (door) and pays in 3 (purchase), sees only its
own sub-application; a card without the enterprise is refused in 1 APDU; an unauthenticated reader (scriptor-style
SELECT + READ BINARY / READ RECORD / GET BALANCE over everything) learns only what the spec lists; backup,
cancellation and deletion per sub-application; enterprise B adds its sub-application without A's keys; tears at every
APDU of adding and deleting."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.station_registry import InProcessRegistry
from central.store import Platform
from common import bcd
from common.config import load_config
from sam import purse_crypto
from sam.interface import Algorithm, CardIdentity, KeyPurpose
from sam.keystore import Keystore, MasterKey
from sam.software import SoftwareSam
from simulator.card import (
    AID_V2,
    ISSUER_ENTERPRISE,
    OneCardApplet,
    OneCardV2Applet,
    SubsidyPurse,
    sub_application_aid,
)
from simulator.card_files import load_card
from simulator.inprocess import InProcessReader
from simulator.personalise import Personalisation, multi_card, sub_application, transport_sub_application
from terminal import card_protocol as cp
from terminal import purse_protocol as pp
from terminal import rekey
from terminal import subsidy_protocol as sp
from terminal.blacklist import Blacklist
from terminal.decision import Refusal
from terminal.event_log import EventLog
from terminal.issuing import IssueRequest, IssuingTerminal
from terminal.purse_flow import PurseTerminal
from terminal.reader import CardRemoved
from tests.support import ALL_USAGES, ENTERPRISE, MONDAY_10AM, TERMINAL_TOML, make_keystore, make_terminal

A, B, C = ENTERPRISE, bytes.fromhex("00020002"), bytes.fromhex("00030003")
ISSUING_TERMINAL = "000000000900"


def issuer_keystore() -> Keystore:
    """The card issuer's TRANSPORT master key (enterprise 00000000): K_CARD of every version 2 card."""
    return Keystore(
        [MasterKey.generate(ISSUER_ENTERPRISE, KeyPurpose.TRANSPORT, 0, alg, ALL_USAGES) for alg in Algorithm]
    )


def enterprise_keystore(enterprise: bytes) -> Keystore:
    ks = make_keystore(enterprise, versions=(1,))
    transport = [MasterKey.generate(enterprise, KeyPurpose.TRANSPORT, 0, alg, ALL_USAGES) for alg in Algorithm]
    return Keystore([*ks, *transport])


KS = {e: enterprise_keystore(e) for e in (A, B, C)}
ISSUER = issuer_keystore()
SAMS = {e: SoftwareSam(ks) for e, ks in KS.items()}
ISSUER_SAM = SoftwareSam(ISSUER)


def person(enterprise, employee, name, groups, **kw):
    return Personalisation(
        enterprise_id=enterprise,
        employee_no=employee,
        name=name,
        door_groups=frozenset(groups),
        valid_from=dt.date(2026, 1, 1),
        valid_to=dt.date(2028, 12, 31),
        **kw,
    )


def two_enterprise_card(path=None, balance_a=10_000, balance_b=5_000) -> OneCardV2Applet:
    """Zhang Wei at the office (A) and at the residential community (B), one card."""
    from simulator.card import MultiCardStateFile

    apps = [
        sub_application(SAMS[A], person(A, "E1001", "Zhang Wei", {1, 2}, opening_balance=balance_a), "Office"),
        sub_application(SAMS[B], person(B, "R-0707", "张伟", {1}, opening_balance=balance_b), "Community"),
    ]
    state = multi_card(apps, issuer_sam=ISSUER_SAM)
    store = None
    if path is not None:
        store = MultiCardStateFile(path)
        store.save(state)
    return OneCardV2Applet(state, store)


def tap(terminal, card, tear_after=None):
    reader = InProcessReader()
    reader.tap(card, tear_after=tear_after)
    decision = terminal.handle_tap(reader.wait_for_card(0), MONDAY_10AM)
    return decision, reader.apdu_count


def tap_run(card, fn, tear_after=None):
    reader = InProcessReader()
    reader.tap(card, tear_after=tear_after)
    conn = reader.wait_for_card(0)
    try:
        return fn(conn.transmit), reader.apdu_count
    finally:
        reader.remove()


def pos_terminal(tmp_path, enterprise):
    tag = enterprise.hex()
    cfg = tmp_path / f"pos-{tag}.toml"
    toml = TERMINAL_TOML.format(kind="pos", db=tmp_path / f"pos-{tag}.db", bl=tmp_path / f"pos-{tag}-bl.db")
    cfg.write_text(toml.replace('enterprise_id = "00010001"', f'enterprise_id = "{tag}"'), encoding="utf-8")
    config = load_config(cfg)
    return PurseTerminal(
        config,
        SAMS[enterprise],
        EventLog.open(config.terminal.database, config.terminal.id),
        Blacklist.open(config.terminal.blacklist),
    )


# --- each enterprise's terminals ---------------------------------------------------------------------------


def test_each_enterprise_door_decides_in_two_apdus_and_sees_only_its_own_holder(tmp_path):
    card = two_enterprise_card()
    door_a, _ = make_terminal(tmp_path, SAMS[A], "door")
    door_b, _ = make_terminal(tmp_path, SAMS[B], "door", enterprise=B)
    decision, apdus = tap(door_a, card)
    assert (decision.accepted, decision.message, apdus) == (True, "Welcome, Zhang Wei", 2)
    decision, apdus = tap(door_b, card)
    assert (decision.accepted, decision.message, apdus) == (True, "Welcome, 张伟", 2)
    # Counters are per sub-application: one ACCESS READ each.
    assert [a.access_counter for a in card.card.apps] == [1, 1]
    # The two sub-applications have their own ASNs (blacklists, registries and logs are per sub-application).
    assert decision.asn == card.card.apps[1].asn.hex().upper() != card.card.apps[0].asn.hex().upper()


def test_a_card_without_the_enterprise_is_refused_in_one_apdu(tmp_path):
    door_c, _ = make_terminal(tmp_path, SAMS[C], "door", enterprise=C)
    decision, apdus = tap(door_c, two_enterprise_card())
    assert (decision.reason_code, decision.message, apdus) == (
        "other_enterprise",
        "This card has no application for this site",
        1,
    )


def test_an_enterprises_keys_open_nothing_of_another_sub_application(tmp_path):
    """B's door SAM cannot verify A's sub-application even if it asks for it: B holds no key of A's."""
    card = two_enterprise_card()
    rogue, _ = make_terminal(tmp_path, SAMS[B], "door")  # a terminal configured for A but holding only B's keys
    decision, apdus = tap(rogue, card)
    assert decision.reason_code == "unknown_key_version" and apdus == 1
    keys_b = {card.card.apps[1].access_key, card.card.apps[1].update_key}
    assert not keys_b & {card.card.apps[0].access_key, card.card.apps[0].update_key}


def test_purchases_at_each_enterprise_take_three_apdus_and_purses_are_independent(tmp_path):
    card = two_enterprise_card()
    pos_a, pos_b = pos_terminal(tmp_path, A), pos_terminal(tmp_path, B)
    for pos, amount in ((pos_a, 1200), (pos_b, 300)):
        reader = InProcessReader()
        reader.tap(card)
        decision = pos.purchase(reader.wait_for_card(0).transmit, amount, MONDAY_10AM)
        assert decision.accepted and reader.apdu_count == 3
    assert [a.purse.balance for a in card.card.apps] == [10_000 - 1200, 5_000 - 300]
    assert [a.purse.offline_counter for a in card.card.apps] == [1, 1]
    assert [len(a.purse.records) for a in card.card.apps] == [1, 1]


# --- privacy -----------------------------------------------------------------------------------------------


def _scriptor_session(card) -> list[tuple[bytes, bytes]]:
    """Everything an unauthenticated reader can ask: SELECT of the directory and of every known sub-application,
    READ RECORD of every SFI and record, READ BINARY of every SFI at every offset, GET BALANCE, and ACCESS READ."""
    card.power_on()
    seen = []

    def send(apdu: bytes) -> bytes:
        answer = card.transmit(apdu)
        seen.append((apdu, answer))
        return answer

    send(cp.select_command(AID_V2))
    for n in range(1, 9):
        send(bytes([0x00, 0xB2, n, 0xF4, 0x00]))
    for enterprise in (A, B):
        send(cp.select_command(sub_application_aid(enterprise)))
        for sfi in range(1, 31):
            for offset in (0, 16, 32):
                send(bytes([0x00, 0xB0, 0x80 | sfi, offset, 0x00]))
            for n in range(1, 11):
                send(bytes([0x00, 0xB2, n, (sfi << 3) | 4, 0x00]))
        send(bytes.fromhex("805C000204"))
        send(cp.access_read_command(bytes(8), bytes(6)))
        # Every INITIALIZE, for amounts on both sides of any balance and maximum (5.2a: sealed, no 94 01 / 6A 80).
        for amount in PROBE_AMOUNTS:
            send(pp.init_purchase_command(amount, bytes(6)))
            send(pp.init_load_command(amount, bytes(6)))
            send(sp.two_purse_command(amount, bytes(6), "subsidy_first"))
            send(sp.two_purse_command(amount, bytes(6), "cash_first"))
            send(sp.subsidy_load_command(amount, bytes(6), dt.date(2027, 12, 31), 1))
        send(sp.withdraw_command(bytes(6)))
    return seen


PROBE_AMOUNTS = (1, 4_999, 5_000, 5_001, 9_999, 10_000, 10_001, 123_456, 190_000, 200_000, 0x7FFFFFFF, 0xFFFFFFFF)


def _with_subsidy(card, balance: int):
    card.card.apps[0].subsidy = SubsidyPurse(balance, bcd.encode_date(dt.date(2027, 12, 31)), 100_000)
    return card


def test_an_unauthenticated_reader_learns_only_what_the_spec_allows():
    card = two_enterprise_card()
    for app in card.card.apps:  # a purchase record on each, so records exist to be (not) read
        app.purse.records.append(
            {
                "type": 6,
                "counter": 0,
                "amount": 777,
                "terminal": "000000000101",
                "tsn": 5,
                "date": "20261123",
                "time": "100000",
                "balance_after": 4242,
                "proof": "00" * 8,
                "tac": "11" * 8,
            }
        )
    _with_subsidy(card, 2_345)
    seen = _scriptor_session(card)
    answers = b"".join(answer for _, answer in seen)
    secrets = [(2_345).to_bytes(4, "big")]
    for app in card.card.apps:
        secrets += [app.holder[:16].rstrip(b"\0"), app.holder[16:].rstrip(b"\0"), app.access[:16]]
        secrets += [app.purse.balance.to_bytes(4, "big"), app.purse.max_balance.to_bytes(4, "big")]
        secrets += [(4242).to_bytes(4, "big"), (777).to_bytes(4, "big")]
    for secret in secrets:
        assert secret not in answers, secret
    # What the spec (9.3) allows: the directory, each sub-application's FCI and EF_APP, ACCESS READ ciphertext, and
    # INITIALIZE answers whose purse fields are sealed (5.2a).
    allowed_ok = {"select", "directory", "ef_app", "access_read", "initialize"}
    for apdu, answer in seen:
        if answer[-2:] != b"\x90\x00":
            continue
        kind = (
            "select"
            if apdu[1] == 0xA4
            else "directory"
            if apdu[1] == 0xB2 and apdu[3] == 0xF4
            else "ef_app"
            if apdu[1] == 0xB0 and apdu[2] == 0x81
            else "access_read"
            if apdu[:2] == b"\x80\x3a"
            else "initialize"
            if apdu[:2] == b"\x80\x50"
            else "other"
        )
        assert kind in allowed_ok, (apdu.hex(), answer.hex())
    refused = {answer.hex() for apdu, answer in seen if apdu[1] == 0xB0 and apdu[2] in (0x82, 0x83, 0x84)}
    assert refused == {"6982"}
    # Every INITIALIZE answers 90 00, whatever the amount: no 94 01 / 6A 80 bounds a balance or a maximum (5.2a).
    # B has no subsidy purse: its subsidy INITIALIZEs answer 6A 81 (its FCI has no C9, so that is no news).
    initialize = [(apdu, answer[-2:]) for apdu, answer in seen if apdu[:2] == b"\x80\x50"]
    half = len(initialize) // 2
    assert {sw for _, sw in initialize[:half]} == {b"\x90\x00"}
    assert {sw for apdu, sw in initialize[half:] if apdu[3] == 0x02} == {b"\x90\x00"}
    assert {sw for apdu, sw in initialize[half:] if apdu[3] != 0x02} == {b"\x6a\x81"}


def test_balances_change_no_status_word_an_unauthenticated_reader_sees():
    """Two cards alike but for their balances (cash and subsidy): the same commands, the same status words and
    answer lengths, and the sealed balance fields differ from the clear ones (card-application.md 5.2a, 9.3)."""
    runs = [
        _scriptor_session(_with_subsidy(two_enterprise_card(balance_a=a, balance_b=b), s))
        for a, b, s in ((10_000, 5_000, 2_345), (199_999, 1, 0xFFFF))
    ]
    assert [apdu for apdu, _ in runs[0]] == [apdu for apdu, _ in runs[1]]
    assert [(len(x), x[-2:]) for _, x in runs[0]] == [(len(y), y[-2:]) for _, y in runs[1]]


def test_a_v2_initialize_seals_the_balance_and_debit_refuses_what_it_does_not_cover(tmp_path):
    """The balance field of a v2 INITIALIZE is the balance XOR the SK_BAL keystream; a DEBIT with a right MAC1 for an
    amount above the balance is refused 94 01 and changes nothing; a POS refuses it from its SAM before any DEBIT."""
    card = two_enterprise_card(balance_a=1_000)
    app = card.card.apps[0]
    card.power_on()
    card.transmit(cp.select_command(sub_application_aid(A)))
    answer = card.transmit(pp.init_purchase_command(1_500, bytes.fromhex("000000000101")))
    init = pp.parse_init_purchase(answer, sealed=True)
    assert init.balance is None and init.sealed != (1_000).to_bytes(4, "big")
    opened = purse_crypto.seal_purse_data(Algorithm.AES128, app.purse.purchase_key, init.random, 0, init.sealed)
    assert opened == (1_000).to_bytes(4, "big")
    # A MAC1 as the SAM would make it (the card's own key here): DEBIT checks the balance after it.
    sk = purse_crypto.purchase_session_key(Algorithm.AES128, app.purse.purchase_key, init.random, 0, 7)
    date, time_ = bytes.fromhex("20261123"), bytes.fromhex("100000")
    mac1 = purse_crypto.purchase_mac1(Algorithm.AES128, sk, 1_500, bytes.fromhex("000000000101"), date, time_)
    assert card.transmit(pp.debit_command(7, date, time_, mac1)) == b"\x94\x01"
    assert (app.purse.balance, app.purse.offline_counter, app.purse.records) == (1_000, 0, [])
    # The POS: its SAM opens the balance and refuses MAC1; no TSN is taken, nothing is intended, 2 APDUs.
    pos = pos_terminal(tmp_path, A)
    tsn_before = pos.sam._state.last_tsn
    reader = InProcessReader()
    reader.tap(card)
    with pytest.raises(Refusal) as r:
        pos.purchase(reader.wait_for_card(0).transmit, 1_500, MONDAY_10AM)
    assert (
        r.value.reason_code == "insufficient_balance"
        and r.value.message == "Insufficient balance for 15.00: top up first"
    )
    assert reader.apdu_count == 2 and pos.sam._state.last_tsn == tsn_before
    assert [e.kind for e in pos.event_log.events() if e.kind.startswith("pos.")] == []


def test_the_directory_lists_enterprise_name_and_status_only():
    card = two_enterprise_card()
    card.power_on()
    info = cp.parse_directory_select(card.transmit(cp.select_command(cp.AID_V2)))
    assert (info.count, info.serial, info.algorithm) == (2, card.card.serial, Algorithm.AES128)
    entries = [cp.parse_directory_record(card.transmit(cp.read_directory_command(n))) for n in range(1, 4)]
    assert entries == [
        cp.DirectoryEntry(A, "Office", cp.STATUS_ACTIVE),
        cp.DirectoryEntry(B, "Community", cp.STATUS_ACTIVE),
        None,
    ]
    # The same through the Python API the SIM toolkit menu uses.
    assert [(e.enterprise_id, e.name, e.status) for e in card.directory()] == [
        (A, "Office", 1),
        (B, "Community", 1),
    ]
    assert card.balance(B) == 5_000 and card.balance(C) is None


def test_a_version_2_card_survives_its_file_and_opens_through_load_card(tmp_path):
    card = two_enterprise_card(tmp_path / "phone.json")
    door_a, _ = make_terminal(tmp_path, SAMS[A], "door")
    tap(door_a, card)
    again = load_card(tmp_path / "phone.json")
    assert isinstance(again, OneCardV2Applet) and again.card.apps[0].access_counter == 1
    assert json.loads((tmp_path / "phone.json").read_text())["format"] == "onecard-sim-card/2"


# --- administration per sub-application -------------------------------------------------------------------


@pytest.fixture
def platform(tmp_path):
    pf = Platform(tmp_path / "platform.db", Ed25519PrivateKey.generate())
    pf.add_enterprise(A.hex(), "Acme")
    pf.add_enterprise(B.hex(), "Garden Community")
    pf.add_holder(A.hex(), "E1001", "Zhang Wei", phone="13800000001")
    pf.add_holder(B.hex(), "R-0707", "张伟", phone="13800000001")
    yield pf
    pf.close()


def station(platform, tmp_path, enterprise, with_issuer=True):
    keys = [*KS[enterprise], *(ISSUER if with_issuer else [])]
    log = EventLog.open(tmp_path / f"issuing-{enterprise.hex()}.db", ISSUING_TERMINAL)
    return IssuingTerminal(
        SoftwareSam(Keystore(keys)), InProcessRegistry(platform), log, enterprise, bytes.fromhex(ISSUING_TERMINAL)
    )


def snapshot(card, enterprise):
    """A sub-application's state, but for the access counter (which every door tap moves)."""
    doc = card.sub_application(enterprise).to_json()
    doc.pop("access_counter")
    return json.dumps(doc, sort_keys=True)


NEW_ASN = bytes.fromhex("B0B0B0B0B0B0B0B0")


def add_wash_issue(st, card, enterprise, employee, name, tear_after=None, new_asn=NEW_ASN):
    tap_run(card, lambda t: st.add_sub_application(t, name, new_asn, MONDAY_10AM), tear_after)
    tap_run(card, lambda t: rekey.rekey_card(t, st.sam, enterprise, 1, st.event_log, MONDAY_10AM, rekey.WASH))
    request = IssueRequest(enterprise, employee, frozenset({1}), dt.date(2026, 1, 1), dt.date(2028, 12, 31))
    return tap_run(card, lambda t: st.issue(t, request, MONDAY_10AM))[0]


def test_enterprise_b_adds_its_sub_application_without_touching_a(platform, tmp_path):
    state = multi_card(
        [sub_application(SAMS[A], person(A, "E1001", "Zhang Wei", {1, 2}, opening_balance=900), "Office")],
        issuer_sam=ISSUER_SAM,
    )
    card = OneCardV2Applet(state)
    before = snapshot(card, A)
    st = station(platform, tmp_path, B)
    assert not any(k.enterprise_id == A for k in st.sam.key_infos())  # B's station holds none of A's keys
    asn = add_wash_issue(st, card, B, "R-0707", "Community")
    assert asn == "B0B0B0B0B0B0B0B0"
    assert snapshot(card, A) == before
    door_b, _ = make_terminal(tmp_path, SAMS[B], "door", enterprise=B)
    door_a, _ = make_terminal(tmp_path, SAMS[A], "door")
    assert tap(door_b, card)[0].message == "Welcome, 张伟"
    assert tap(door_a, card)[0].message == "Welcome, Zhang Wei"
    assert [(e.name, e.status) for e in card.directory()] == [("Office", 1), ("Community", 1)]
    assert [e.kind for e in st.event_log.events()].count("issue.subapp") == 1
    # The station's wash gave B its own OTA key set (docs/ota.md 2.2), the one B's platform derives; A has none.
    from sam.ota_keys import OtaSam

    keys = OtaSam(st.sam._keystore).personalise_keys(CardIdentity(NEW_ASN, B, 1, Algorithm.AES128))
    b_app = card.sub_application(B)
    assert (b_app.ota_kic, b_app.ota_kid, b_app.ota_counter) == (keys.kic, keys.kid, 0)
    assert card.sub_application(A).ota_kic is None


def test_an_eavesdropper_on_the_issuing_taps_learns_no_holder_data(platform, tmp_path):
    """Personalisation of a v2 sub-application (UPDATE BINARY of EF_HOLDER, EF_ACCESS, EF_PURSE) goes enciphered
    under SK_WRITE and MAC'd over the ciphertext (card-application.md 8.2, 9.11): nothing on the air says who."""
    fresh = OneCardV2Applet(
        multi_card([sub_application(SAMS[A], person(A, "E1001", "Zhang Wei", {1}), "Office")], ISSUER_SAM)
    )
    st = station(platform, tmp_path, B)
    heard: list[bytes] = []

    def recording(transmit):
        def send(apdu: bytes) -> bytes:
            answer = transmit(apdu)
            heard.extend((apdu, answer))
            return answer

        return send

    tap_run(fresh, lambda t: st.add_sub_application(recording(t), "Community", NEW_ASN, MONDAY_10AM))
    tap_run(fresh, lambda t: rekey.rekey_card(recording(t), st.sam, B, 1, st.event_log, MONDAY_10AM, rekey.WASH))
    request = IssueRequest(B, "R-0707", frozenset({1}), dt.date(2026, 1, 1), dt.date(2028, 12, 31))
    tap_run(fresh, lambda t: st.issue(recording(t), request, MONDAY_10AM))
    wire = b"".join(heard)
    assert any(apdu[:2] == b"\x84\xd6" for apdu in heard[::2])  # the writes were heard
    app = fresh.sub_application(B)
    # the card deciphered what it was sent: the holder data is right on the card
    assert app.holder.startswith(b"R-0707\0") and "张伟".encode() in app.holder
    written = [app.holder[16:28], app.access[:12], *([] if app.purse is None else [app.purse.file()[:8]])]
    for secret in (b"R-0707", "张伟".encode(), *written):
        assert secret not in wire, secret
    door_b, _ = make_terminal(tmp_path, SAMS[B], "door", enterprise=B)
    assert tap(door_b, fresh)[0].message == "Welcome, 张伟"


def test_adding_a_sub_application_torn_at_every_apdu_leaves_all_or_nothing(platform, tmp_path):
    st = station(platform, tmp_path, B)
    full = 4  # SELECT (6A 88), SELECT directory, GET CHALLENGE, CREATE
    for k in range(1, full + 1):
        card = OneCardV2Applet(
            multi_card([sub_application(SAMS[A], person(A, "E1001", "Zhang Wei", {1}), "Office")], ISSUER_SAM)
        )
        before = snapshot(card, A)
        with pytest.raises(CardRemoved):
            tap_run(card, lambda t: st.add_sub_application(t, "Community", bytes(7) + b"\x01", MONDAY_10AM), k)
        assert len(card.card.apps) == (2 if k == full else 1), k
        tap_run(card, lambda t: st.add_sub_application(t, "Community", bytes(7) + b"\x01", MONDAY_10AM))
        assert [a.enterprise_id for a in card.card.apps] == [A, B] and snapshot(card, A) == before


def test_a_station_without_the_issuer_key_cannot_add(platform, tmp_path):
    card = OneCardV2Applet(multi_card([], issuer_sam=ISSUER_SAM))
    st = station(platform, tmp_path, B, with_issuer=False)
    with pytest.raises(Refusal) as refused:
        tap_run(card, lambda t: st.add_sub_application(t, "Community", bytes(8), MONDAY_10AM))
    assert refused.value.reason_code == "sam_refused" and card.card.apps == []


def test_backup_of_a_version_2_sub_application_goes_under_secure_messaging(platform, tmp_path):
    card = two_enterprise_card()
    st = station(platform, tmp_path, B)
    holder, access, purse, records = tap_run(card, lambda t: st._read_backup(t, rekey.select_for_admin(t, B)))[0]
    app_b = card.card.apps[1]
    assert (holder, access, purse) == (app_b.holder, app_b.access, app_b.purse.file()[:8])
    assert records == []


def test_deletion_removes_only_that_sub_application_even_torn_at_every_apdu(platform, tmp_path):
    st_b = station(platform, tmp_path, B)
    door_a, _ = make_terminal(tmp_path, SAMS[A], "door")
    door_b, _ = make_terminal(tmp_path, SAMS[B], "door", enterprise=B)
    k = 0
    while True:
        k += 1
        state = multi_card(
            [sub_application(SAMS[A], person(A, "E1001", "Zhang Wei", {1}, opening_balance=900), "Office")],
            issuer_sam=ISSUER_SAM,
        )
        card = OneCardV2Applet(state)
        before = snapshot(card, A)
        add_wash_issue(st_b, card, B, "R-0707", "Community", new_asn=bytes([0xB0] * 7 + [k]))
        try:
            tap_run(card, lambda t: st_b.cancel(t, MONDAY_10AM, deletion=True), tear_after=k)
            done_in_one = True
        except CardRemoved:
            done_in_one = False
            # A torn deletion: the other sub-application still works, B's is either there (voided) or gone.
            assert tap(door_a, card)[0].accepted
            if card.sub_application(B) is not None:
                tap_run(card, lambda t: st_b.cancel(t, MONDAY_10AM, deletion=True))
        assert card.sub_application(B) is None and snapshot(card, A) == before
        assert tap(door_b, card)[0].reason_code == "other_enterprise"
        assert tap(door_a, card)[0].accepted
        if done_in_one:
            break
    assert k > 3


def test_a_door_with_a_psam_deciphers_a_version_2_answer(tmp_path):
    """The door's SAM is a PSAM over APDUs: VERIFY CARD MAC (80 7A) then DECIPHER CARD DATA (80 7E, psam.md 4.7a)."""
    from sam.pcsc_sam import PcscSam
    from simulator.psam import PsamApplet, psam_from_keystore
    from tests.test_master_card import InProcess

    door_keys = Keystore([k for k in KS[A] if k.purpose is KeyPurpose.ACCESS])
    applet = PsamApplet(psam_from_keystore(door_keys))
    connection = InProcess(applet)
    door, _ = make_terminal(tmp_path, PcscSam(lambda: connection), "door")
    decision, apdus = tap(door, two_enterprise_card())
    assert (decision.accepted, decision.message, apdus) == (True, "Welcome, Zhang Wei", 2)
    assert any(apdu[:2] == bytes.fromhex("807E") and answer[-2:] == b"\x90\x00" for apdu, answer in connection.log)


def test_sim_new_card_builds_a_two_enterprise_card_and_doors_of_both_open_it(tmp_path, capsys):
    """`onecard sim new-card --sub-application NAME`: a version 2 card file, one enterprise after the other."""
    from onecard.cli import main

    (tmp_path / "pass").write_text("card office\n")
    for e in ("00010001", "00020002"):
        assert (
            main(
                [
                    "sam",
                    "create-keystore",
                    "--out",
                    str(tmp_path / e),
                    "--passphrase-file",
                    str(tmp_path / "pass"),
                    "--enterprise",
                    e,
                ]
            )
            == 0
        )
    for e, employee, name, label in (
        ("00010001", "E1001", "Zhang Wei", "Office"),
        ("00020002", "R-0707", "张伟", "Community"),
    ):
        code = main(
            [
                "sim",
                "new-card",
                "--out",
                str(tmp_path / "phone.json"),
                "--keystore",
                str(tmp_path / e),
                "--passphrase-file",
                str(tmp_path / "pass"),
                "--enterprise",
                e,
                "--employee",
                employee,
                "--name",
                name,
                "--sub-application",
                label,
            ]
        )
        assert code == 0
    out = capsys.readouterr().out
    assert "the card carries: 00010001 Office, 00020002 Community" in out
    card = load_card(tmp_path / "phone.json")
    assert [(d.enterprise_id.hex(), d.name) for d in card.directory()] == [
        ("00010001", "Office"),
        ("00020002", "Community"),
    ]
    # Adding the same enterprise again is refused with a one-line reason, the file unchanged.
    before = (tmp_path / "phone.json").read_bytes()
    code = main(
        [
            "sim",
            "new-card",
            "--out",
            str(tmp_path / "phone.json"),
            "--keystore",
            str(tmp_path / "00010001"),
            "--passphrase-file",
            str(tmp_path / "pass"),
            "--enterprise",
            "00010001",
            "--employee",
            "E2",
            "--name",
            "X",
            "--sub-application",
            "Again",
        ]
    )
    assert code != 0 and (tmp_path / "phone.json").read_bytes() == before
    assert "already has a sub-application of enterprise 00010001" in capsys.readouterr().err


def test_migration_of_a_version_1_card_to_version_2_carries_holder_rights_and_money(platform, tmp_path):
    """Section 9.8: backup and void the version 1 application, re-personalise the SIM as version 2 with a transport
    sub-application, wash, restore: the balance is carried once, by a load the card proves."""
    from simulator.personalise import personalise

    st_a = station(platform, tmp_path, A)
    v1 = personalise(SAMS[A], person(A, "E1001", "Zhang Wei", {1, 2}, opening_balance=4_321))
    platform.issue_card(A.hex(), "E1001", v1.asn.hex(), {"door_groups": [1, 2]}, balance_cents=4_321)
    old = OneCardApplet(state=v1)
    backup, _ = tap_run(old, lambda t: st_a.backup_and_void(t, MONDAY_10AM))
    assert backup.balance == 4_321 and old.state.status == 2
    # Re-personalisation by the SIM issuer: the same phone now carries a version 2 application.
    new = OneCardV2Applet(multi_card([transport_sub_application(SAMS[A], A, "Office")], issuer_sam=ISSUER_SAM))
    tap_run(new, lambda t: rekey.rekey_card(t, st_a.sam, A, 1, st_a.event_log, MONDAY_10AM, rekey.WASH))
    new_asn, _ = tap_run(new, lambda t: st_a.replace(t, backup, MONDAY_10AM))
    app = new.sub_application(A)
    assert app.purse.balance == 4_321 and (app.holder, app.access) == (v1.holder, v1.access)
    assert platform.card(new_asn)["balance_cents"] == 4_321
    assert platform.card(v1.asn.hex())["status"] == "REPLACED"
    door_a, _ = make_terminal(tmp_path, SAMS[A], "door")
    decision, apdus = tap(door_a, new)
    assert decision.accepted and apdus == 2
    assert tap(door_a, old)[0].reason_code == "voided"
    kinds = [e.kind for e in st_a.event_log.events()]
    assert kinds.count("issue.restore") == 1 and kinds[-1] == "issue.replace"


def test_replacing_a_version_2_sub_application_reads_its_backup_under_secure_messaging(platform, tmp_path):
    st_b = station(platform, tmp_path, B)
    old = two_enterprise_card(balance_b=2_500)
    app_b = old.sub_application(B)
    platform.issue_card(B.hex(), "R-0707", app_b.asn.hex(), {"door_groups": [1]}, balance_cents=2_500)
    reader_log = []

    def logged(t):
        def transmit(apdu):
            answer = t(apdu)
            reader_log.append((apdu, answer))
            return answer

        return st_b.backup_and_void(transmit, MONDAY_10AM)

    backup, _ = tap_run(old, logged)
    assert backup.balance == 2_500 and old.sub_application(B).status == 2 and old.sub_application(A).status == 1
    assert not any(apdu[:2] == b"\x00\xb0" for apdu, _ in reader_log)  # no plain READ BINARY of private files
    assert b"R-0707" not in b"".join(answer for _, answer in reader_log)  # the holder only ever travelled enciphered
    new = OneCardV2Applet(multi_card([transport_sub_application(SAMS[B], B, "Community")], issuer_sam=ISSUER_SAM))
    tap_run(new, lambda t: rekey.rekey_card(t, st_b.sam, B, 1, st_b.event_log, MONDAY_10AM, rekey.WASH))
    tap_run(new, lambda t: st_b.replace(t, backup, MONDAY_10AM))
    assert new.sub_application(B).purse.balance == 2_500
    assert new.sub_application(B).holder == app_b.holder
