"""The phone menu (docs/phone-menu.md): every SIM toolkit exchange between a handset and the simulated RFID-SIM byte for
byte, the service password's try counter, blocking and unblocking at the card office, deletion of a sub-application
end to end at the platform, and the handset driver against the SIM."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.db import PlatformError
from central.store import Platform
from common import deletion_request as dr
from common import stk
from common import sync_protocol as p
from phone.handset import Handset, HandsetError, validate_input
from sam.crypto import mac8
from sam.interface import Algorithm
from sam.software import SoftwareSam
from simulator.card import CardStateFile, OneCardApplet
from simulator.personalise import Personalisation, personalise
from simulator.sim_toolkit import MAX_TRIES, ToolkitStateFile, load_sim, toolkit_path
from tests.support import make_keystore, make_sam

KEYSTORE = make_keystore()
SAM = SoftwareSam(KEYSTORE)
ASN = bytes.fromhex("1122334455667788")
EID = "00010001"
PASSWORD = "246810"


def x(text: str) -> bytes:
    return bytes.fromhex(text)


def records() -> list[dict]:
    """What the card's purse holds after a load and a purchase (as simulator/card.py writes them), oldest first."""
    return [
        dict(
            type=2, counter=1, amount=3750, terminal="000000000201", tsn=0, date="20261129", time="090000",
            balance_after=3750, proof="00000000", tac="00000000",
        ),
        dict(
            type=6, counter=1, amount=1250, terminal="000000000101", tsn=7, date="20261130", time="120501",
            balance_after=2500, proof="00000000", tac="00000000",
        ),
    ]  # fmt: skip


@pytest.fixture
def card_file(tmp_path):
    state = personalise(
        SAM,
        Personalisation(
            enterprise_id=bytes.fromhex(EID),
            employee_no="E1001",
            name="Zhang Wei",
            door_groups=frozenset({1}),
            valid_from=dt.date(2026, 1, 1),
            valid_to=dt.date(2028, 12, 31),
            asn=ASN,
            opening_balance=2500,
        ),
    )
    state.purse.records = records()
    path = tmp_path / "card.json"
    CardStateFile(path).save(state)
    return path


@pytest.fixture
def sim(card_file):
    s = load_sim(card_file)
    s.power_on()
    return s


def talk(sim, conversation: list[tuple[str, str]]) -> None:
    """Each command APDU and the exact response the SIM must give."""
    for command, expected in conversation:
        got = sim.transmit(x(command))
        assert got.hex(" ").upper() == x(expected).hex(" ").upper(), f"after {command}"


def office_apdu(key: bytes, challenge: bytes, password: bytes, p2: int = 1, algorithm=Algorithm.AES128) -> bytes:
    """RESET RETRY COUNTER under secure messaging, built from docs/phone-menu.md 4 with the cipher primitive alone:
    SK_WRITE = E(K_UPDATE, challenge || 00000000 || 03000000), keystream E(SK_WRITE, 0^16), MAC over the ciphertext."""
    from sam.crypto import block_encrypt

    sk = block_encrypt(algorithm, key, challenge + bytes(4) + x("03000000"))
    stream = block_encrypt(algorithm, sk, bytes(16))
    ciphertext = bytes(a ^ b for a, b in zip(password.ljust(8, b"\xff"), stream))
    header = bytes([0x84, 0x2C, 0x00, p2, 16])
    return header + ciphertext + mac8(algorithm, key, challenge + header + ciphertext)


def office_set_password(sim, card_file, password: str, p2: int = 1) -> bytes:
    """The card office's RESET RETRY COUNTER: GET CHALLENGE, then 84 2C under K_UPDATE, password enciphered."""
    challenge = sim.transmit(x("0084000008"))
    assert challenge[-2:] == x("9000")
    state = CardStateFile(card_file).load()
    return sim.transmit(office_apdu(state.update_key, challenge[:8], password.encode(), p2, state.algorithm))


PROFILE = "80 10 00 00 04 0B 61 05 23"
SET_UP_MENU = (
    "D0 3A 81 03 01 25 00 82 02 81 82 85 19 80 58 F9 53 61 90 1A 00 20 00 4F 00 6E 00 65 00 2D 00 63 00 61 00 72 00 64"
    " 8F 14 01 45 6E 74 65 72 70 72 69 73 65 20 30 30 30 31 30 30 30 31"
)
MENU_SELECTION = "80 C2 00 00 09 D3 07 82 02 01 81 90 01 01"


