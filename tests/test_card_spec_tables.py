"""docs/card-application.md against the simulator: the command / status-word tables of section 3.0 and the version 2
worked example of section 9.10, both parsed from the markdown, so the document and the card cannot drift apart."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from common import bcd
from sam import crypto
from sam.interface import Algorithm
from simulator import card as sim
from simulator.card import CardState, MultiCardState, OneCardApplet, OneCardV2Applet, Purse, SubsidyPurse
from terminal.card_protocol import encode_access_file

DOC = (Path(__file__).resolve().parent.parent / "docs" / "card-application.md").read_text(encoding="utf-8")

A, B = bytes.fromhex("00010001"), bytes.fromhex("00020002")
MASTER_A = bytes(range(16))  # ACCESS master keys of the worked example (section 9.10)
MASTER_B = bytes(range(16, 32))
SERIAL = bytes.fromhex("0C0C0C0C0C0C0C0C")


def table_after(heading: str) -> list[list[str]]:
    """The first markdown table after `heading`, as rows of cells (header and separator dropped)."""
    start = DOC.index(heading)
    rows = []
    for line in DOC[start:].splitlines()[1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]


def hex_cell(cell: str) -> bytes:
    text = cell.strip("`")
    text = re.sub(r"<(\d+) x>", lambda m: "00 " * int(m.group(1)), text)
    return bytes.fromhex(text)


def holder(employee: str, name: str) -> bytes:
    return employee.encode().ljust(16, b"\0") + name.encode().ljust(32, b"\0")


def app(enterprise, master, asn, employee, name, groups, label, purse=True, app_version=2, status=1) -> CardState:
    key = crypto.diversify(Algorithm.AES128, master, asn + enterprise)
    return CardState(
        asn=asn,
        enterprise_id=enterprise,
        status=status,
        key_version=1,
        algorithm=Algorithm.AES128,
        card_type=sim.CARD_TYPE_RFID_SIM,
        access_key=key,
        holder=holder(employee, name),
        access=encode_access_file(dt.date(2026, 1, 1), dt.date(2028, 12, 31), groups, 1),
        update_key=crypto.diversify(Algorithm.AES128, bytes(16), asn + enterprise),
        purse=Purse(
            balance=10_000,
            expiry=bcd.encode_date(dt.date(2027, 12, 31)),
            max_balance=200_000,
            key_version=1,
            purchase_key=bytes(16),
            load_key=bytes(16),
            tac_key=bytes(16),
        )
        if purse
        else None,
        name=label if app_version == 2 else "",
        app_version=app_version,
    )


def worked_example_card() -> OneCardV2Applet:
    """The two-enterprise card of section 9.10, built from the values the document gives."""
    office = app(A, MASTER_A, bytes.fromhex("1122334455667788"), "E1001", "Zhang Wei", {1, 3}, "Office")
    community = app(B, MASTER_B, bytes.fromhex("99AABBCCDDEEFF00"), "R-0707", "张伟", {1}, "Community", purse=False)
    return OneCardV2Applet(MultiCardState(SERIAL, sim.CARD_TYPE_RFID_SIM, Algorithm.AES128, None, [office, community]))


def card_in(state: str):
    if state.startswith("v2"):
        card = worked_example_card()
        if "subsidy" in state:
            card.card.apps[0].subsidy = SubsidyPurse(
                2_000, bcd.encode_date(dt.date(2027, 12, 31)), 100_000, last_allowance=3
            )
        card.power_on()
        if state == "v2 dir":
            assert card.transmit(bytes.fromhex("00A4040009F04F4E45434152440200"))[-2:] == b"\x90\x00"
        elif state.startswith("v2 sel"):
            assert card.transmit(bytes.fromhex("00A404000DF04F4E4543415244020001000100"))[-2:] == b"\x90\x00"
        if "pin" in state.split():
            card.card.apps[0].pin = "2468"
            assert card.transmit(bytes.fromhex("0020008008242468FFFFFFFFFF")) == b"\x90\x00"
        if "two-purse" in state:
            init = bytes.fromhex("805001030C0100000001000000000001011A")
            assert card.transmit(init)[-2:] == b"\x90\x00"
        if "withdraw" in state:
            card.card.apps[0].subsidy.expiry = bcd.encode_date(dt.date(2026, 1, 1))
            assert card.transmit(bytes.fromhex("805002010B01000000000000000000010F"))[-2:] == b"\x90\x00"
        return card
    words = state.split()
    s = app(
        A,
        MASTER_A,
        bytes.fromhex("1122334455667788"),
        "E1001",
        "Zhang Wei",
        {1, 3},
        "",
        purse="no" not in words,
        app_version=1,
        status=2 if "voided" in words else 1,
    )
    card = OneCardApplet(state=s)
    card.power_on()
    if "sel" in words:
        assert card.transmit(bytes.fromhex("00A4040009F04F4E45434152440100"))[-2:] == b"\x90\x00"
    return card


COMMAND_ROWS = table_after("### 3.0 Command and status-word summary")


def test_the_summary_table_is_there_and_covers_every_command():
    assert len(COMMAND_ROWS) >= 60
    inss = {hex_cell(r[3])[:2] for r in COMMAND_ROWS}
    for cla_ins in ("00A4", "00B0", "803A", "8050", "8054", "8052", "805C", "805A", "0084", "00B2", "84E0", "84E4"):
        assert bytes.fromhex(cla_ins) in inss, cla_ins


@pytest.mark.parametrize("row", COMMAND_ROWS, ids=[r[0] for r in COMMAND_ROWS])
def test_each_row_of_the_summary_table_is_what_the_card_answers(row):
    number, what, state, capdu, sw = row
    answer = card_in(state).transmit(hex_cell(capdu))
    assert answer[-2:] == hex_cell(sw), f"row {number} ({what}): card answered {answer[-2:].hex()}"


def test_the_status_word_table_lists_exactly_what_the_card_can_answer():
    documented = {
        hex_cell(r[0])
        for r in table_after("All status words the card can answer")
        if "xx" not in r[0] and "Cx" not in r[0]
    }
    emitted = {v for k, v in vars(sim).items() if k.startswith("SW_") and isinstance(v, bytes)}
    assert documented == emitted


def test_the_atrs_of_section_1_are_the_cards():
    assert "`" + sim.ATR.hex(" ").upper() + "`" in DOC
    assert "`" + sim.ATR_V2.hex(" ").upper() + "`" in DOC


# --- the worked example of section 9.10, replayed ----------------------------------------------------------


def exchanges() -> list[tuple[bytes, bytes]]:
    block = DOC[DOC.index("### 9.10") :]
    block = block[block.index("```") + 3 :]
    block = block[: block.index("```")]
    pairs: list[tuple[bytes, bytes]] = []
    current = None
    for line in block.splitlines():
        code = line.split("#")[0].rstrip()
        if "=" in code:
            continue
        if code.startswith("> "):
            current = [bytes.fromhex(code[2:]), b""]
            pairs.append(current)  # type: ignore[arg-type]
        elif code.startswith("< ") and current is not None:
            current[1] = bytes.fromhex(code[2:])
        elif code.startswith("  ") and current is not None and code.strip():
            current[1] += bytes.fromhex(code)
    return [(c, r) for c, r in pairs]


def test_the_worked_example_of_section_9_10_is_byte_exact():
    pairs = exchanges()
    assert len(pairs) >= 7
    card = worked_example_card()
    card.power_on()
    for command, expected in pairs:
        assert card.transmit(command).hex(" ").upper() == expected.hex(" ").upper(), command.hex()


def test_the_worked_example_keys_and_encipherment_are_as_stated():
    card = worked_example_card()
    card.power_on()
    card.transmit(bytes.fromhex("00A404000DF04F4E4543415244020001000100"))
    answer = card.transmit(bytes.fromhex("803A00000E010203040506070800000000000100"))
    office = card.card.apps[0]
    key = crypto.diversify(Algorithm.AES128, MASTER_A, office.asn + A)
    sk = crypto.data_session_key(Algorithm.AES128, key, bytes.fromhex("0102030405060708") + b"\0\0\0\1")
    assert key.hex(" ").upper() in DOC and sk.hex(" ").upper() in DOC
    assert crypto.ctr_crypt(Algorithm.AES128, sk, answer[1:81]) == office.access + office.holder
    message = office.asn + A + b"\x01" + bytes.fromhex("0102030405060708") + bytes.fromhex("000000000001")
    assert crypto.mac8(Algorithm.AES128, key, message + answer[:85]) == answer[85:93]


def sealed_balance_exchanges() -> list[tuple[bytes, bytes, bytes]]:
    """(card random, C-APDU, R-APDU) of section 5.2a's example, parsed from the document."""
    start = DOC.index("### 5.2a ")
    block = DOC[start : DOC.index("### 5.3 ", start)]
    block = block[block.index("```\n>") :]
    triples, command, random = [], None, None
    for line in block.splitlines():
        if line.startswith("> "):
            command = bytes.fromhex(line[2:].split("#")[0])
            random = bytes.fromhex(re.search(r"random ([0-9A-F ]{11})\)", line).group(1))
        elif line.startswith("< "):
            triples.append((random, command, bytes.fromhex(line[2:])))
    return triples


