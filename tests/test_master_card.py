"""The key master card (docs/keys.md): PIN, key versions, exports to PSAMs and keystores, 二次洗卡, backup/restore.

Card-level tests feed APDUs to the simulated cards; the loading tests go through real pcscd + vpcd with the master
card in slot 3 and the PSAM in slot 2, and record every APDU both ways to check no key byte ever crosses in clear.
"""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from sam import master_card as mc
from sam.interface import Algorithm, CardIdentity, PurchaseSession
from sam.keystore import Keystore, MasterCardAnchor
from sam.pcsc_sam import KeyLoadRefused, PcscSam
from sam.sam_state import SamState
from sam.software import SoftwareSam
from simulator.master_card import (
    MasterCardApplet,
    MasterCardStateFile,
    load_master_card,
    new_master_card_state,
    restored_master_card_state,
    write_master_card,
)
from simulator.psam import PsamApplet, PsamState, load_psam, psam_from_keystore, write_psam

E = bytes.fromhex("00010001")
OTHER_E = bytes.fromhex("00020002")
PIN = b"246810"
MASTER_SLOT = 3
PSAM_SLOT = 2


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


SELECT = h("00 A4 04 00 09 F0 4F 4E 45 43 41 52 44 4D 00")


class InProcess:
    """A connection straight to a simulated card, recording every exchange."""

    def __init__(self, card) -> None:
        self.card = card
        self.atr = card.atr
        self.log: list[tuple[bytes, bytes]] = []
        card.power_on()

    def transmit(self, apdu: bytes) -> bytes:
        answer = self.card.transmit(apdu)
        self.log.append((bytes(apdu), answer))
        return answer

    def close(self) -> None:
        pass


class Recording:
    """A VirtualCard wrapper for vpcd that records every APDU and answer."""

    def __init__(self, card) -> None:
        self.card = card
        self.atr = card.atr
        self.log: list[tuple[bytes, bytes]] = []

    def power_on(self) -> None:
        self.card.power_on()

    def power_off(self) -> None:
        self.card.power_off()

    def transmit(self, apdu: bytes) -> bytes:
        answer = self.card.transmit(apdu)
        self.log.append((bytes(apdu), answer))
        return answer


def make_master(tmp_path, name="master.json", enterprise=E, versions=1) -> MasterCardApplet:
    path = tmp_path / name
    write_master_card(path, new_master_card_state(enterprise, PIN))
    card = load_master_card(path)
    client = mc.MasterCardClient(InProcess(card))
    client.verify_pin(PIN)
    for _ in range(versions):
        client.generate_version()
    card.power_off()
    return card


def selected(card) -> MasterCardApplet:
    card.power_on()
    assert card.transmit(SELECT) == h("6F 10 84 09 F0 4F 4E 45 43 41 52 44 4D A5 03 C0 01 01 90 00")
    return card


def file_keys(path) -> list[bytes]:
    """Every key in a simulated card file (master card or PSAM): what must never cross the wire in clear."""
    doc = json.loads(open(path).read())
    keys = [bytes.fromhex(k["key"]) for k in doc["keys"]]
    if "identity_seed" in doc:
        keys.append(bytes.fromhex(doc["identity_seed"]))
    return keys


def assert_no_key_on_the_wire(logs, keys) -> None:
    assert keys
    wire = [bytes(b) for log in logs for exchange in log for b in exchange]
    assert wire
    for key in keys:
        # Any 8-byte window of a key would be a leak, not only the whole key split across nothing.
        for part in (key[:8], key[8:16]):
            assert not any(part in apdu for apdu in wire), "key bytes crossed the wire in clear"


# --- PIN -------------------------------------------------------------------------------------------