def sub_menu(n: int) -> str:
    return (
        f"D0 6A 81 03 {n:02X} 24 00 82 02 81 82 85 13 45 6E 74 65 72 70 72 69 73 65 20 30 30 30 31 30 30 30 31"
        " 8F 08 01 42 61 6C 61 6E 63 65 8F 12 02 4C 61 73 74 20 74 72 61 6E 73 61 63 74 69 6F 6E 73"
        " 8F 0C 03 43 61 72 64 20 73 74 61 74 75 73 8F 09 04 56 61 6C 69 64 69 74 79"
        " 8F 13 05 44 65 6C 65 74 65 20 61 70 70 6C 69 63 61 74 69 6F 6E"
    )


def ok(n: int, kind: int, qualifier: int, extra: str = "") -> str:
    """TERMINAL RESPONSE: command details, device identities 82 -> 81, result 00, then `extra`."""
    body = f"81 03 {n:02X} {kind:02X} {qualifier:02X} 82 02 82 81 83 01 00 {extra}"
    return f"80 14 00 00 {len(x(body)):02X} {body}"


def back(n: int) -> str:
    return f"80 14 00 00 0C 81 03 {n:02X} 24 00 82 02 82 81 83 01 11"


OPENING = [(PROFILE, "91 3C"), ("80 12 00 00 3C", SET_UP_MENU + " 90 00"), (ok(1, 0x25, 0), "90 00")]


# --- conversations --------------------------------------------------------------------------------------------------


def test_power_on_terminal_profile_and_set_up_menu(sim):
    talk(sim, OPENING)


def test_balance_and_purse_validity(sim):
    balance = (
        "D0 49 81 03 03 21 80 82 02 81 02 8D 3E 04 45 6E 74 65 72 70 72 69 73 65 20 30 30 30 31 30 30 30 31 0A"
        " 42 61 6C 61 6E 63 65 20 32 35 2E 30 30 20 79 75 61 6E 0A"  # Balance 25.00 yuan
        " 56 61 6C 69 64 20 75 6E 74 69 6C 20 32 30 32 38 2D 31 32 2D 33 31"  # Valid until 2028-12-31
    )
    talk(
        sim,
        OPENING
        + [
            (MENU_SELECTION, "91 6C"),
            ("80 12 00 00 6C", sub_menu(2) + " 90 00"),
            (ok(2, 0x24, 0, "90 01 01"), "91 4B"),
            ("80 12 00 00 4B", balance + " 90 00"),
            (ok(3, 0x21, 0x80), "91 6C"),  # cleared: the sub-application's menu again
            ("80 12 00 00 6C", sub_menu(4) + " 90 00"),
            (back(4), "90 00"),  # backward move: the session ends
        ],
    )


def test_last_transactions_newest_first_then_one_in_detail(sim):
    listing = (
        "D0 46 81 03 03 24 00 82 02 81 82 85 11 4C 61 73 74 20 74 72 61 6E 73 61 63 74 69 6F 6E 73"
        " 8F 13 01 31 31 2D 33 30 20 31 32 3A 30 35 20 2D 31 32 2E 35 30"  # 11-30 12:05 -12.50
        " 8F 13 02 31 31 2D 32 39 20 30 39 3A 30 30 20 2B 33 37 2E 35 30"  # 11-29 09:00 +37.50
    )
    detail = (
        "D0 62 81 03 04 21 80 82 02 81 02 8D 57 04"
        " 50 75 72 63 68 61 73 65 20 31 32 2E 35 30 20 79 75 61 6E 0A"  # Purchase 12.50 yuan
        " 32 30 32 36 2D 31 31 2D 33 30 20 31 32 3A 30 35 3A 30 31 0A"  # 2026-11-30 12:05:01
        " 54 65 72 6D 69 6E 61 6C 20 30 30 30 30 30 30 30 30 30 31 30 31 0A"  # Terminal 000000000101
        " 42 61 6C 61 6E 63 65 20 61 66 74 65 72 20 32 35 2E 30 30 20 79 75 61 6E"  # Balance after 25.00 yuan
    )
    talk(
        sim,
        OPENING
        + [
            (MENU_SELECTION, "91 6C"),
            ("80 12 00 00 6C", sub_menu(2) + " 90 00"),
            (ok(2, 0x24, 0, "90 01 02"), "91 48"),
            ("80 12 00 00 48", listing + " 90 00"),
            (ok(3, 0x24, 0, "90 01 01"), "91 64"),
            ("80 12 00 00 64", detail + " 90 00"),
            (ok(4, 0x21, 0x80), "91 48"),  # back to the list
            ("80 12 00 00 48", listing.replace("81 03 03", "81 03 05") + " 90 00"),
            (back(5), "91 6C"),
            ("80 12 00 00 6C", sub_menu(6) + " 90 00"),
            (back(6), "90 00"),
        ],
    )


