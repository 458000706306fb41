"""SoftwareSam: card MAC verification and computation, usage restrictions, personalisation, key hiding."""

from __future__ import annotations

import inspect

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sam import crypto
from sam.interface import (
    Algorithm,
    CardIdentity,
    InvalidCardIdentity,
    KeyNotFound,
    KeyPurpose,
    KeyUsage,
    KeyUsageError,
    MacVerificationError,
    Sam,
    SamError,
)
from sam.keystore import Keystore, KeystoreUnlock, MasterKey, parse_enterprise_id, save_keystore
from sam.software import SoftwareSam

ENTERPRISE = parse_enterprise_id("00010001")
ASN = bytes.fromhex("8601000000001234")
ALL = frozenset(KeyUsage)

KEYS = [
    key
    for algorithm in Algorithm
    for key in (
        MasterKey.generate(ENTERPRISE, KeyPurpose.ACCESS, 1, algorithm, {KeyUsage.VERIFY}),
        MasterKey.generate(ENTERPRISE, KeyPurpose.ACCESS, 2, algorithm, {KeyUsage.VERIFY, KeyUsage.MAC}),
        MasterKey.generate(ENTERPRISE, KeyPurpose.UPDATE, 1, algorithm, {KeyUsage.MAC, KeyUsage.PERSONALISE}),
        MasterKey.generate(ENTERPRISE, KeyPurpose.UPDATE, 2, algorithm, ALL),
        MasterKey.generate(ENTERPRISE, KeyPurpose.TRANSPORT, 0, algorithm, ALL),
    )
]
SAM = SoftwareSam(Keystore(KEYS))


def master(purpose: KeyPurpose, version: int, algorithm: Algorithm) -> bytes:
    return next(k for k in KEYS if k.ident == (ENTERPRISE, purpose, version, algorithm)).key.reveal()


def card(algorithm: Algorithm = Algorithm.AES128, version: int = 2, asn: bytes = ASN) -> CardIdentity:
    return CardIdentity(asn=asn, enterprise_id=ENTERPRISE, key_version=version, algorithm=algorithm)


def card_side_mac(purpose: KeyPurpose, identity: CardIdentity, message: bytes) -> bytes:
    """What a card holding its diversified key computes, written from the spec, not through the SAM."""
    card_key = crypto.diversify(
        identity.algorithm,
        master(purpose, identity.key_version, identity.algorithm),
        identity.asn + identity.enterprise_id,
    )
    return crypto.cmac(identity.algorithm, card_key, message)[:8]


def test_implements_the_sam_protocol():
    for name, method in inspect.getmembers(Sam, inspect.isfunction):
        if not name.startswith("_"):
            assert inspect.signature(getattr(SoftwareSam, name)) == inspect.signature(method), name


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_verify_accepts_the_cards_mac(algorithm):
    message = b"\x00\x01employee 4711 access record"
    identity = card(algorithm, version=1)
    SAM.verify_card_mac(KeyPurpose.ACCESS, identity, message, card_side_mac(KeyPurpose.ACCESS, identity, message))


