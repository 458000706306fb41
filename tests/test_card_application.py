"""The simulated card against docs/card-application.md, as conversations of exact bytes."""

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from sam.crypto import diversify, mac8
from sam.interface import Algorithm, KeyPurpose, KeyUsage
from sam.keystore import Keystore, MasterKey, SecretKey
from sam.software import SoftwareSam
from simulator.card import CardStateFile, OneCardApplet
from simulator.personalise import Personalisation, personalise

SELECT = bytes.fromhex("00A4040009F04F4E45434152440100")
MASTER = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
ASN = bytes.fromhex("1122334455667788")
ENTERPRISE = bytes.fromhex("00010001")
NONCE = bytes.fromhex("0102030405060708")
TERMINAL = bytes.fromhex("000000000001")


def fixed_sam(algorithm=Algorithm.AES128):
    key = MasterKey(
        ENTERPRISE,
        KeyPurpose.ACCESS,
        1,
        algorithm,
        frozenset({KeyUsage.VERIFY, KeyUsage.PERSONALISE}),
        SecretKey(MASTER),
    )
    return SoftwareSam(Keystore([key]))


def worked_card(algorithm=Algorithm.AES128):
    p = Personalisation(
        enterprise_id=ENTERPRISE,
        employee_no="E1001",
        name="Zhang Wei",
        door_groups=frozenset({1, 3}),
        valid_from=dt.date(2026, 1, 1),
        valid_to=dt.date(2028, 12, 31),
        time_profile=1,
        algorithm=algorithm,
        asn=ASN,
        purse=False,
    )
    return OneCardApplet(state=personalise(fixed_sam(algorithm), p))


def test_worked_example():
    """The bytes of docs/card-application.md section 6, from the master key 000102...0F."""
    card = worked_card()
    card.power_on()
    assert card.transmit(SELECT).hex().upper() == (
        "6F2C8409F04F4E454341524401A51FC0081122334455667788C10400010001C20101C30101C40101C50101C601019000"
    )
    answer = card.transmit(bytes.fromhex("803A00000E010203040506070800000000000100"))
    body, mac, sw = answer[:85], answer[85:93], answer[93:]
    assert sw == b"\x90\x00"
    assert body.hex().upper() == (
        "01"
        "2026010120281231"
        "A000000000000000"
        "01" + "00" * 15 + "4531303031".ljust(32, "0") + "5A68616E6720576569".ljust(64, "0") + "00000001"
    )
    card_key = diversify(Algorithm.AES128, MASTER, ASN + ENTERPRISE)
    assert mac == mac8(Algorithm.AES128, card_key, ASN + ENTERPRISE + b"\x01" + NONCE + TERMINAL + body)
    assert (card_key.hex().upper(), mac.hex().upper()) == WORKED_AES


WORKED_AES = ("94DB34C84DF4FB792F80DED8A2750E61", "DC56153B58654EB4")  # as printed in the document


def conversation(card, exchanges):
    for command, expected in exchanges:
        got = card.transmit(bytes.fromhex(command.replace(" ", "")))
        assert got.hex().upper() == expected.replace(" ", ""), command


def test_status_words():
    card = worked_card()
    card.power_on()
    conversation(
        card,
        [
            ("00 B0 81 00 00", "6986"),  # nothing selected yet
            ("80 3A 00 00 0E 0102030405060708 000000000001 00", "6986"),
            ("00 A4 04 00 09 F04F4E454341524402 00", "6A82"),  # another application
            ("00 A4 04 0C 09 F04F4E454341524401 00", "6A86"),
            ("00 A4 04 00 0A F04F4E454341524401", "6700"),  # Lc says 10, 9 bytes follow
        ],
    )
    card.transmit(SELECT)
    conversation(
        card,
        [
            ("00 B0 81 00 00", "11223344556677880001000101010101000000009000"),
            ("00 B0 81 10 00", "000000009000"),
            ("00 B0 81 15 00", "6B00"),
            ("00 B0 84 00 00", "6A82"),
            ("00 B0 01 00 00", "6A86"),
            ("00 B0 83 00 08", "20260101202812319000"),
            ("80 3A 00 00 0D 0102030405060708 0000000001 00", "6700"),
            ("80 3A 01 00 0E 0102030405060708 000000000001 00", "6A86"),
            ("80 CA 00 00 00", "6D00"),
            ("90 3A 00 00 00", "6E00"),
            ("00", "6700"),
        ],
    )


def test_voided_card_refuses_access_read():
    card = worked_card()
    card.state.status = 0x02
    card.transmit(SELECT)
    assert card.transmit(bytes.fromhex("803A00000E010203040506070800000000000100")) == b"\x69\x85"


def test_counter_is_persisted_before_the_answer(tmp_path):
    card = worked_card()
    store = CardStateFile(tmp_path / "c.json")
    store.save(card.state)
    card.store = store
    card.transmit(SELECT)
    card.transmit(bytes.fromhex("803A00000E010203040506070800000000000100"))
    assert store.load().access_counter == 1


def test_power_cycle_deselects():
    card = worked_card()
    card.transmit(SELECT)
    card.power_off()
    card.power_on()
    assert card.transmit(bytes.fromhex("00B0810000")) == b"\x69\x86"


@given(st.binary(max_size=300))
def test_card_answers_every_input_with_a_status_word(apdu):
    card = worked_card()
    answer = card.transmit(apdu)
    assert len(answer) >= 2


def test_sm4_card_mac_uses_sm4():
    card = worked_card(Algorithm.SM4)
    card.transmit(SELECT)
    answer = card.transmit(bytes.fromhex("803A00000E010203040506070800000000000100"))
    key = diversify(Algorithm.SM4, MASTER, ASN + ENTERPRISE)
    body = answer[:85]
    assert answer[85:93] == mac8(Algorithm.SM4, key, ASN + ENTERPRISE + b"\x01" + NONCE + TERMINAL + body)