def test_ten_transactions_of_large_amounts_fit_one_command(card_file):
    state = CardStateFile(card_file).load()
    state.purse.records = [dict(records()[1], counter=n, amount=199_999_99) for n in range(10)]
    CardStateFile(card_file).save(state)
    sim = load_sim(card_file)
    sim.power_on()
    talk(sim, OPENING + [(MENU_SELECTION, "91 6C"), ("80 12 00 00 6C", sub_menu(2) + " 90 00")])
    pending = sim.transmit(x(ok(2, 0x24, 0, "90 01 02")))
    assert pending[0] == 0x91
    details, listing = stk.parse_command(sim.transmit(bytes([0x80, 0x12, 0, 0, pending[1]]))[:-2])
    assert isinstance(listing, stk.SelectItem) and 8 <= len(listing.items) <= 10
    assert listing.items[0].text == "11-30 12:05 -199999.99"


def test_card_status_and_validity(sim):
    status = (
        "D0 44 81 03 03 21 80 82 02 81 02 8D 39 04 45 6E 74 65 72 70 72 69 73 65 20 30 30 30 31 30 30 30 31 0A"
        " 53 74 61 74 75 73 3A 20 41 63 74 69 76 65 0A"  # Status: Active
        " 43 61 72 64 20 31 31 32 32 33 33 34 34 35 35 36 36 37 37 38 38"  # Card 1122334455667788
    )
    validity = (
        "D0 3E 81 03 05 21 80 82 02 81 02 8D 33 04 45 6E 74 65 72 70 72 69 73 65 20 30 30 30 31 30 30 30 31 0A"
        " 56 61 6C 69 64 20 32 30 32 36 2D 30 31 2D 30 31 20 74 6F 20 32 30 32 38 2D 31 32 2D 33 31"
    )
    talk(
        sim,
        OPENING
        + [
            (MENU_SELECTION, "91 6C"),
            ("80 12 00 00 6C", sub_menu(2) + " 90 00"),
            (ok(2, 0x24, 0, "90 01 03"), "91 46"),
            ("80 12 00 00 46", status + " 90 00"),
            (ok(3, 0x21, 0x80), "91 6C"),
            ("80 12 00 00 6C", sub_menu(4) + " 90 00"),
            (ok(4, 0x24, 0, "90 01 04"), "91 40"),
            ("80 12 00 00 40", validity + " 90 00"),
            (ok(5, 0x21, 0x80), "91 6C"),
            ("80 12 00 00 6C", sub_menu(6) + " 90 00"),
            (back(6), "90 00"),
        ],
    )


GET_INPUT = (
    "D0 3E 81 03 {n:02X} 23 04 82 02 81 82 8D 2F 04 53 65 72 76 69 63 65 20 70 61 73 73 77 6F 72 64 20 74 6F 20"
    " 64 65 6C 65 74 65 20 45 6E 74 65 72 70 72 69 73 65 20 30 30 30 31 30 30 30 31 91 02 04 08"
)  # GET INPUT, qualifier 04 (digits, hidden), "Service password to delete Enterprise 00010001", length 4..8


def typed(n: int, digits: str) -> str:
    body = " ".join(f"{ord(c):02X}" for c in digits)
    return ok(n, 0x23, 0x04, f"8D {len(digits) + 1:02X} 04 {body}")


def to_password_prompt() -> list[tuple[str, str]]:
    return OPENING + [
        (MENU_SELECTION, "91 6C"),
        ("80 12 00 00 6C", sub_menu(2) + " 90 00"),
        (ok(2, 0x24, 0, "90 01 05"), "91 40"),
        ("80 12 00 00 40", GET_INPUT.format(n=3) + " 90 00"),
    ]


def test_delete_without_a_service_password_sends_the_holder_to_the_card_office(sim):
    no_password = (
        "D0 42 81 03 03 21 80 82 02 81 02 8D 37 04 4E 6F 20 73 65 72 76 69 63 65 20 70 61 73 73 77 6F 72 64 20 69"
        " 73 20 73 65 74 3A 20 73 65 74 20 6F 6E 65 20 61 74 20 74 68 65 20 63 61 72 64 20 6F 66 66 69 63 65"
    )
    talk(
        sim,
        OPENING
        + [
            (MENU_SELECTION, "91 6C"),
            ("80 12 00 00 6C", sub_menu(2) + " 90 00"),
            (ok(2, 0x24, 0, "90 01 05"), "91 44"),
            ("80 12 00 00 44", no_password + " 90 00"),
        ],
    )


