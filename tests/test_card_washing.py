"""Card washing (transport keys -> enterprise keys) at the issuing terminal: tear-proof at every APDU, refusals,
bulk progress lines, and one run over real pcscd + vpcd."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from sam.interface import Algorithm, KeyPurpose, KeyUsage
from sam.keystore import Keystore, MasterKey
from sam.software import SoftwareSam
from simulator.card import CardStateFile, OneCardApplet
from simulator.inprocess import InProcessReader
from simulator.personalise import transport_card
from terminal import card_protocol as cp
from terminal import rekey
from terminal.decision import Refusal
from terminal.event_log import EventLog
from terminal.reader import CardRemoved
from tests.support import ENTERPRISE, MONDAY_10AM, OTHER_ENTERPRISE, make_terminal

ALL = (KeyUsage.VERIFY, KeyUsage.MAC, KeyUsage.PERSONALISE, KeyUsage.REVERSAL)
ISSUED = (KeyPurpose.ACCESS, KeyPurpose.UPDATE, KeyPurpose.PURCHASE, KeyPurpose.LOAD, KeyPurpose.TAC)
ISSUING_TERMINAL = "000000000900"


def issuing_keystore(enterprise: bytes = ENTERPRISE, versions=(1, 2)) -> Keystore:
    """An issuing station's key set: the transport key and every issued purpose at each version, both algorithms."""
    keys = [MasterKey.generate(enterprise, KeyPurpose.TRANSPORT, 0, alg, ALL) for alg in Algorithm]
    keys += [MasterKey.generate(enterprise, p, v, alg, ALL) for p in ISSUED for v in versions for alg in Algorithm]
    return Keystore(keys)


def door_sam(keystore: Keystore, versions) -> SoftwareSam:
    """A door terminal's SAM: ACCESS keys of the given versions, verify only."""
    return SoftwareSam(
        Keystore(
            MasterKey(k.enterprise_id, k.purpose, k.version, k.algorithm, frozenset({KeyUsage.VERIFY}), k.key)
            for k in keystore
            if k.purpose is KeyPurpose.ACCESS and k.version in versions
        )
    )


def new_transport_card(sam, path=None, enterprise=ENTERPRISE, algorithm=Algorithm.AES128) -> OneCardApplet:
    state = transport_card(sam, enterprise, algorithm=algorithm)
    store = None
    if path is not None:
        store = CardStateFile(path)
        store.save(state)
    return OneCardApplet(state=state, store=store)


def reload(card: OneCardApplet) -> OneCardApplet:
    """The same card after a power loss: only what reached its EEPROM (the state file) survives."""
    return OneCardApplet(state=card.store.load(), store=card.store)


def tap_run(card, fn, tear_after=None):
    reader = InProcessReader()
    reader.tap(card, tear_after=tear_after)
    conn = reader.wait_for_card(0)
    try:
        return fn(conn.transmit), reader.apdu_count
    finally:
        reader.remove()


def door_decision(door_terminal, card, now=MONDAY_10AM):
    reader = InProcessReader()
    reader.tap(card)
    return door_terminal.handle_tap(reader.wait_for_card(0), now)


@pytest.fixture
def keystore():
    return issuing_keystore()


@pytest.fixture
def sam(keystore):
    return SoftwareSam(keystore)


@pytest.fixture
def log(tmp_path):
    with EventLog.open(tmp_path / "issuing.db", ISSUING_TERMINAL) as event_log:
        yield event_log


def wash(sam, log, version=1):
    return lambda transmit: rekey.rekey_card(transmit, sam, ENTERPRISE, version, log, MONDAY_10AM, rekey.WASH)


def secured_noop_accepted(card: OneCardApplet, sam) -> bool:
    """A secured command MACed under the admin key of the version the card announces: 90 00 proves those keys work.

    It rewrites EF_HOLDER's first byte with its own value, so the card's data is unchanged.
    """

    def go(transmit):
        info = rekey.select_for_admin(transmit, ENTERPRISE)
        holder = cp.parse_read_binary(transmit(cp.read_binary_command(cp.SFI_HOLDER, 0, 1)), "EF_HOLDER", 1)
        rekey.AdminChannel(transmit, sam, info).update_binary(cp.SFI_HOLDER, 0, holder, "EF_HOLDER")
        return info.key_version

    version, _ = tap_run(card, go)
    return version


def test_wash_moves_a_transport_card_to_enterprise_keys(sam, log, tmp_path):
    card = new_transport_card(sam, tmp_path / "c.json")
    result, apdus = tap_run(card, wash(sam, log))
    assert (result.outcome, result.from_version, result.to_version) == ("washed", 0, 1)
    # 2 SELECTs (version 1 card: the sub-application SELECT answers 6A 82), then per key
    # (ACCESS, UPDATE, PURCHASE, LOAD, TAC) GET CHALLENGE + PUT KEY, then GET CHALLENGE + COMMIT.
    assert apdus == 2 + 2 * 5 + 2
    state = CardStateFile(tmp_path / "c.json").load()
    assert (state.key_version, state.status, state.staged) == (1, 0, None)
    assert state.purse is not None and state.purse.key_version == 1
    kinds = [e.kind for e in log.events()]
    assert kinds == [rekey.KEYS_INTENT, rekey.KEYS_CHANGED]
    assert secured_noop_accepted(reload(card), sam) == 1


