"""The simulated PSAM as byte conversations (docs/psam.md): exact commands, exact answers, status words, EEPROM."""

from __future__ import annotations

import json
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sam import crypto
from sam import purse_crypto as pc
from sam.interface import Algorithm, KeyPurpose, KeyUsage
from sam.keystore import Keystore, KeystoreUnlock, MasterKey, SecretKey, load_keystore, save_keystore
from simulator.psam import (
    ATR,
    PsamApplet,
    PsamStateFile,
    load_psam,
    psam_from_keystore,
    write_psam,
)
from simulator.psam_cli import add_psam_subcommands

E = bytes.fromhex("00010001")
ASN = bytes.fromhex("1122334455667788")


def fixed_key(purpose: KeyPurpose, first: int, usages) -> MasterKey:
    return MasterKey(E, purpose, 1, Algorithm.AES128, frozenset(usages), SecretKey(bytes(range(first, first + 16))))


# The keys of docs/psam.md section 6: PURCHASE 00..0F, LOAD 10..1F (reversal only), ACCESS 20..2F (verify).
KEYS = Keystore(
    [
        fixed_key(KeyPurpose.ACCESS, 0x20, {KeyUsage.VERIFY}),
        fixed_key(KeyPurpose.PURCHASE, 0x00, {KeyUsage.MAC, KeyUsage.VERIFY}),
        fixed_key(KeyPurpose.LOAD, 0x10, {KeyUsage.REVERSAL}),
    ]
)


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


SELECT = h("00 A4 04 00 09 F0 4F 4E 45 43 41 52 44 50 00")
CARD = "11 22 33 44 55 66 77 88 00 01 00 01 01 01"
INIT = h(f"80 70 00 00 25 {CARD} 0A 0B 0C 0D 00 07 00 00 04 E2 00 00 00 00 01 01 20 26 01 31 12 34 56 0C")
MAC2 = "4C D1 4C 01 96 4A 24 C9"
VERIFY_MAC2 = h(f"80 72 00 00 24 {CARD} 0A 0B 0C 0D 00 07 00 00 00 01 00 00 04 E2 {MAC2}")


def psam(tmp_path=None) -> PsamApplet:
    state = psam_from_keystore(KEYS)
    if tmp_path is None:
        return PsamApplet(state)
    write_psam(tmp_path / "psam.json", state)
    return load_psam(tmp_path / "psam.json")


def selected(tmp_path=None) -> PsamApplet:
    p = psam(tmp_path)
    assert p.transmit(SELECT) == h("6F 10 84 09 F0 4F 4E 45 43 41 52 44 50 A5 03 C0 01 01 90 00")
    return p


def test_documented_conversation():
    assert ATR == h("3B 88 80 01 4F 4E 45 50 53 41 4D 31 73")
    p = selected()
    assert p.transmit(h("80 CA 00 00 00")) == h(
        "03 00 01 00 01 01 01 01 01 AE 3A 71   00 01 00 01 04 01 01 03 C6 A1 3B   "
        "00 01 00 01 05 01 01 08 ED A3 30 90 00"
    )
    assert p.transmit(INIT) == h("00 00 00 01 14 47 AB 4E 6A 2E 89 95 90 00")
    assert p.transmit(VERIFY_MAC2) == h("90 00")


def test_documented_values_follow_the_spec():
    # The literal bytes above, recomputed from docs/card-application.md 5.2 (not through the PSAM).
    k_purchase = crypto.diversify(Algorithm.AES128, bytes(range(16)), ASN + E)
    assert k_purchase == h("94 DB 34 C8 4D F4 FB 79 2F 80 DE D8 A2 75 0E 61")
    sk = pc.purchase_session_key(Algorithm.AES128, k_purchase, h("0A0B0C0D"), 7, 1)
    assert pc.purchase_mac1(Algorithm.AES128, sk, 1250, h("000000000101"), h("20260131"), h("123456")) == h(
        "14 47 AB 4E 6A 2E 89 95"
    )
    assert pc.purchase_mac2(Algorithm.AES128, sk, 1250) == h(MAC2)
    assert crypto.key_check_value(Algorithm.AES128, bytes(range(16))) == "c6a13b"