def wrong(n: int, left: int) -> str:
    if left == 0:
        text = "Wrong password: blocked, unblock it at the card office"
    else:
        text = f"Wrong password: {left} {'try' if left == 1 else 'tries'} left"
    return stk.encode_command(n, stk.DisplayText(text)).hex()


def test_delete_application_end_to_end_on_the_card(sim, card_file):
    assert office_set_password(sim, card_file, PASSWORD) == x("9000")
    state = CardStateFile(card_file).load()
    signed = "44 4C 01 11 22 33 44 55 66 77 88 00 01 00 01 01 01 00 00 09 C4 00 00 00 00"  # 25.00 yuan frozen
    mac = mac8(state.algorithm, state.purse.tac_key, x(signed)).hex()
    confirm = (
        "D0 52 81 03 07 24 00 82 02 81 82 85 37 44 65 6C 65 74 65 20 45 6E 74 65 72 70 72 69 73 65 20 30 30 30 31"
        " 30 30 30 31 3F 20 32 35 2E 30 30 20 79 75 61 6E 20 77 69 6C 6C 20 62 65 20 72 65 66 75 6E 64 65 64"
        " 8F 07 01 44 65 6C 65 74 65 8F 05 02 4B 65 65 70"
    )  # "Delete Enterprise 00010001? 25.00 yuan will be refunded": Delete / Keep
    sms = (
        "D0 52 81 03 08 13 00 82 02 81 83 85 18 53 65 6E 64 69 6E 67 20 64 65 6C 65 74 69 6F 6E 20 72 65 71 75 65"
        " 73 74 8B 2D 01 00 0A 91 68 01 56 59 00 00 04 21 " + signed + " " + mac
    )  # SEND SHORT MESSAGE to the UICC's network: SMS-SUBMIT to +8610659500, 8-bit data, the 33-byte request
    talk(
        sim,
        to_password_prompt()
        + [
            (typed(3, "111111"), "91 2A"),
            ("80 12 00 00 2A", wrong(4, 2) + " 90 00"),
            (ok(4, 0x21, 0x80), "91 6C"),
            ("80 12 00 00 6C", sub_menu(5) + " 90 00"),
            (ok(5, 0x24, 0, "90 01 05"), "91 40"),
            ("80 12 00 00 40", GET_INPUT.format(n=6) + " 90 00"),
            (typed(6, PASSWORD), "91 54"),
            ("80 12 00 00 54", confirm + " 90 00"),
            (ok(7, 0x24, 0, "90 01 01"), "91 54"),
            ("80 12 00 00 54", sms + " 90 00"),
            (ok(8, 0x13, 0x00), "91 7E"),
            (
                "80 12 00 00 7E",
                stk.encode_command(
                    9,
                    stk.DisplayText(
                        "Enterprise 00010001 deleted on this card. The platform refunds its balance; "
                        "your other applications keep working"
                    ),
                ).hex()
                + " 90 00",
            ),  # fmt: skip
            (ok(9, 0x21, 0x80), "91 45"),  # the main menu again, replacing the handset's: the entry is voided
            (
                "80 12 00 00 45",
                SET_UP_MENU.replace("D0 3A 81 03 01", "D0 43 81 03 0A").replace("8F 14", "8F 1D")
                + " 20 28 76 6F 69 64 65 64 29 90 00",
            ),  # fmt: skip
            (ok(10, 0x25, 0), "90 00"),
        ],
    )
    assert ToolkitStateFile(toolkit_path(card_file)).load().tries_left == MAX_TRIES  # a right try resets the count
    # The sub-application was voided before the request left: its purse refuses, its doors refuse.
    card = OneCardApplet(CardStateFile(card_file).load())
    card.power_on()
    assert card.transmit(x("00A4040009F04F4E454341524401"))[-2:] == x("9000")
    assert card.transmit(x("803A00000E") + bytes(14)) == x("6985")  # ACCESS READ: no door opens for it
    assert CardStateFile(card_file).load().status == 2


def test_keep_on_the_confirmation_deletes_nothing(sim, card_file):
    office_set_password(sim, card_file, PASSWORD)
    talk(sim, to_password_prompt() + [(typed(3, PASSWORD), "91 54")])
    sim.transmit(x("80 12 00 00 54"))
    assert sim.transmit(x(ok(4, 0x24, 0, "90 01 02"))) == x("916C")  # Keep: the sub-application's menu
    assert CardStateFile(card_file).load().status == 1