def test_wash_torn_at_every_apdu_never_bricks_the_card(sam, keystore, log, tmp_path):
    full = 2 + 2 * 5 + 2
    door, _ = make_terminal(tmp_path, door_sam(keystore, (1, 2)), "door")
    for k in range(1, full + 1):
        card = new_transport_card(sam, tmp_path / f"c{k}.json")
        with pytest.raises(CardRemoved):
            tap_run(card, wash(sam, log), tear_after=k)
        card = reload(card)
        state = card.state
        # Only the commit (the last APDU) switches the version; before it the card is wholly at version 0.
        assert state.key_version == (1 if k == full else 0), k
        # In between, the card is a sound card at the version it announces: the door refuses it for the right
        # reason (not issued yet), and a secured command under the announced version's key is accepted.
        decision = door_decision(door, card)
        assert decision.reason_code == "not_issued", (k, decision.message)
        assert secured_noop_accepted(card, sam) == state.key_version
        result, _ = tap_run(card, wash(sam, log))
        assert result.outcome == ("already" if k == full else "washed"), k
        final = card.store.load()
        assert (final.key_version, final.staged) == (1, None)
        assert secured_noop_accepted(reload(card), sam) == 1
        # The log has exactly one outcome for this card's intent, whichever tap completed it.
        asn = state.asn.hex().upper()
        mine = [e for e in log.events() if e.asn == asn]
        assert [e.kind for e in mine] == [rekey.KEYS_INTENT, rekey.KEYS_CHANGED], k
        assert mine[1].detail["resolved_at_next_tap"] is (k == full)


def test_card_of_another_enterprise_is_refused_and_unchanged(log, tmp_path):
    other_sam = SoftwareSam(issuing_keystore(OTHER_ENTERPRISE))
    card = new_transport_card(other_sam, tmp_path / "other.json", enterprise=OTHER_ENTERPRISE)
    with pytest.raises(Refusal) as exc:
        tap_run(card, wash(SoftwareSam(issuing_keystore()), log))
    assert exc.value.reason_code == "other_enterprise"
    assert "belongs to enterprise 00020002" in exc.value.message
    assert CardStateFile(tmp_path / "other.json").load().key_version == 0
    assert log.events() == []


def test_card_with_an_unknown_key_version_is_refused_with_a_clear_message(keystore, log, tmp_path):
    sam = SoftwareSam(keystore)
    card = new_transport_card(sam, tmp_path / "c.json")
    tap_run(card, wash(sam, log, version=2))
    only_v1 = SoftwareSam(Keystore(k for k in keystore if k.version in (0, 1)))
    with pytest.raises(Refusal) as exc:
        tap_run(card, lambda t: rekey.rekey_card(t, only_v1, ENTERPRISE, 1, log, MONDAY_10AM, rekey.ROTATE))
    assert exc.value.reason_code == "unknown_key_version"
    assert exc.value.message.startswith("Card key version 2 (AES128) is unknown to this issuing terminal's SAM")
    assert card.store.load().key_version == 2


def test_wash_refuses_a_card_already_washed_to_another_version(sam, log, tmp_path):
    card = new_transport_card(sam, tmp_path / "c.json")
    tap_run(card, wash(sam, log, version=1))
    with pytest.raises(Refusal) as exc:
        tap_run(card, wash(sam, log, version=2))
    assert exc.value.reason_code == "already_washed"


def test_sm4_card_is_washed(sam, log, tmp_path):
    card = new_transport_card(sam, tmp_path / "c.json", algorithm=Algorithm.SM4)
    result, _ = tap_run(card, wash(sam, log))
    assert result.outcome == "washed"
    assert card.store.load().algorithm is Algorithm.SM4


def test_wash_without_transport_key_is_refused(keystore, log, tmp_path):
    sam = SoftwareSam(keystore)
    card = new_transport_card(sam, tmp_path / "c.json")
    no_transport = SoftwareSam(Keystore(k for k in keystore if k.purpose is not KeyPurpose.TRANSPORT))
    with pytest.raises(Refusal) as exc:
        tap_run(card, wash(no_transport, log))
    assert exc.value.reason_code == "unknown_key_version"
    assert "load the transport key of that version" in exc.value.message