def test_wrong_mac2_is_9302_and_tsn_counts_up():
    p = selected()
    assert p.transmit(INIT)[:4] == h("00000001")
    assert p.transmit(INIT)[:4] == h("00000002")
    assert p.transmit(VERIFY_MAC2[:-1] + bytes([VERIFY_MAC2[-1] ^ 1])) == h("93 02")
    # The MAC2 of TSN 1 still verifies after TSN 2 was handed out (stateless check).
    assert p.transmit(VERIFY_MAC2) == h("90 00")


def load_command(
    ins: int, amount: int = 1250, tsn: int | None = None, mac1: bytes | None = None, counter: int = 3
) -> bytes:
    k_load = crypto.diversify(Algorithm.AES128, bytes(range(0x10, 0x20)), ASN + E)
    sk = pc.load_session_key(Algorithm.AES128, k_load, h("01020304"), counter)
    mac1 = mac1 or pc.load_mac1(Algorithm.AES128, sk, 300, amount, h("000000000101"))
    data = (
        h(CARD)
        + h("01020304")
        + counter.to_bytes(2, "big")
        + h("0000012C")
        + amount.to_bytes(4, "big")
        + h("000000000101 20260131 123456")
        + mac1
    )
    if tsn is not None:
        data += tsn.to_bytes(4, "big")
    return bytes([0x80, ins, 0, 0, len(data)]) + data + b"\x08"


def test_reversal_conversation():
    p = selected()
    p.transmit(INIT)
    assert p.transmit(load_command(0x78, tsn=1)) == h("69 83")  # debit not proven yet
    assert p.transmit(VERIFY_MAC2) == h("90 00")
    assert p.transmit(load_command(0x78, amount=1251, tsn=1)) == h("69 85")  # other amount
    assert p.transmit(load_command(0x78, tsn=2)) == h("69 85")  # other TSN
    assert p.transmit(load_command(0x78, tsn=1, mac1=bytes(8))) == h("93 02")
    answer = p.transmit(load_command(0x78, tsn=1))
    k_load = crypto.diversify(Algorithm.AES128, bytes(range(0x10, 0x20)), ASN + E)
    sk = pc.load_session_key(Algorithm.AES128, k_load, h("01020304"), 3)
    assert answer == pc.load_mac2(Algorithm.AES128, sk, 1250, h("000000000101"), h("20260131"), h("123456")) + h(
        "90 00"
    )
    assert p.transmit(load_command(0x78, tsn=1)) == answer  # card still at counter 3: never credited
    assert p.transmit(load_command(0x78, tsn=1, counter=4)) == h("69 84")  # credited (counter moved): once only
    assert p.transmit(load_command(0x74)) == h("69 82")  # LOAD is reversal-only in this PSAM


def test_access_mac_commands():
    p = selected()
    message = b"access read answer"
    k_access = crypto.diversify(Algorithm.AES128, bytes(range(0x20, 0x30)), ASN + E)
    mac = crypto.mac8(Algorithm.AES128, k_access, message)
    data = h(CARD) + mac + message
    assert p.transmit(bytes([0x80, 0x7A, 0x00, 0x01, len(data)]) + data) == h("90 00")
    bad = h(CARD) + bytes(8) + message
    assert p.transmit(bytes([0x80, 0x7A, 0x00, 0x01, len(bad)]) + bad) == h("93 02")
    mac_data = h(CARD) + message
    assert p.transmit(bytes([0x80, 0x7C, 0x00, 0x01, len(mac_data)]) + mac_data + b"\x08") == h("69 82")  # verify-only
    assert p.transmit(bytes([0x80, 0x7C, 0x00, 0x04, len(mac_data)]) + mac_data + b"\x08") == h("69 82")  # purse key
    assert p.transmit(bytes([0x80, 0x7C, 0x00, 0x02, len(mac_data)]) + mac_data + b"\x08") == h(
        "6A 88"
    )  # no UPDATE key
    assert p.transmit(bytes([0x80, 0x7C, 0x00, 0x07, len(mac_data)]) + mac_data + b"\x08") == h(
        "6A 86"
    )  # no purpose 07