def test_pin_retry_counter_blocks_for_good_across_power_cycles_and_reloads(tmp_path):
    card = selected(make_master(tmp_path))
    assert card.transmit(h("00 20 00 01")) == h("63 C3")
    assert card.transmit(h("00 20 00 01 06") + b"111111") == h("63 C2")
    assert card.transmit(h("00 20 00 01 06") + PIN) == h("90 00")  # a right PIN resets the counter
    assert card.transmit(h("00 20 00 01")) == h("90 00")
    for left in (2, 1, 0):
        assert card.transmit(h("00 20 00 01 06") + b"000000") == bytes([0x63, 0xC0 | left])
    assert card.transmit(h("00 20 00 01 06") + PIN) == h("69 83")  # even the right PIN, now
    key_related = [
        h("80 D0 00 00 00"),
        h("80 CA 00 00 00"),
        h("80 E6 00 00 20") + bytes(32),
        h("80 E4 02 00 29 01") + bytes(40),
        h("00 24 00 01 0D 06") + PIN + b"135791",
        h("00 20 00 01"),
    ]
    for apdu in key_related:
        assert card.transmit(apdu) == h("69 83"), apdu.hex()
    # GET CARD INFO still tells the administrator what happened: 0 tries left.
    assert card.transmit(h("80 CA 01 00 00"))[4] == 0
    card.power_off()
    selected(card)
    assert card.transmit(h("00 20 00 01 06") + PIN) == h("69 83")
    reloaded = selected(load_master_card(tmp_path / "master.json"))
    for apdu in key_related:
        assert reloaded.transmit(apdu) == h("69 83")


def test_the_decrement_is_in_eeprom_before_the_pin_is_compared(tmp_path, monkeypatch):
    card = selected(make_master(tmp_path))
    saved = []
    real = MasterCardStateFile.save
    monkeypatch.setattr(MasterCardStateFile, "save", lambda self, s: (saved.append(s.pin_tries_left), real(self, s)))
    assert card.transmit(h("00 20 00 01 06") + PIN) == h("90 00")
    assert saved == [2, 3]  # a card pulled between the two writes has used a try


def test_wrong_pin_reveals_nothing_and_key_operations_need_the_pin(tmp_path):
    card = selected(make_master(tmp_path))
    target = mc.KeystoreTarget()
    export = h("80 E4 02 00 29 02") + target.target_id + target.public_key
    assert card.transmit(export) == h("69 82")
    assert card.transmit(h("80 D0 00 00 00")) == h("69 82")
    assert card.transmit(h("80 E6 00 00 20") + target.public_key) == h("69 82")
    assert card.transmit(h("80 C2 00 00 00")) == h("69 85")  # nothing to read
    assert card.transmit(h("00 20 00 01 06") + b"999999") == h("63 C2")  # two bytes: no data, ever
    assert card.transmit(export) == h("69 82")
    assert card.transmit(h("00 20 00 01 03") + b"12a") == h("6A 80")  # not a PIN: no try used
    assert card.transmit(h("00 20 00 01")) == h("63 C2")


def test_change_pin(tmp_path):
    card = selected(make_master(tmp_path))
    client = mc.MasterCardClient(InProcess(card))
    client.change_pin(PIN, b"13579135")
    card.power_off()
    client = mc.MasterCardClient(InProcess(card))
    with pytest.raises(mc.WrongPin, match="2 tries left"):
        client.verify_pin(PIN)
    client.verify_pin(b"13579135")


def test_versions_only_grow_and_key_info_never_shows_keys(tmp_path):
    card = make_master(tmp_path, versions=2)
    client = mc.MasterCardClient(InProcess(card))
    infos = client.key_infos()
    assert sorted({i.version for i in infos}) == [0, 1, 2]
    assert len(infos) == 2 + 2 * 10
    client.verify_pin(PIN)
    with pytest.raises(mc.MasterCardError, match="exists already"):
        client.generate_version(2)
    version, _ = client.generate_version(7)
    assert version == 7 and client.card_info().latest_version == 7
    keys = file_keys(tmp_path / "master.json")
    assert_no_key_on_the_wire([client._connection.log], keys)


# --- loading PSAMs and keystores over pcscd --------------------------------------------------------


def session(algorithm=Algorithm.AES128, version=1) -> PurchaseSession:
    card = CardIdentity(h("1122334455667788"), E, version, algorithm)
    return PurchaseSession(card, h("0A0B0C0D"), 7, 1250, h("000000000101"), h("20260131"), h("123456"))


def write_blank_psam(path) -> None:
    write_psam(path, PsamState(Keystore([]), SamState()))