def test_three_wrong_passwords_block_it_until_the_card_office_unblocks(sim, card_file):
    assert office_set_password(sim, card_file, PASSWORD) == x("9000")
    conversation = to_password_prompt()
    n = 3
    for left in (2, 1, 0):
        conversation += [
            (typed(n, "000000"), f"91 {len(x(wrong(n + 1, left))):02X}"),
            (f"80 12 00 00 {len(x(wrong(n + 1, left))):02X}", wrong(n + 1, left) + " 90 00"),
            (ok(n + 1, 0x21, 0x80), "91 6C"),
            ("80 12 00 00 6C", sub_menu(n + 2) + " 90 00"),
        ]
        if left:
            conversation += [
                (ok(n + 2, 0x24, 0, "90 01 05"), "91 40"),
                ("80 12 00 00 40", GET_INPUT.format(n=n + 3) + " 90 00"),
            ]
        n += 3
    blocked = stk.encode_command(n, stk.DisplayText("Service password blocked: unblock it at the card office")).hex()
    size = f"{len(x(blocked)):02X}"
    conversation += [(ok(n - 1, 0x24, 0, "90 01 05"), f"91 {size}"), (f"80 12 00 00 {size}", blocked + " 90 00")]
    talk(sim, conversation)
    assert ToolkitStateFile(toolkit_path(card_file)).load().tries_left == 0
    # Unblocking needs the card office's key: a wrong MAC or no challenge changes nothing.
    assert sim.transmit(x("842C0001 10") + b"13579\xff\xff\xff" + bytes(8)) == x("6982")
    sim.transmit(x("0084000008"))
    assert sim.transmit(x("842C0001 10") + b"13579\xff\xff\xff" + bytes(8)) == x("6988")
    assert ToolkitStateFile(toolkit_path(card_file)).load().tries_left == 0
    assert office_set_password(sim, card_file, "13579") == x("9000")
    saved = ToolkitStateFile(toolkit_path(card_file)).load()
    assert (saved.password, saved.tries_left) == ("13579", MAX_TRIES)


def test_card_office_command_refusals(sim, card_file):
    assert office_set_password(sim, card_file, "123") == x("6A80")  # 4..8 digits
    assert office_set_password(sim, card_file, "12a4") == x("6A80")
    assert office_set_password(sim, card_file, PASSWORD, p2=2) == x("6A82")  # no sub-application 2
    assert sim.transmit(x("0084000000")) == x("6700")
    assert sim.transmit(x("0084010008")) == x("6A86")
    assert sim.transmit(x("842C0101 10") + bytes(16)) == x("6A86")
    assert sim.transmit(x("842C0001 08") + bytes(8)) == x("6700")
    assert not toolkit_path(card_file).exists()


def test_status_words_of_the_toolkit_commands(sim, card_file):
    talk(
        sim,
        [
            ("80 14 00 00 0C 81 03 01 25 00 82 02 82 81 83 01 00", "69 85"),  # before TERMINAL PROFILE
            ("80 C2 00 00 09 D3 07 82 02 01 81 90 01 01", "69 85"),
            ("80 12 00 00 10", "69 85"),  # nothing to fetch
            ("80 10 00 00 01 01", "90 00"),  # a handset without the menu's facilities gets no menu
            ("80 12 00 00 10", "69 85"),
            ("A0 10 00 00 04 0B 61 05 23", "6E 00"),
            ("80 11 00 00 00", "6D 00"),
            ("80 10 01 00 04 0B 61 05 23", "6A 86"),
            ("80 10 00 00", "67 00"),
            ("80 12 00 00", "67 00"),
            ("80 10", "67 00"),
            (PROFILE, "91 3C"),
            ("80 12 00 00 10", "6C 3C"),  # wrong Le: the right one
            ("80 14 00 00 0C 81 03 01 25 00 82 02 82 81 83 01 00", "69 85"),  # not fetched yet
            ("80 12 00 00 3C", SET_UP_MENU + " 90 00"),
            ("80 12 00 00 3C", "69 85"),  # fetched once only
            ("80 14 00 00 0C 81 03 02 25 00 82 02 82 81 83 01 00", "6A 80"),  # another command's number
            ("80 14 00 00 03 81 03 01", "6A 80"),  # not a terminal response
            (ok(1, 0x25, 0), "90 00"),
            ("80 C2 00 00 09 D3 07 82 02 01 81 90 01 02", "6A 80"),  # no such item
            ("80 C2 00 00 09 D1 07 82 02 01 81 90 01 01", "6A 80"),  # not a menu selection
            ("80 C2 00 00 09 D3 07 82 02 02 81 90 01 01", "6A 80"),  # not from the keypad
            (MENU_SELECTION, "91 6C"),
            (MENU_SELECTION, "93 00"),  # a session is running
            ("80 12 00 00 6C", sub_menu(2) + " 90 00"),
            ("80 14 00 00 0C 81 03 02 24 00 82 02 82 81 83 01 10", "90 00"),  # terminated by the user
            (MENU_SELECTION, "91 6C"),
        ],
    )