@pytest.mark.parametrize(
    ("apdu", "sw"),
    [
        ("80 70 00 00 25" + " 00" * 37, "69 86"),  # not selected
        ("00 A4 04 00 09 F0 4F 4E 45 43 41 52 44 01", "6A 82"),  # the card application's AID, not the PSAM's
        ("00 A4 00 00 09 F0 4F 4E 45 43 41 52 44 50", "6A 86"),
        ("00 B0 81 00 00", "6D 00"),
        ("90 70 00 00 00", "6E 00"),
        ("80", "67 00"),
    ],
)
def test_status_words_before_select(apdu, sw):
    assert psam().transmit(h(apdu)) == h(sw)


@pytest.mark.parametrize(
    ("apdu", "sw"),
    [
        ("80 70 00 00 24" + " 00" * 36, "67 00"),  # Lc one short
        ("80 70 02 00 25" + " 00" * 37, "6A 86"),
        ("80 70 01 00 25" + " 00" * 37, "67 00"),  # P1 01 (sealed balance, docs/psam.md 4.2) needs Lc 29
        ("80 76 01 00 24" + " 00" * 36, "6A 86"),  # VERIFY LOAD MAC3 has no sealed form
        (
            "80 72 00 00 24 1122334455667788 00020002 01 01 0A0B0C0D 0007 00000001 000004E2" + " 00" * 8,
            "6A 88",
        ),  # other enterprise
        (f"80 70 00 00 25 {CARD[:-2]}03 0A0B0C0D 0007 000004E2 000000000101 20260131 123456", "6A 80"),  # algorithm 03
        (f"80 70 00 00 25 {CARD} 0A0B0C0D 0007 00000000 000000000101 20260131 123456", "6A 80"),  # amount 0
        (f"80 70 00 00 25 {CARD} 0A0B0C0D 0007 000004E2 000000000101 2026013A 123456", "6A 80"),  # date not BCD
        ("80 CA 01 00 00", "6A 86"),
        ("80 CA 00 04 00", "6A 83"),  # start beyond the 3 keys
        ("80 CA 00 00 01 00", "67 00"),
        ("80 7A 00 01 15" + " 00" * 21, "67 00"),  # shorter than card block + MAC
        ("80 12 00 00 00", "6D 00"),
        ("80 70 00 00 00", "67 00"),  # extended length is not supported
    ],
)
def test_status_words_after_select(apdu, sw):
    p = selected()
    assert p.transmit(h(apdu)) == h(sw)
    assert p.state.sam_state.last_tsn == 0  # no refused command takes a TSN


def test_key_info_paging():
    keys = Keystore(
        [MasterKey.generate(E, KeyPurpose.ACCESS, v, Algorithm.SM4, {KeyUsage.VERIFY}) for v in range(1, 26)]
    )
    p = PsamApplet(psam_from_keystore(keys))
    p.transmit(SELECT)
    first = p.transmit(h("80 CA 00 00 00"))
    assert first[0] == 25 and len(first) == 1 + 20 * 11 + 2
    second = p.transmit(h("80 CA 00 14 00"))
    assert second[0] == 25 and len(second) == 1 + 5 * 11 + 2
    entries = first[1:-2] + second[1:-2]
    versions = [entries[i + 5] for i in range(0, 25 * 11, 11)]
    assert versions == list(range(1, 26))