def test_the_sealed_balance_example_of_section_5_2a_is_byte_exact():
    from unittest import mock

    from sam import purse_crypto

    card = card_in("v2 sel subsidy")
    purse = card.card.apps[0].purse
    purse.purchase_key, purse.load_key = bytes(range(0x20, 0x30)), bytes(range(0x30, 0x40))
    triples = sealed_balance_exchanges()
    assert len(triples) == 3
    for random, command, expected in triples:
        with mock.patch("simulator.card.os.urandom", return_value=random):
            assert card.transmit(command).hex(" ").upper() == expected.hex(" ").upper(), command.hex()
    # The session keys and the deciphered fields the document states.
    alg = Algorithm.AES128
    (r1, _, a1), (r2, _, a2), (r3, _, a3) = triples
    keys = [(purse.purchase_key, r1), (purse.load_key, r2), (purse.purchase_key, r3)]
    for key, random in keys:
        assert purse_crypto.balance_session_key(alg, key, random, 0).hex(" ").upper() in DOC
    assert purse_crypto.seal_purse_data(alg, purse.purchase_key, r1, 0, a1[:4]) == (10_000).to_bytes(4, "big")
    assert purse_crypto.seal_purse_data(alg, purse.load_key, r2, 0, a2[:4]) == (10_000).to_bytes(4, "big")
    clear = purse_crypto.seal_purse_data(alg, purse.purchase_key, r3, 0, a3[0:12] + a3[14:18])
    assert clear == b"".join(v.to_bytes(4, "big") for v in (2_000, 1_000, 2_000, 10_000))