@given(st.sampled_from(list(Algorithm)), st.binary(max_size=64), st.integers(0, 63))
def test_verify_rejects_a_flipped_mac_bit(algorithm, message, bit):
    identity = card(algorithm, version=1)
    mac = bytearray(card_side_mac(KeyPurpose.ACCESS, identity, message))
    mac[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(MacVerificationError, match="forged, altered, or from a cloned card"):
        SAM.verify_card_mac(KeyPurpose.ACCESS, identity, message, bytes(mac))


@given(st.binary(min_size=1, max_size=64), st.data())
def test_verify_rejects_a_flipped_message_bit(message, data):
    identity = card(Algorithm.SM4, version=1)
    mac = card_side_mac(KeyPurpose.ACCESS, identity, message)
    bit = data.draw(st.integers(0, 8 * len(message) - 1))
    altered = bytearray(message)
    altered[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(MacVerificationError):
        SAM.verify_card_mac(KeyPurpose.ACCESS, identity, bytes(altered), mac)


def test_a_mac_replayed_from_another_card_fails():
    message = b"record"
    mac = card_side_mac(KeyPurpose.ACCESS, card(version=1), message)
    clone = card(version=1, asn=bytes.fromhex("8601000000001235"))
    with pytest.raises(MacVerificationError):
        SAM.verify_card_mac(KeyPurpose.ACCESS, clone, message, mac)


@pytest.mark.parametrize("length", [0, 4, 7, 9, 16])
def test_verify_rejects_wrong_mac_length(length):
    identity = card(version=1)
    full = crypto.cmac(
        Algorithm.AES128,
        crypto.diversify(Algorithm.AES128, master(KeyPurpose.ACCESS, 1, Algorithm.AES128), ASN + ENTERPRISE),
        b"m",
    )
    with pytest.raises(MacVerificationError, match="expected 8"):
        SAM.verify_card_mac(KeyPurpose.ACCESS, identity, b"m", full[:length])


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_card_mac_is_what_the_card_computes(algorithm):
    identity = card(algorithm, version=2)
    assert SAM.card_mac(KeyPurpose.UPDATE, identity, b"write file 3") == card_side_mac(
        KeyPurpose.UPDATE, identity, b"write file 3"
    )
    assert SAM.card_mac(KeyPurpose.ACCESS, identity, b"x") == card_side_mac(KeyPurpose.ACCESS, identity, b"x")


def test_usage_restrictions():
    with pytest.raises(
        KeyUsageError, match=r"purpose access version 1 algorithm aes128 may not be used to mac \(allowed: verify\)"
    ):
        SAM.card_mac(KeyPurpose.ACCESS, card(version=1), b"x")
    with pytest.raises(KeyUsageError, match="may not be used to verify"):
        SAM.verify_card_mac(KeyPurpose.UPDATE, card(version=1), b"x", bytes(8))
    with pytest.raises(KeyUsageError, match="may not be used to personalise"):
        SAM.derive_card_keys(card(version=1), [KeyPurpose.ACCESS])


def test_door_terminal_keystore_only_verifies(tmp_path):
    door = SoftwareSam(Keystore(KEYS).restricted({KeyUsage.VERIFY}, purposes={KeyPurpose.ACCESS}))
    identity = card(version=2)
    door.verify_card_mac(KeyPurpose.ACCESS, identity, b"m", card_side_mac(KeyPurpose.ACCESS, identity, b"m"))
    with pytest.raises(KeyUsageError):
        door.card_mac(KeyPurpose.ACCESS, identity, b"m")
    with pytest.raises(KeyUsageError):
        door.derive_card_keys(identity, [KeyPurpose.ACCESS])
    with pytest.raises(KeyNotFound):
        door.card_mac(KeyPurpose.UPDATE, identity, b"m")


def test_missing_key_names_it_and_the_fix():
    with pytest.raises(
        KeyNotFound,
        match=r"no master key for enterprise 00010001 purpose access version 9 algorithm sm4; .*onecard sam list",
    ):
        SAM.verify_card_mac(KeyPurpose.ACCESS, card(Algorithm.SM4, version=9), b"m", bytes(8))
    other = CardIdentity(ASN, parse_enterprise_id("00020002"), 1, Algorithm.AES128)
    with pytest.raises(KeyNotFound, match="enterprise 00020002"):
        SAM.card_mac(KeyPurpose.UPDATE, other, b"m")


def test_has_key():
    assert SAM.has_key(ENTERPRISE, KeyPurpose.ACCESS, 1, Algorithm.SM4)
    assert SAM.has_key(ENTERPRISE, KeyPurpose.TRANSPORT, 0, Algorithm.AES128)
    assert not SAM.has_key(ENTERPRISE, KeyPurpose.ACCESS, 3, Algorithm.SM4)
    assert not SAM.has_key(parse_enterprise_id("00010002"), KeyPurpose.ACCESS, 1, Algorithm.SM4)


def test_key_infos_are_kcvs_only():
    infos = SAM.key_infos()
    assert len(infos) == len(KEYS)
    for info in infos:
        key = master(info.purpose, info.version, info.algorithm)
        assert info.kcv == crypto.key_check_value(info.algorithm, key)
        assert key.hex() not in repr(info)


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_derive_card_keys_for_personalisation(algorithm):
    identity = card(algorithm, version=2)
    keys = SAM.derive_card_keys(identity, [KeyPurpose.UPDATE, KeyPurpose.TRANSPORT])
    m = ASN + ENTERPRISE
    assert keys == {
        KeyPurpose.UPDATE: crypto.diversify(algorithm, master(KeyPurpose.UPDATE, 2, algorithm), m),
        # Transport keys are version 0 whatever the card's issued key version.
        KeyPurpose.TRANSPORT: crypto.diversify(algorithm, master(KeyPurpose.TRANSPORT, 0, algorithm), m),
    }
    # A card personalised with the derived key produces MACs the SAM accepts.
    mac = crypto.mac8(algorithm, keys[KeyPurpose.UPDATE], b"m")
    SAM.verify_card_mac(KeyPurpose.UPDATE, identity, b"m", mac)


def test_derive_card_keys_is_all_or_nothing():
    # UPDATE v2 allows personalise, ACCESS v2 does not: nothing may come out.
    with pytest.raises(KeyUsageError):
        SAM.derive_card_keys(card(version=2), [KeyPurpose.UPDATE, KeyPurpose.ACCESS])
    assert SAM.derive_card_keys(card(version=2), []) == {}


@pytest.mark.parametrize(
    "identity",
    [
        CardIdentity(ASN[:7], ENTERPRISE, 1, Algorithm.AES128),
        CardIdentity(ASN + b"\x00", ENTERPRISE, 1, Algorithm.AES128),
        CardIdentity(ASN, ENTERPRISE + b"\x00", 1, Algorithm.AES128),
        CardIdentity(ASN, ENTERPRISE, 1, 0x03),
        CardIdentity(ASN, ENTERPRISE, 256, Algorithm.AES128),
        CardIdentity(ASN, ENTERPRISE, -1, Algorithm.AES128),
    ],
)
def test_malformed_card_identity(identity):
    for call in (
        lambda: SAM.verify_card_mac(KeyPurpose.ACCESS, identity, b"m", bytes(8)),
        lambda: SAM.card_mac(KeyPurpose.ACCESS, identity, b"m"),
        lambda: SAM.derive_card_keys(identity, [KeyPurpose.UPDATE]),
    ):
        with pytest.raises(InvalidCardIdentity, match="reject the card") as excinfo:
            call()
        assert isinstance(excinfo.value, SamError)


def test_bad_lengths_are_invalid_identity_not_missing_key():
    # Card (ASN 7 bytes) whose enterprise/version/algorithm do name a key: must fail on the identity.
    with pytest.raises(InvalidCardIdentity, match="ASN must be 8 bytes"):
        SAM.card_mac(KeyPurpose.ACCESS, CardIdentity(ASN[:7], ENTERPRISE, 2, Algorithm.AES128), b"m")
    with pytest.raises(InvalidCardIdentity, match="algorithm ID 0x03 is not supported"):
        SAM.card_mac(KeyPurpose.ACCESS, CardIdentity(ASN, ENTERPRISE, 2, 3), b"m")


def test_card_algorithm_id_byte_is_accepted():
    # The terminal may hand over the raw algorithm ID byte read from the card.
    identity = CardIdentity(ASN, ENTERPRISE, 2, 0x02)
    assert SAM.card_mac(KeyPurpose.ACCESS, identity, b"m") == card_side_mac(
        KeyPurpose.ACCESS, card(Algorithm.SM4), b"m"
    )


def test_no_key_bytes_in_repr_or_errors():
    texts = [repr(SAM), str(SAM), repr(SAM.key_infos())]
    for call in (
        lambda: SAM.verify_card_mac(KeyPurpose.ACCESS, card(version=1), b"m", bytes(8)),
        lambda: SAM.card_mac(KeyPurpose.ACCESS, card(version=1), b"m"),
        lambda: SAM.card_mac(KeyPurpose.ACCESS, card(version=7), b"m"),
        lambda: SAM.derive_card_keys(card(version=1), [KeyPurpose.ACCESS]),
    ):
        with pytest.raises(SamError) as excinfo:
            call()
        texts.append(str(excinfo.value))
        texts.append(repr(excinfo.value))
    shown = " ".join(texts)
    for key in KEYS:
        assert key.key.reveal().hex() not in shown.lower()
        for algorithm in Algorithm:
            derived = crypto.diversify(algorithm, key.key.reveal(), ASN + ENTERPRISE)
            assert derived.hex() not in shown.lower()


def test_open_from_file(tmp_path):
    unlock = KeystoreUnlock.from_device_secret(b"d" * 32)
    save_keystore(tmp_path / "ks", Keystore(KEYS), unlock)
    opened = SoftwareSam.open(tmp_path / "ks", unlock)
    identity = card(Algorithm.SM4, version=2)
    assert opened.card_mac(KeyPurpose.UPDATE, identity, b"m") == SAM.card_mac(KeyPurpose.UPDATE, identity, b"m")


# --- e-purse: TAC, state file, purse keys kept to the purse methods --------------------------------

from common import transactions as tx  # noqa: E402
from sam import purse_crypto as pc  # noqa: E402
from sam.interface import LoadSession, PurchaseSession  # noqa: E402
from sam.sam_state import (  # noqa: E402
    InvalidPurseInput,
    SamState,
    StateFile,
    StateFileError,
    decode_state,
    encode_state,
)

PURSE_KEYS = [
    MasterKey.generate(ENTERPRISE, purpose, 1, algorithm, usages)
    for algorithm in Algorithm
    for purpose, usages in (
        (KeyPurpose.PURCHASE, {KeyUsage.MAC, KeyUsage.VERIFY}),
        (KeyPurpose.LOAD, {KeyUsage.MAC, KeyUsage.VERIFY, KeyUsage.REVERSAL}),
        (KeyPurpose.TAC, {KeyUsage.VERIFY}),
    )
]
PLATFORM = SoftwareSam(Keystore(PURSE_KEYS))
TERMINAL = bytes.fromhex("000000000101")
TAC_FIELDS = dict(
    amount=1250,
    tx_type=tx.PURCHASE,
    terminal_id=TERMINAL,
    tsn=17,
    date=bytes.fromhex("20260131"),
    time=bytes.fromhex("123456"),
    counter=7,
    balance_after=8750,
)


def purse_master(purpose: KeyPurpose, algorithm: Algorithm) -> bytes:
    return next(k for k in PURSE_KEYS if k.ident == (ENTERPRISE, purpose, 1, algorithm)).key.reveal()


def card_tac(identity: CardIdentity, **fields) -> bytes:
    k_tac = crypto.diversify(
        identity.algorithm, purse_master(KeyPurpose.TAC, identity.algorithm), identity.asn + identity.enterprise_id
    )
    return pc.tac(identity.algorithm, k_tac, **fields)


@pytest.mark.parametrize("algorithm", list(Algorithm))
@pytest.mark.parametrize("tx_type, tsn", [(tx.PURCHASE, 17), (tx.LOAD, 0)])
def test_verify_tac_accepts_the_cards_tac(algorithm, tx_type, tsn):
    identity = card(algorithm, version=1)
    fields = {**TAC_FIELDS, "tx_type": tx_type, "tsn": tsn}
    PLATFORM.verify_tac(identity, **fields, tac=card_tac(identity, **fields))


@pytest.mark.parametrize(
    "field, value",
    [
        ("amount", 1251),
        ("tx_type", tx.LOAD),
        ("terminal_id", bytes.fromhex("000000000102")),
        ("tsn", 18),
        ("date", bytes.fromhex("20260201")),
        ("time", bytes.fromhex("123457")),
        ("counter", 8),
        ("balance_after", 8751),
    ],
)
def test_verify_tac_covers_every_field(field, value):
    identity = card(version=1)
    tac = card_tac(identity, **TAC_FIELDS)
    with pytest.raises(MacVerificationError, match="forged or altered"):
        PLATFORM.verify_tac(identity, **{**TAC_FIELDS, field: value}, tac=tac)


def test_verify_tac_needs_tac_verify_and_checks_inputs():
    identity = card(version=1)
    tac = card_tac(identity, **TAC_FIELDS)
    with pytest.raises(MacVerificationError, match="expected 8"):
        PLATFORM.verify_tac(identity, **TAC_FIELDS, tac=tac[:7])
    with pytest.raises(InvalidPurseInput, match=r"is not 0x01, 0x02, 0x04, 0x05, 0x06, 0x85 or 0x86; pass"):
        PLATFORM.verify_tac(identity, **{**TAC_FIELDS, "tx_type": 0x03}, tac=tac)
    with pytest.raises(InvalidPurseInput, match="date must be 4 BCD bytes"):
        PLATFORM.verify_tac(identity, **{**TAC_FIELDS, "date": b"\x20\x26\x01"}, tac=tac)
    pos = SoftwareSam(Keystore(PURSE_KEYS).restricted({KeyUsage.MAC, KeyUsage.VERIFY}, purposes={KeyPurpose.PURCHASE}))
    with pytest.raises(KeyNotFound, match="purpose tac"):
        pos.verify_tac(identity, **TAC_FIELDS, tac=tac)
    signer = SoftwareSam(
        Keystore(
            [
                MasterKey(
                    ENTERPRISE,
                    KeyPurpose.TAC,
                    1,
                    Algorithm.AES128,
                    frozenset({KeyUsage.PERSONALISE}),
                    next(k for k in PURSE_KEYS if k.purpose is KeyPurpose.TAC).key,
                )
            ]
        )
    )
    with pytest.raises(KeyUsageError, match="may not be used to verify"):
        signer.verify_tac(identity, **TAC_FIELDS, tac=tac)


@pytest.mark.parametrize("purpose", [KeyPurpose.PURCHASE, KeyPurpose.LOAD, KeyPurpose.TAC])
def test_purse_keys_are_not_for_generic_macs(purpose):
    # card_mac under K_TAC would forge TACs, whatever the key's usages.
    everything = SoftwareSam(Keystore([MasterKey.generate(ENTERPRISE, purpose, 1, Algorithm.AES128, ALL)]))
    with pytest.raises(KeyUsageError, match="only through the purse methods"):
        everything.card_mac(purpose, card(version=1), b"m")
    with pytest.raises(KeyUsageError, match="only through the purse methods"):
        everything.verify_card_mac(purpose, card(version=1), b"m", bytes(8))


def test_purse_methods_name_the_usage_they_need():
    verify_only = SoftwareSam(Keystore(PURSE_KEYS).restricted({KeyUsage.VERIFY}))
    identity = card(version=1)
    session = PurchaseSession(identity, b"\x00\x01\x02\x03", 1, 100, TERMINAL, bytes.fromhex("20260131"), bytes(3))
    with pytest.raises(KeyUsageError, match="purpose purchase version 1 algorithm aes128 may not be used to mac"):
        verify_only.purchase_mac1(session)
    load = LoadSession(identity, b"\x00\x01\x02\x03", 1, 0, 100, TERMINAL, bytes.fromhex("20260131"), bytes(3))
    with pytest.raises(KeyUsageError, match="may not be used to reversal"):
        verify_only.reversal_mac2(load, bytes(8), 1)
    with pytest.raises(KeyUsageError, match="may not be used to mac"):
        verify_only.load_mac2(load, bytes(8))


def test_open_keeps_state_beside_the_keystore(tmp_path):
    unlock = KeystoreUnlock.from_device_secret(b"d" * 32)
    save_keystore(tmp_path / "pos.ks", Keystore(PURSE_KEYS), unlock)
    sam = SoftwareSam.open(tmp_path / "pos.ks", unlock)
    assert not (tmp_path / "pos.ks.state").exists()  # made at the first purchase, not before
    identity = card(version=1)
    session = PurchaseSession(identity, b"\x00\x01\x02\x03", 1, 100, TERMINAL, bytes.fromhex("20260131"), bytes(3))
    assert sam.purchase_mac1(session)[0] == 1
    assert StateFile(tmp_path / "pos.ks.state").load().last_tsn == 1
    elsewhere = SoftwareSam.open(tmp_path / "pos.ks", unlock, state_path=tmp_path / "other.state")
    assert elsewhere.purchase_mac1(session)[0] == 1
    assert StateFile(tmp_path / "other.state").load().last_tsn == 1
    assert "d" * 32 not in repr(sam)


def test_state_file_format_is_as_documented(tmp_path):
    # docs/key-handling.md 8.2, byte for byte.
    documented = (
        b"ONECARD-SAM-STATE 1\n"
        b'{"last_purchase":{"amount":1250,"asn":"8601000000001234","debited":true,"enterprise_id":"00010001",'
        b'"reversal_counter":null,"tsn":17},"last_tsn":17}\n'
    )
    import hashlib

    documented += b"sha256=" + hashlib.sha256(documented).hexdigest().encode() + b"\n"
    state = decode_state(documented)
    assert state.last_tsn == 17 and state.last_purchase.debited and not state.last_purchase.reversed
    assert encode_state(state) == documented
    assert encode_state(SamState()).startswith(b'ONECARD-SAM-STATE 1\n{"last_purchase":null,"last_tsn":0}\nsha256=')


@given(st.integers(0, 200), st.integers(0, 255))
def test_any_byte_change_in_the_state_file_is_refused(position, value):
    data = encode_state(SamState(5, None))
    position %= len(data)
    if data[position] == value:
        return
    altered = data[:position] + bytes([value]) + data[position + 1 :]
    with pytest.raises(ValueError):
        decode_state(altered)


@pytest.mark.parametrize("content", [b"", b"ONECARD-SAM-STATE 1\n", b"garbage", b"x" * 5000])
def test_unreadable_state_is_one_error_and_left_alone(tmp_path, content):
    path = tmp_path / "ks.state"
    path.write_bytes(content)
    with pytest.raises(StateFileError, match="corrupted") as excinfo:
        StateFile(path).load()
    assert "\n" not in str(excinfo.value)
    assert path.read_bytes() == content