def test_psam_and_keystore_loaded_from_the_master_card_compute_the_same_macs_and_no_key_crosses(tmp_path, pcscd, vicc):
    make_master(tmp_path)
    write_blank_psam(tmp_path / "psam.json")
    master = Recording(load_master_card(tmp_path / "master.json"))
    psam_card = Recording(load_psam(tmp_path / "psam.json"))
    vicc(MASTER_SLOT).insert(master)
    vicc(PSAM_SLOT).insert(psam_card)

    client = mc.MasterCardClient.open(pcscd.slots[MASTER_SLOT].name)
    psam = PcscSam(pcscd.slots[PSAM_SLOT].name, timeout=3)
    try:
        assert psam.key_infos() == []
        challenge = psam.begin_key_load()
        assert challenge.trust == 0
        client.verify_pin(PIN)
        blob = client.export_for_target("pos", mc.TARGET_PSAM, challenge.serial, challenge.ephemeral_public_key)
        assert psam.load_keys(blob) == 4  # purchase + load, AES and SM4, version 1

        target = mc.KeystoreTarget()
        keys, anchor = target.open(
            client.export_for_target("pos", mc.TARGET_KEYSTORE, target.target_id, target.public_key),
            client.card_info().anchor(),
        )
        software = SoftwareSam(Keystore(keys, anchor))
        assert {(i.purpose, i.version, i.algorithm, i.kcv) for i in psam.key_infos()} == {
            (i.purpose, i.version, i.algorithm, i.kcv) for i in software.key_infos()
        }
        for algorithm in Algorithm:
            assert psam.purchase_mac1(session(algorithm)) == software.purchase_mac1(session(algorithm))
        psam_infos = psam.key_infos()
    finally:
        psam.close()
        client.close()

    master_kcvs = {
        (i.purpose, i.version, i.algorithm): i.kcv
        for i in mc.MasterCardClient(InProcess(load_master_card(tmp_path / "master.json"))).key_infos()
    }
    assert all(master_kcvs[(i.purpose, i.version, i.algorithm)] == i.kcv for i in psam_infos)
    doc = json.loads((tmp_path / "psam.json").read_text())
    assert doc["master_card"]["enterprise_id"] == "00010001" and len(doc["serial"]) == 16
    keys = file_keys(tmp_path / "master.json") + file_keys(tmp_path / "psam.json")
    assert_no_key_on_the_wire([master.log, psam_card.log], keys)
    assert any(apdu[:2] == h("80 E2") for apdu, _ in psam_card.log)  # the load did go over the wire


def in_process_psam(applet: PsamApplet) -> PcscSam:
    return PcscSam(lambda: InProcess(applet))


def load(client: mc.MasterCardClient, psam: PcscSam, role="pos", pin=PIN) -> int:
    challenge = psam.begin_key_load()
    client.verify_pin(pin)
    return psam.load_keys(
        client.export_for_target(role, mc.TARGET_PSAM, challenge.serial, challenge.ephemeral_public_key)
    )


def test_second_loading_needs_the_same_master_cards_signature(tmp_path):
    a = mc.MasterCardClient(InProcess(make_master(tmp_path, "a.json")))
    b = mc.MasterCardClient(InProcess(make_master(tmp_path, "b.json")))  # same enterprise, another card
    write_blank_psam(tmp_path / "psam.json")
    psam = in_process_psam(load_psam(tmp_path / "psam.json"))
    load(a, psam)
    with pytest.raises(KeyLoadRefused, match="not signed by the key master card this PSAM trusts") as refused:
        load(b, psam)
    assert refused.value.sw == 0x6982

    # A blob with A's header but re-signed by B: still refused, the PSAM checks against the key it stored.
    challenge = psam.begin_key_load()
    a.verify_pin(PIN)
    blob = a.export_for_target("pos", mc.TARGET_PSAM, challenge.serial, challenge.ephemeral_public_key)
    tampered = blob[:-64] + bytes(64)
    with pytest.raises(KeyLoadRefused) as refused:
        psam.load_keys(tampered)
    assert refused.value.sw == 0x6982

    # 二次洗卡 with the right card: version 2 is added, version 1 kept.
    a.verify_pin(PIN)
    a.generate_version()
    assert load(a, psam) == 8
    assert sorted({i.version for i in psam.key_infos()}) == [1, 2]
    # The state survives a reload of the PSAM file: still pinned to A.
    again = in_process_psam(load_psam(tmp_path / "psam.json"))
    with pytest.raises(KeyLoadRefused):
        load(b, again)
    assert load(a, again) == 8