def test_a_transport_card_offers_no_menu(tmp_path, card_file):
    state = CardStateFile(card_file).load()
    state.status = 0
    CardStateFile(card_file).save(state)
    sim = load_sim(card_file)
    sim.power_on()
    assert sim.transmit(x(PROFILE)) == x("9000")


def test_power_off_forgets_the_session(sim):
    talk(sim, OPENING + [(MENU_SELECTION, "91 6C")])
    sim.power_off()
    sim.power_on()
    talk(sim, [(MENU_SELECTION, "69 85")] + OPENING)


# --- the handset driver against the SIM -----------------------------------------------------------------------------


class Script:
    """A holder following a script: one answer per screen, and a record of what was shown."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.shown: list[str] = []

    def select_item(self, title, items):
        self.shown.append(f"{title}: " + " | ".join(f"{i.id}.{i.text}" for i in items))
        return self.answers.pop(0)

    def display_text(self, text):
        self.shown.append(text)
        return self.answers.pop(0)

    def get_input(self, prompt, command):
        self.shown.append(prompt)
        answer = self.answers.pop(0)
        assert answer is None or validate_input(answer, command) is None
        return answer

    def sending(self, alpha):
        self.shown.append(alpha)


class Counted:
    def __init__(self, card):
        self.card, self.apdus = card, []

    def transmit(self, apdu):
        self.apdus.append(apdu)
        return self.card.transmit(apdu)


def test_handset_reads_the_menu_and_the_balance(sim):
    script = Script([1, True, None])
    handset = Handset(Counted(sim), script, lambda d, u: None)
    menu = handset.start()
    assert menu == stk.SetUpMenu("壹卡通 One-card", (stk.Item(1, "Enterprise 00010001"),))
    handset.choose(1)
    assert script.shown[1] == "Enterprise 00010001\nBalance 25.00 yuan\nValid until 2028-12-31"
    assert handset.apdus == 3 + 1 + 2 + 2 + 2  # profile, fetch, TR; envelope; fetch + TR three times
    with pytest.raises(HandsetError, match="item 7 is not in the SIM's menu"):
        handset.choose(7)


def test_handset_sends_the_deletion_request_and_tells_the_sim_when_the_network_fails(sim, card_file):
    office_set_password(sim, card_file, PASSWORD)
    sent = []
    script = Script([5, PASSWORD, 1, True])
    handset = Handset(sim, script, lambda dest, data: sent.append((dest, data)) or "no network")
    handset.start()
    handset.choose(1)
    assert script.shown[-2] == "Sending deletion request"
    assert script.shown[-1].startswith("Not sent (21): Enterprise 00010001 is voided on this card")
    (dest, data), = sent  # fmt: skip
    assert dest == "8610659500"
    request, mac = dr.parse(data)
    assert (request.asn, request.frozen_balance) == (ASN, 2500)


def test_handset_answers_a_command_it_does_not_know_beyond_its_capabilities():
    play_tone = x("D0 09 81 03 01 20 00 82 02 81 03")

    class Sim:
        def __init__(self):
            self.responses = []

        def transmit(self, apdu):
            if apdu[1] == 0x10:
                return bytes([0x91, len(play_tone)])
            if apdu[1] == 0x12:
                return play_tone + x("9000")
            self.responses.append(apdu)
            return x("9000")

    fake = Sim()
    assert Handset(fake, Script([]), lambda d, u: None).start() is None
    assert fake.responses == [x("80 14 00 00 0C 81 03 01 20 00 82 02 82 81 83 01 30")]  # beyond capabilities


def test_handset_refuses_a_sim_that_answers_outside_the_protocol():
    class Broken:
        def transmit(self, apdu):
            return x("6F00")

    with pytest.raises(HandsetError, match="TERMINAL PROFILE: the SIM answered 6F 00"):
        Handset(Broken(), Script([]), lambda d, u: None).start()


# --- deletion at the platform ---------------------------------------------------------------------------------------


@pytest.fixture
def platform(tmp_path, card_file):
    pf = Platform(tmp_path / "platform.db", Ed25519PrivateKey.generate(), tac_sam=SAM)
    pf.add_enterprise(EID, "Acme")
    pf.add_holder(EID, "E1001", "Zhang Wei", phone="13800000001")
    pf.issue_card(EID, "E1001", ASN.hex(), {"door_groups": [1]}, balance_cents=2500)
    yield pf
    pf.close()


def deletion_request(sim, card_file) -> bytes:
    office_set_password(sim, card_file, PASSWORD)
    sent = []
    handset = Handset(sim, Script([5, PASSWORD, 1, True]), lambda dest, data: sent.append(data))
    handset.start()
    handset.choose(1)
    return sent[0]


def test_platform_deletes_the_sub_application_settles_and_tells_every_terminal(sim, card_file, platform):
    request = deletion_request(sim, card_file)
    before = platform.conn.execute("SELECT count(*) FROM outbound").fetchone()[0]
    done = platform.delete_application(request)
    assert done == {"asn": ASN.hex(), "enterprise_id": EID, "refunded_cents": 2500, "blacklist_version": 1}
    card = platform.card(ASN.hex())
    assert (card["status"], card["balance_cents"]) == ("CANCELLED", 0)
    assert platform.conn.execute("SELECT amount_cents FROM refunds WHERE asn = ?", (ASN.hex(),)).fetchall() == [(2500,)]
    assert platform.voided(ASN.hex())["frozen_cents"] == 2500
    assert platform.conn.execute("SELECT reason FROM blacklist WHERE asn = ?", (ASN.hex(),)).fetchall() == [
        ("cancelled",)
    ]
    topics = [t for (t,) in platform.conn.execute("SELECT topic FROM outbound ORDER BY rowid").fetchall()[before:]]
    assert topics == [p.enterprise_topic(EID)]
    history = [a for (a,) in platform.conn.execute("SELECT action FROM card_history WHERE asn = ?", (ASN.hex(),))]
    assert history[-3:] == ["void", "cancel", "deleted_by_holder"]
    # The same request again (the holder resent it): nothing more happens.
    assert platform.delete_application(request)["blacklist_version"] is None
    assert platform.conn.execute("SELECT count(*) FROM refunds").fetchone()[0] == 1


def test_platform_refuses_forged_or_altered_requests_and_changes_nothing(sim, card_file, platform):
    request = deletion_request(sim, card_file)
    altered = bytearray(request)
    altered[20] ^= 0x01  # the frozen balance
    for bad, why in (
        (bytes(altered), "does not verify"),
        (request[:-1], "33 bytes"),
        (b"XX" + request[2:], "not a deletion request"),
        (request[:2] + b"\x02" + request[3:], "version 2"),
        (request[:15] + b"\x07" + request[16:], "deletion request refused"),  # no such algorithm
        (request[:11] + x("00020002") + request[15:], "no application of enterprise 00020002"),
    ):
        with pytest.raises(PlatformError, match=why):
            platform.delete_application(bad)
    assert platform.card(ASN.hex())["status"] == "ACTIVE"
    assert platform.conn.execute("SELECT count(*) FROM refunds").fetchone()[0] == 0


def test_platform_without_tac_keys_refuses(sim, card_file, tmp_path):
    request = deletion_request(sim, card_file)
    pf = Platform(tmp_path / "other.db", Ed25519PrivateKey.generate())
    with pytest.raises(PlatformError, match="no TAC keys"):
        pf.delete_application(request)
    pf.close()


def test_toolkit_file_is_checked_when_read(card_file):
    path = toolkit_path(card_file)
    path.write_text(json.dumps({"format": "onecard-sim-toolkit/1", "password": "12", "tries_left": 3,
                                "platform_number": "1"}))  # fmt: skip
    with pytest.raises(ValueError, match="password must be 4..8 digits"):
        ToolkitStateFile(path).load()


# --- the card office, through the station's SAM ---------------------------------------------------------------------


def test_card_office_unblocks_through_its_sam(sim, card_file):
    from phone.office import OfficeError, reset_retry_counter_apdu, set_service_password
    from sam.interface import CardIdentity

    state = CardStateFile(card_file).load()
    sub = set_service_password(sim, SAM, state.enterprise_id, PASSWORD)
    assert (sub.index, sub.card.asn) == (1, ASN)
    assert ToolkitStateFile(toolkit_path(card_file)).load().password == PASSWORD
    with pytest.raises(OfficeError, match="of enterprise 00010001, not 00020002"):
        set_service_password(sim, make_sam(bytes.fromhex("00020002")), bytes.fromhex("00020002"), "9999")
    # Another enterprise's station that sends the command anyway: its MAC does not verify, nothing changes.
    other = CardIdentity(state.asn, bytes.fromhex("00020002"), state.key_version, state.algorithm)
    challenge = sim.transmit(x("0084000008"))[:8]
    apdu = reset_retry_counter_apdu(challenge, "9999", 1, make_sam(bytes.fromhex("00020002")), other)
    assert sim.transmit(apdu) == x("6988")
    with pytest.raises(OfficeError, match="4 to 8 digits"):
        set_service_password(sim, SAM, state.enterprise_id, "99")
    assert ToolkitStateFile(toolkit_path(card_file)).load().password == PASSWORD


def test_the_password_never_crosses_the_contact_interface_in_clear(sim, card_file):
    """What the office sends is the password XOR a keystream fresh for each challenge; the SAM's encipherment is the
    one the document gives, and the SIM refuses the clear form of the earlier version of this command (its bytes
    decipher to no password: 6A 80) and a ciphertext altered by one bit (69 88)."""
    from phone.office import reset_retry_counter_apdu
    from sam.interface import CardIdentity

    state = CardStateFile(card_file).load()
    card = CardIdentity(state.asn, state.enterprise_id, state.key_version, state.algorithm)
    sent = []
    for _ in range(2):
        challenge = sim.transmit(x("0084000008"))[:8]
        apdu = reset_retry_counter_apdu(challenge, PASSWORD, 1, SAM, card)
        assert apdu == office_apdu(state.update_key, challenge, PASSWORD.encode())
        assert PASSWORD.encode() not in apdu and apdu[5:13] != PASSWORD.encode().ljust(8, b"\xff")
        sent.append(apdu[5:13])
        assert sim.transmit(apdu) == x("9000")
    assert sent[0] != sent[1]  # a new challenge, a new keystream
    challenge = sim.transmit(x("0084000008"))[:8]
    plain = b"13579".ljust(8, b"\xff")
    header = x("842C000110")
    clear = header + plain + mac8(state.algorithm, state.update_key, challenge + header + plain)
    assert sim.transmit(clear) == x("6A80")
    challenge = sim.transmit(x("0084000008"))[:8]
    flipped = bytearray(reset_retry_counter_apdu(challenge, "13579", 1, SAM, card))
    flipped[5] ^= 1
    assert sim.transmit(bytes(flipped)) == x("6988")
    assert ToolkitStateFile(toolkit_path(card_file)).load().password == PASSWORD


def test_the_contact_interface_answers_the_identification_commands_only(sim, card_file):
    """SELECT and READ RECORD reach the one-card application read-only (the office's index and key); ACCESS READ,
    the purse and the secured commands of the contactless application are not reachable on the contact side."""
    assert sim.transmit(x("00B2012C00")) == x("6986")  # nothing selected on this interface yet
    fci = sim.transmit(x("00A4040009F04F4E45434152440100"))
    assert fci[-2:] == x("9000") and ASN in fci
    assert sim.transmit(x("00A4040009F04F4E45434152440200")) == x("6A82")  # a version 1 card
    assert sim.transmit(x("803A00000E") + bytes(14) + x("00")) == x("6D00")
    assert sim.transmit(x("805C000204")) == x("6D00")
    assert CardStateFile(card_file).load().access_counter == 0


def test_only_a_tac_key_with_verify_checks_a_deletion_request(sim, card_file, tmp_path):
    from sam.interface import CardIdentity, KeyUsage, SamError

    request, mac = dr.parse(deletion_request(sim, card_file))
    card = CardIdentity(request.asn, request.enterprise_id, request.key_version, Algorithm(request.algorithm))
    SAM.verify_deletion_proof(card, request.signed_part(), mac)
    issuing_only = SoftwareSam(make_keystore(usages=(KeyUsage.PERSONALISE,)))
    with pytest.raises(SamError, match="verify"):
        issuing_only.verify_deletion_proof(card, request.signed_part(), mac)
    with pytest.raises(SamError, match="44 4C 01"):
        SAM.verify_deletion_proof(card, b"XX" + request.signed_part()[2:], mac)
    with pytest.raises(SamError, match="8 bytes|MAC"):
        SAM.verify_deletion_proof(card, request.signed_part(), mac[:7])