def test_tsn_is_in_the_eeprom_before_the_answer(tmp_path):
    p = selected(tmp_path)
    answer = p.transmit(INIT)
    assert answer[:4] == h("00000001")
    assert PsamStateFile(tmp_path / "psam.json").load().sam_state.last_tsn == 1
    assert stat.S_IMODE((tmp_path / "psam.json").stat().st_mode) == 0o600
    # A fresh power-on from the file continues.
    again = load_psam(tmp_path / "psam.json")
    again.transmit(SELECT)
    assert again.transmit(INIT)[:4] == h("00000002")


def test_eeprom_write_failure_is_6581_and_hands_out_nothing(tmp_path, monkeypatch):
    p = selected(tmp_path)

    def broken(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", broken)
    assert p.transmit(INIT) == h("65 81")
    monkeypatch.undo()
    assert p.state.sam_state.last_tsn == 0
    assert p.transmit(INIT)[:4] == h("00000001")


def test_power_off_deselects():
    p = selected()
    p.power_off()
    p.power_on()
    assert p.transmit(INIT) == h("69 86")


_ALLOWED = {
    h(sw)
    for sw in (
        "9000",
        "6581",
        "6700",
        "6982",
        "6983",
        "6984",
        "6985",
        "6986",
        "6A80",
        "6A82",
        "6A83",
        "6A84",
        "6A86",
        "6A88",
        "6D00",
        "6E00",
        "9302",
    )
}


@settings(max_examples=300)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda ins, p1, p2, data, le: bytes([0x80, ins, p1, p2, len(data)]) + data + le,
            st.sampled_from([0x70, 0x72, 0x74, 0x76, 0x78, 0x7A, 0x7C, 0xCA]),
            st.integers(0, 3),
            st.integers(0, 7),
            st.binary(min_size=1, max_size=80),
            st.sampled_from([b"", b"\x00", b"\x08"]),
        ),
    )
)
def test_malformed_apdus_get_a_status_word_never_an_internal_error(apdu):
    p = selected()
    answer = p.transmit(apdu)
    assert answer[-2:] in _ALLOWED, answer.hex()
    assert answer[-2:] == h("9000") or len(answer) == 2


def test_keys_never_leave(tmp_path):
    p = selected()
    seen = b"".join(p.transmit(bytes([0x80, 0xCA, 0x00, i, 0x00])) for i in range(4)) + repr(p).encode()
    for key in KEYS:
        assert key.key.reveal() not in seen and key.key.reveal().hex().encode() not in seen


# --- making PSAMs ---------------------------------------------------------------------------------


def test_psam_from_keystore_cuts_usages_and_refuses_tac():
    every = Keystore(
        [MasterKey.generate(E, p, 1, Algorithm.SM4, set(KeyUsage)) for p in (KeyPurpose.ACCESS, KeyPurpose.LOAD)]
    )
    state = psam_from_keystore(every)
    assert {(k.purpose, k.usages) for k in state.keys} == {
        (KeyPurpose.ACCESS, frozenset({KeyUsage.VERIFY, KeyUsage.MAC, KeyUsage.REVERSAL})),
        (KeyPurpose.LOAD, frozenset({KeyUsage.VERIFY, KeyUsage.MAC, KeyUsage.REVERSAL})),
    }
    with_tac = Keystore([*every, MasterKey.generate(E, KeyPurpose.TAC, 1, Algorithm.SM4, {KeyUsage.VERIFY})])
    with pytest.raises(ValueError, match="TAC keys .* only the platform may hold; .*--role pos"):
        psam_from_keystore(with_tac)