def test_a_psam_made_from_a_keystore_refuses_any_master_card_load(tmp_path):
    a = mc.MasterCardClient(InProcess(make_master(tmp_path)))
    target = mc.KeystoreTarget()
    a.verify_pin(PIN)
    keys, _ = target.open(
        a.export_for_target("pos", mc.TARGET_KEYSTORE, target.target_id, target.public_key), a.card_info().anchor()
    )
    write_psam(tmp_path / "psam.json", psam_from_keystore(Keystore(keys)))
    psam = in_process_psam(load_psam(tmp_path / "psam.json"))
    assert psam.begin_key_load().trust == 1
    with pytest.raises(KeyLoadRefused) as refused:
        load(a, psam)
    assert refused.value.sw == 0x6982


def test_a_replayed_export_is_refused_by_another_psam_and_by_the_same_one(tmp_path):
    a = mc.MasterCardClient(InProcess(make_master(tmp_path)))
    write_blank_psam(tmp_path / "p1.json")
    write_blank_psam(tmp_path / "p2.json")
    p1 = in_process_psam(load_psam(tmp_path / "p1.json"))
    p2 = in_process_psam(load_psam(tmp_path / "p2.json"))
    c1 = p1.begin_key_load()
    a.verify_pin(PIN)
    blob = a.export_for_target("pos", mc.TARGET_PSAM, c1.serial, c1.ephemeral_public_key)
    p2.begin_key_load()
    with pytest.raises(KeyLoadRefused, match="another PSAM or an earlier session") as refused:
        p2.load_keys(blob)
    assert refused.value.sw == 0x6988 and p2.key_infos() == []
    assert p1.load_keys(blob) == 4
    p1.begin_key_load()
    with pytest.raises(KeyLoadRefused) as refused:
        p1.load_keys(blob)  # a new session has a new ephemeral key
    assert refused.value.sw == 0x6988
    with pytest.raises(KeyLoadRefused) as refused:
        p1.load_keys(blob)  # and without BEGIN KEY LOAD there is nothing to load into
    assert refused.value.sw == 0x6985


def test_the_card_refuses_psam_exports_for_roles_a_psam_never_holds(tmp_path):
    card = selected(make_master(tmp_path))
    assert card.transmit(h("00 20 00 01 06") + PIN) == h("90 00")
    for role in ("issuing", "platform"):
        apdu = (
            bytes([0x80, 0xE4, mc.ROLE_CODES[role], 0x00, 0x29, 0x01])
            + bytes(8)
            + X25519PrivateKey.generate().public_key().public_bytes_raw()
        )
        assert card.transmit(apdu) == h("6A 80")


def test_a_keystore_export_is_bound_to_its_target_and_card(tmp_path):
    a = mc.MasterCardClient(InProcess(make_master(tmp_path, "a.json")))
    b_info = mc.MasterCardClient(InProcess(make_master(tmp_path, "b.json"))).card_info()
    t1, t2 = mc.KeystoreTarget(), mc.KeystoreTarget()
    a.verify_pin(PIN)
    blob = a.export_for_target("door", mc.TARGET_KEYSTORE, t1.target_id, t1.public_key)
    with pytest.raises(mc.ExportError, match="another target"):
        t2.open(blob, a.card_info().anchor())
    with pytest.raises(mc.ExportError, match="another key master card"):
        mc.KeystoreTarget.open(t1, blob, b_info.anchor())
    t3 = mc.KeystoreTarget()
    blob = a.export_for_target("door", mc.TARGET_KEYSTORE, t3.target_id, t3.public_key)
    counter = mc.parse_export(blob).header.counter
    stale = MasterCardAnchor(E, a.card_info().public_key, counter)
    with pytest.raises(mc.ExportError, match="older"):
        t3.open(blob, stale)
    altered = bytearray(blob)
    altered[mc.HEADER_SIZE] ^= 1
    t4 = mc.KeystoreTarget()
    with pytest.raises(mc.ExportError):
        t4.open(bytes(altered), a.card_info().anchor())


# --- backup --------------------------------------------------------------------------------------