def feed(reader_tap, reader_remove, cards, lines, tears=None):
    """Present cards one after another as a person would: tap, wait for the card's progress line, take it away."""

    def run():
        for i, card in enumerate(cards):
            reader_tap(card, (tears or {}).get(i))
            for _ in range(1000):
                if len(lines) > i:
                    break
                threading.Event().wait(0.01)
            reader_remove()
            # A person takes a moment before the next card; the batch must see this one gone first (it waits for
            # the removal, as a real reader does, and would wait forever if the next card were already there).
            threading.Event().wait(0.2)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_bulk_wash_prints_progress_one_card_after_another(sam, log, tmp_path):
    reader = InProcessReader()
    other = new_transport_card(SoftwareSam(issuing_keystore(OTHER_ENTERPRISE)), enterprise=OTHER_ENTERPRISE)
    cards = [new_transport_card(sam, tmp_path / f"b{i}.json") for i in range(3)] + [other]
    lines: list[str] = []
    feeder = feed(
        lambda c, t: reader.tap(c, tear_after=t), reader.remove, cards + [cards[0], cards[1]], lines, tears={1: 3}
    )
    totals = rekey.batch(reader, sam, ENTERPRISE, 1, log, lambda: MONDAY_10AM, lines.append, count=6, poll=0.01)
    feeder.join(5)
    asns = [c.state.asn.hex().upper() for c in cards]
    assert lines[0] == f"card 1: {asns[0]} washed to key version 1"
    assert lines[1].startswith(f"card 2: {asns[1]} removed too soon: tap it again to finish")
    assert lines[2] == f"card 3: {asns[2]} washed to key version 1"
    assert lines[3].startswith(f"card 4: {asns[3]} refused: This card belongs to enterprise 00020002")
    assert lines[4] == f"card 5: {asns[0]} already at key version 1"
    assert lines[5] == f"card 6: {asns[1]} washed to key version 1"
    assert lines[6] == "6 card(s): 3 washed, 1 already done, 1 refused, 1 to tap again"
    assert totals == {"done": 3, "already": 1, "refused": 1, "torn": 1}
    for i in range(3):
        assert CardStateFile(tmp_path / f"b{i}.json").load().key_version == 1


def test_wash_over_real_pcscd(pcscd, vicc, sam, log, tmp_path):
    from terminal.readers.pcsc import PcscReader

    card = new_transport_card(sam, tmp_path / "pcsc.json")
    icc = vicc(0)
    reader = PcscReader(pcscd.slots[0].name)
    lines: list[str] = []
    feeder = feed(lambda c, _t: icc.insert(c), icc.remove, [card], lines)
    try:
        totals = rekey.batch(reader, sam, ENTERPRISE, 1, log, lambda: MONDAY_10AM, lines.append, count=1, poll=0.05)
    finally:
        feeder.join(10)
        reader.close()
    assert totals["done"] == 1, lines
    assert lines[0] == f"card 1: {card.state.asn.hex().upper()} washed to key version 1"
    assert CardStateFile(tmp_path / "pcsc.json").load().key_version == 1


def test_progress_lines_and_log_hold_no_key(sam, keystore, log, tmp_path):
    reader = InProcessReader()
    lines: list[str] = []
    feeder = feed(lambda c, t: reader.tap(c), reader.remove, [new_transport_card(sam)], lines)
    rekey.batch(reader, sam, ENTERPRISE, 1, log, lambda: MONDAY_10AM, lines.append, count=1, poll=0.01)
    feeder.join(5)
    text = "\n".join(lines) + "".join(str(e.detail) + e.message for e in log.events())
    for k in keystore:
        assert k.key.reveal().hex() not in text
    assert "washed to key version 1" in text


def test_wash_time_is_what_the_caller_passes(sam, log, tmp_path):
    card = new_transport_card(sam)
    when = dt.datetime(2027, 5, 1, 8, 0, tzinfo=dt.timezone.utc)
    tap_run(card, lambda t: rekey.rekey_card(t, sam, ENTERPRISE, 1, log, when, rekey.WASH))
    assert {e.time for e in log.events()} == {when}


def test_onecard_issue_wash_cli_on_a_simulated_card(tmp_path, capsys):
    from onecard.cli import main
    from sam.keystore import KeystoreUnlock
    from simulator.personalise import write_card

    (tmp_path / "pass").write_text("test-passphrase\n")
    assert (
        main(
            [
                "sam",
                "create-keystore",
                "--out",
                str(tmp_path / "ks"),
                "--passphrase-file",
                str(tmp_path / "pass"),
                "--enterprise",
                "00010001",
                "--algorithm",
                "aes128",
            ]
        )
        == 0
    )
    station = SoftwareSam.open(tmp_path / "ks", KeystoreUnlock.from_passphrase_file(tmp_path / "pass", "test"))
    write_card(tmp_path / "card.json", transport_card(station, ENTERPRISE, asn=bytes.fromhex("8601000000001234")))
    capsys.readouterr()
    args = [
        "issue",
        "wash",
        "--keystore",
        str(tmp_path / "ks"),
        "--passphrase-file",
        str(tmp_path / "pass"),
        "--enterprise",
        "00010001",
        "--card",
        str(tmp_path / "card.json"),
        "--log",
        str(tmp_path / "i.db"),
        "--to-version",
        "1",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "card 1: 8601000000001234 washed to key version 1" in out
    assert CardStateFile(tmp_path / "card.json").load().key_version == 1
    assert main(args[:-1] + ["2"]) == 1  # washing an already washed card to another version is refused
    assert "refused: Card already carries enterprise keys (version 1)" in capsys.readouterr().out