def test_new_psam_command(tmp_path, capsys):
    import argparse

    from common.errors import UserError

    parser = argparse.ArgumentParser(prog="onecard")
    sim = parser.add_subparsers(dest="area").add_parser("sim").add_subparsers(dest="command")
    add_psam_subcommands(sim)
    (tmp_path / "pw").write_text("pos passphrase\n")
    unlock = KeystoreUnlock.from_passphrase_file(tmp_path / "pw")
    save_keystore(tmp_path / "pos.ks", KEYS, unlock, scrypt_n=2**10)
    args = parser.parse_args(
        [
            "sim",
            "new-psam",
            "--keystore",
            str(tmp_path / "pos.ks"),
            "--passphrase-file",
            str(tmp_path / "pw"),
            "--out",
            str(tmp_path / "psam.json"),
            "--label",
            "POS 3",
        ]
    )
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "3 keys" in out and "c6a13b" in out
    assert all(key.key.reveal().hex() not in out for key in KEYS)
    p = load_psam(tmp_path / "psam.json")
    assert {k.ident for k in p.state.keys} == {k.ident for k in KEYS}
    assert json.loads((tmp_path / "psam.json").read_text())["format"] == "onecard-sim-psam/1"
    with pytest.raises(UserError, match="exists; .*--force"):
        args.handler(args)
    tac = Keystore([MasterKey.generate(E, KeyPurpose.TAC, 1, Algorithm.AES128, {KeyUsage.VERIFY})])
    save_keystore(tmp_path / "platform.ks", tac, unlock, scrypt_n=2**10)
    args = parser.parse_args(
        [
            "sim",
            "new-psam",
            "--keystore",
            str(tmp_path / "platform.ks"),
            "--passphrase-file",
            str(tmp_path / "pw"),
            "--out",
            str(tmp_path / "p2.json"),
        ]
    )
    with pytest.raises(UserError, match="only the platform may hold"):
        args.handler(args)
    assert not (tmp_path / "p2.json").exists()
    assert load_keystore(tmp_path / "pos.ks", unlock)  # the source keystore is untouched


# --- version 2 cards: the sealed balance (docs/psam.md 4.2, 4.6; card-application.md 5.2a) -----------------------


def sealed_init(balance: int) -> bytes:
    k_purchase = crypto.diversify(Algorithm.AES128, bytes(range(16)), ASN + E)
    sealed = pc.seal_purse_data(Algorithm.AES128, k_purchase, h("0A0B0C0D"), 7, balance.to_bytes(4, "big"))
    return bytes([0x80, 0x70, 0x01, 0x00, 0x29]) + INIT[5:-1] + sealed + b"\x10"


def test_sealed_purchase_init_answers_the_balance_or_9401_without_a_tsn():
    p = selected()
    assert sealed_init(10_000)[:5] == h("80 70 01 00 29") and len(sealed_init(10_000)) == 5 + 0x29 + 1
    assert p.transmit(sealed_init(1249)) == h("94 01")  # 12.49 does not cover 12.50: nothing computed
    assert p.transmit(sealed_init(1250)) == h("00 00 00 01 14 47 AB 4E 6A 2E 89 95 00 00 04 E2 90 00")  # TSN 1
    answer = p.transmit(sealed_init(10_000))
    assert answer[:4] == h("00 00 00 02") and answer[12:] == h("00 00 27 10 90 00")
    short = sealed_init(10_000)
    assert p.transmit(short[:4] + b"\x28" + short[5:-2] + b"\x10") == h("67 00")  # one sealed byte short


def test_sealed_reversal_deciphers_the_balance_before():
    k_load = crypto.diversify(Algorithm.AES128, bytes(range(0x10, 0x20)), ASN + E)
    p = selected()
    p.transmit(INIT)
    assert p.transmit(VERIFY_MAC2) == h("90 00")
    plain = load_command(0x78, tsn=1)
    sealed = pc.seal_purse_data(Algorithm.AES128, k_load, h("01020304"), 3, h("0000012C"))
    command = plain[:2] + b"\x01" + plain[3:25] + sealed + plain[29:-1] + b"\x0c"
    answer = p.transmit(command)
    assert answer[8:] == h("00 00 01 2C 90 00") and p.transmit(plain)[:8] == answer[:8]
    wrong = command[:25] + bytes(4) + command[29:]  # a sealed field the card did not send: MAC1 fails over it
    assert p.transmit(wrong) == h("93 02")