def test_backup_restores_into_a_new_card_with_the_same_kcvs_and_identity(tmp_path):
    original = make_master(tmp_path, versions=2)
    a = mc.MasterCardClient(InProcess(original))
    recipient = X25519PrivateKey.generate()
    a.verify_pin(PIN)
    blob = a.backup(recipient.public_key().public_bytes_raw())
    keys = file_keys(tmp_path / "master.json")
    assert_no_key_on_the_wire([a._connection.log], keys)

    contents = mc.open_backup(blob, recipient)
    assert "hidden" in repr(contents.identity_seed)
    write_master_card(
        tmp_path / "restored.json",
        restored_master_card_state(
            contents.enterprise_id, contents.identity_seed.reveal(), contents.counter, contents.keys, b"97531864"
        ),
    )
    b = mc.MasterCardClient(InProcess(load_master_card(tmp_path / "restored.json")))
    assert [(i.purpose, i.version, i.algorithm, i.kcv) for i in b.key_infos()] == [
        (i.purpose, i.version, i.algorithm, i.kcv) for i in a.key_infos()
    ]
    info_a, info_b = a.card_info(), b.card_info()
    assert info_b.public_key == info_a.public_key and info_b.enterprise_id == E
    # The restored card resumes its export counter far beyond the backup's, so exports the old card made after the
    # backup never look newer than the restored card's (docs/keys.md 5.3).
    assert info_b.export_counter == mc.parse_export(blob).header.counter + mc.RESTORE_COUNTER_SKIP

    # A PSAM pinned to the original accepts the restored card: the enterprise does not lose its PSAMs.
    write_blank_psam(tmp_path / "psam.json")
    psam = in_process_psam(load_psam(tmp_path / "psam.json"))
    load(a, psam)
    assert load(b, psam, "pos", pin=b"97531864") == 8

    with pytest.raises(mc.ExportError, match="another recipient"):
        mc.open_backup(blob, X25519PrivateKey.generate())
    altered = bytearray(blob)
    altered[-70] ^= 1
    with pytest.raises(mc.ExportError):
        mc.open_backup(bytes(altered), recipient)


# --- malformed APDUs -------------------------------------------------------------------------------

DOCUMENTED = {
    h(sw)
    for sw in (
        "90 00",
        "65 81",
        "67 00",
        "69 82",
        "69 83",
        "69 85",
        "69 86",
        "6A 80",
        "6A 82",
        "6A 83",
        "6A 84",
        "6A 86",
        "6A 89",
        "6B 00",
        "6D 00",
        "6E 00",
    )
} | {bytes([0x63, 0xC0 | n]) for n in range(4)}

_FUZZ_CARD = None


def fuzz_card() -> MasterCardApplet:
    global _FUZZ_CARD
    if _FUZZ_CARD is None:
        state = new_master_card_state(E, PIN)
        card = MasterCardApplet(state)
        client = mc.MasterCardClient(InProcess(card))
        client.verify_pin(PIN)
        client.generate_version()
        _FUZZ_CARD = card
    return _FUZZ_CARD


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([0x00, 0x80, 0x84, 0xFF]),
    st.sampled_from([0xA4, 0x20, 0x24, 0xCA, 0xD0, 0xE4, 0xE6, 0xC2, 0x00, 0xB0]),
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=60),
    st.booleans(),
    st.booleans(),
)
def test_malformed_apdus_get_only_documented_status_words(cla, ins, p1, p2, data, with_le, verify_first):
    card = fuzz_card()
    state = card.state
    if verify_first:
        card.transmit(SELECT)
        card.transmit(h("00 20 00 01 06") + PIN)
    apdu = bytes([cla, ins, p1, p2]) + (bytes([len(data)]) + data if data else b"") + (b"\x00" if with_le else b"")
    answer = card.transmit(apdu)
    assert answer[-2:] in DOCUMENTED, answer.hex()
    if answer[-2:] != h("90 00"):
        assert len(answer) == 2  # a refusal carries no data
    # Fuzzing never blocks this card for good: reset the PIN counter it may have used.
    card.state = type(state)(**{**card.state.__dict__, "pin_tries_left": 3})


def test_truncated_and_overlong_apdus(tmp_path):
    card = selected(make_master(tmp_path))
    for apdu in (b"", h("80"), h("80 CA 01"), h("80 CA 01 00 05 00"), h("00 20 00 01 07 31 32")):
        assert card.transmit(apdu) == h("67 00")


def test_documented_atr_and_card_info_layout(tmp_path):
    from simulator.master_card import ATR

    assert ATR == h("3B 88 80 01 4F 4E 45 4D 4B 45 59 31 66")
    card = selected(make_master(tmp_path))
    answer = card.transmit(h("80 CA 01 00 00"))
    assert len(answer) == 43 + 2 and answer[:4] == E and answer[4:7] == bytes([3, 1, 12]) and answer[-2:] == h("90 00")
    assert card.transmit(h("80 CA 01 00 01 00")) == h("67 00")
