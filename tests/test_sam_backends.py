"""One contract, three SAMs: SoftwareSam in memory, SoftwareSam on files, PcscSam to the simulated PSAM over pcscd.

Expected MACs are computed card-side from the spec (sam.purse_crypto over the diversified card key), never
through a SAM. The PSAM sits in vpcd slot 3 so it never meets the cards other tests put in slots 0-1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import pytest

from sam import crypto
from sam import purse_crypto as pc
from sam.interface import (
    Algorithm,
    CardIdentity,
    KeyNotFound,
    KeyPurpose,
    KeyUsage,
    KeyUsageError,
    LoadSession,
    MacVerificationError,
    PurchaseSession,
    SamError,
)
from sam.keystore import Keystore, KeystoreUnlock, MasterKey, parse_enterprise_id, save_keystore
from sam.pcsc_sam import PcscSam
from sam.sam_state import InvalidPurseInput, ReversalRefused, StateFile, StateFileError
from sam.software import SoftwareSam
from simulator.psam import load_psam, psam_from_keystore, write_psam

REPO = Path(__file__).resolve().parents[1]
PSAM_SLOT = 3
ENTERPRISE = parse_enterprise_id("00010001")
ASN = bytes.fromhex("8601000000001234")
OTHER_ASN = bytes.fromhex("8601000000005678")
TERMINAL = bytes.fromhex("000000000101")
DATE = bytes.fromhex("20260131")
TIME = bytes.fromhex("123456")
UNLOCK = KeystoreUnlock.from_device_secret(b"s" * 32)


def keystore_for(role: str) -> Keystore:
    if role == "all":
        rules = {
            KeyPurpose.ACCESS: {KeyUsage.VERIFY, KeyUsage.MAC},
            KeyPurpose.PURCHASE: {KeyUsage.MAC, KeyUsage.VERIFY},
            KeyPurpose.LOAD: {KeyUsage.MAC, KeyUsage.VERIFY, KeyUsage.REVERSAL},
        }
    elif role == "pos":
        rules = {KeyPurpose.PURCHASE: {KeyUsage.MAC, KeyUsage.VERIFY}, KeyPurpose.LOAD: {KeyUsage.REVERSAL}}
    else:
        raise ValueError(role)
    return MASTER.restricted_per_purpose(rules)


# One set of master keys; each role's keystore is a restriction of it, so card keys agree across roles.
MASTER = Keystore(
    [
        MasterKey.generate(ENTERPRISE, purpose, 1, algorithm, set(KeyUsage))
        for algorithm in Algorithm
        for purpose in (KeyPurpose.ACCESS, KeyPurpose.PURCHASE, KeyPurpose.LOAD)
    ]
)


def card_key(purpose: KeyPurpose, card: CardIdentity) -> bytes:
    master = MASTER.get(ENTERPRISE, purpose, card.key_version, card.algorithm).key.reveal()
    return crypto.diversify(card.algorithm, master, card.asn + card.enterprise_id)


def card(algorithm: Algorithm = Algorithm.AES128, asn: bytes = ASN) -> CardIdentity:
    return CardIdentity(asn, ENTERPRISE, 1, algorithm)


def purchase(identity: CardIdentity | None = None, amount: int = 1250, counter: int = 7) -> PurchaseSession:
    return PurchaseSession(identity or card(), bytes.fromhex("0a0b0c0d"), counter, amount, TERMINAL, DATE, TIME)


def load(identity: CardIdentity | None = None, amount: int = 1250, balance: int = 300, counter: int = 3) -> LoadSession:
    return LoadSession(identity or card(), bytes.fromhex("01020304"), counter, balance, amount, TERMINAL, DATE, TIME)


def card_sk_p(s: PurchaseSession, tsn: int) -> bytes:
    alg = s.card.algorithm
    return pc.purchase_session_key(alg, card_key(KeyPurpose.PURCHASE, s.card), s.card_random, s.counter, tsn)


def card_mac2(s: PurchaseSession, tsn: int) -> bytes:
    return pc.purchase_mac2(s.card.algorithm, card_sk_p(s, tsn), s.amount)


def card_sk_l(s: LoadSession) -> bytes:
    return pc.load_session_key(s.card.algorithm, card_key(KeyPurpose.LOAD, s.card), s.card_random, s.counter)


def card_load_mac1(s: LoadSession) -> bytes:
    return pc.load_mac1(s.card.algorithm, card_sk_l(s), s.balance_before, s.amount, s.terminal_id)


def flip(mac: bytes) -> bytes:
    return bytes([mac[0] ^ 0x01]) + mac[1:]


# --- backends -------------------------------------------------------------------------------------


@dataclass
class Backend:
    kind: str
    open: Callable[[], object]  # a new handle on the same persistent SAM (a restart / power cycle)
    close: Callable[[object], None]
    sam: object = None

    def reopen(self):
        self.close(self.sam)
        self.sam = self.open()
        return self.sam


def _close(sam) -> None:
    if hasattr(sam, "close"):
        sam.close()


@pytest.fixture
def make_backend(request, tmp_path):
    """make_backend(kind, role) -> Backend; kinds: memory, file, psam."""
    made: list[Backend] = []

    def make(kind: str, role: str = "all") -> Backend:
        keystore = keystore_for(role)
        if kind == "memory":
            sam = SoftwareSam(keystore)
            backend = Backend(kind, lambda: pytest.skip("an in-memory SAM has nothing to reopen"), _close, sam)
        elif kind == "file":
            path = tmp_path / f"{role}.ks"
            save_keystore(path, keystore, UNLOCK)
            backend = Backend(kind, lambda: SoftwareSam.open(path, UNLOCK), _close)
            backend.sam = backend.open()
        elif kind == "psam":
            pcscd = request.getfixturevalue("pcscd")
            icc = request.getfixturevalue("vicc")(PSAM_SLOT)
            path = tmp_path / f"{role}-psam.json"
            write_psam(path, psam_from_keystore(keystore, label=f"test {role}"))

            def open_psam():
                from terminal.readers.pcsc import PcscReader

                if icc.inserted:
                    icc.remove()
                    reader = PcscReader(pcscd.slots[PSAM_SLOT].name)
                    try:
                        assert reader.wait_for_removal(3)
                    finally:
                        reader.close()
                icc.insert(load_psam(path), label=str(path))  # power-on from the EEPROM file
                return PcscSam(pcscd.slots[PSAM_SLOT].name, timeout=3)

            backend = Backend(kind, open_psam, _close)
            backend.icc, backend.path, backend.slot_name = icc, path, pcscd.slots[PSAM_SLOT].name
            backend.sam = backend.open()
        else:
            raise ValueError(kind)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        _close(backend.sam)


KINDS = ["memory", "file", "psam"]


@pytest.fixture(params=KINDS)
def backend(request, make_backend) -> Backend:
    return make_backend(request.param)


# --- purchase -------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_mac1_is_what_the_card_checks_and_mac2_verifies(make_backend, algorithm):
    for kind in KINDS:
        sam = make_backend(kind).sam
        s = purchase(card(algorithm))
        tsn, mac1 = sam.purchase_mac1(s)
        assert tsn == 1
        assert mac1 == pc.purchase_mac1(algorithm, card_sk_p(s, tsn), s.amount, TERMINAL, DATE, TIME), kind
        sam.verify_purchase_mac2(s, tsn, card_mac2(s, tsn))
        with pytest.raises(MacVerificationError, match="did not make this debit"):
            sam.verify_purchase_mac2(s, tsn, flip(card_mac2(s, tsn)))
        with pytest.raises(MacVerificationError):
            sam.verify_purchase_mac2(s, tsn + 1, card_mac2(s, tsn))  # MAC2 is bound to the TSN
        with pytest.raises(MacVerificationError):
            sam.verify_purchase_mac2(replace(s, amount=s.amount + 1), tsn, card_mac2(s, tsn))
        with pytest.raises(MacVerificationError, match="expected 8"):
            sam.verify_purchase_mac2(s, tsn, card_mac2(s, tsn)[:4])


def test_mac2_of_an_old_intent_verifies(backend):
    # Stateless: a proof recovered with GET TRANSACTION PROVE after later purchases still checks.
    old = purchase(amount=10, counter=1)
    tsn_old, _ = backend.sam.purchase_mac1(old)
    for i in range(3):
        backend.sam.purchase_mac1(purchase(amount=20 + i, counter=2 + i))
    backend.sam.verify_purchase_mac2(old, tsn_old, card_mac2(old, tsn_old))


def test_tsn_strictly_increases(backend):
    tsns = [backend.sam.purchase_mac1(purchase(amount=100 + i))[0] for i in range(5)]
    assert tsns == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("kind", ["file", "psam"])
def test_tsn_and_last_purchase_survive_reopening(make_backend, kind):
    b = make_backend(kind)
    b.sam.purchase_mac1(purchase(amount=5))
    s = purchase(amount=700)
    tsn, _ = b.sam.purchase_mac1(s)
    b.sam.verify_purchase_mac2(s, tsn, card_mac2(s, tsn))
    sam = b.reopen()
    # The proven last purchase is still reversible after the restart...
    undo = load(amount=700)
    sam.reversal_mac2(undo, card_load_mac1(undo), tsn)
    # ...and the counter goes on.
    assert sam.purchase_mac1(purchase(amount=1))[0] == tsn + 1


# --- load -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_load_mac2_and_mac3(make_backend, algorithm):
    for kind in KINDS:
        sam = make_backend(kind).sam
        s = load(card(algorithm))
        sk = card_sk_l(s)
        assert sam.load_mac2(s, card_load_mac1(s)) == pc.load_mac2(algorithm, sk, s.amount, TERMINAL, DATE, TIME), kind
        with pytest.raises(MacVerificationError, match="do not load"):
            sam.load_mac2(s, flip(card_load_mac1(s)))
        with pytest.raises(MacVerificationError):
            sam.load_mac2(replace(s, balance_before=s.balance_before + 1), card_load_mac1(s))
        mac3 = pc.load_mac3(algorithm, sk, s.balance_before + s.amount, s.amount)
        sam.verify_load_mac3(s, mac3)
        with pytest.raises(MacVerificationError, match="did not prove the credit"):
            sam.verify_load_mac3(s, flip(mac3))
        with pytest.raises(MacVerificationError):
            sam.verify_load_mac3(replace(s, amount=s.amount - 1), mac3)


# --- reversal -------------------------------------------------------------------------------------


def _proven_purchase(sam, amount=1250, identity=None) -> tuple[PurchaseSession, int]:
    s = purchase(identity, amount=amount)
    tsn, _ = sam.purchase_mac1(s)
    sam.verify_purchase_mac2(s, tsn, card_mac2(s, tsn))
    return s, tsn


def test_reversal_once_same_card_amount_and_tsn(backend):
    sam = backend.sam
    _, tsn = _proven_purchase(sam, amount=1250)
    undo = load(amount=1250)
    for wrong, wrong_tsn in [(load(amount=1251), tsn), (load(card(asn=OTHER_ASN), amount=1250), tsn), (undo, tsn + 1)]:
        with pytest.raises(ReversalRefused) as excinfo:
            sam.reversal_mac2(wrong, card_load_mac1(wrong), wrong_tsn)
        assert excinfo.value.reason == "not-last" and isinstance(excinfo.value, KeyUsageError)
    # A bad MAC1 is refused without using up the one reversal.
    with pytest.raises(MacVerificationError):
        sam.reversal_mac2(undo, flip(card_load_mac1(undo)), tsn)
    mac2 = sam.reversal_mac2(undo, card_load_mac1(undo), tsn)
    assert mac2 == pc.load_mac2(Algorithm.AES128, card_sk_l(undo), 1250, TERMINAL, DATE, TIME)
    again = load(amount=1250, counter=4, balance=1550)
    with pytest.raises(ReversalRefused, match="already been undone") as excinfo:
        sam.reversal_mac2(again, card_load_mac1(again), tsn)
    assert excinfo.value.reason == "reversed"


def test_reversal_needs_the_debit_proven(backend):
    s = purchase(amount=90)
    tsn, _ = backend.sam.purchase_mac1(s)
    undo = load(amount=90)
    with pytest.raises(ReversalRefused, match="never proven") as excinfo:
        backend.sam.reversal_mac2(undo, card_load_mac1(undo), tsn)
    assert excinfo.value.reason == "not-debited"
    backend.sam.verify_purchase_mac2(s, tsn, card_mac2(s, tsn))
    backend.sam.reversal_mac2(undo, card_load_mac1(undo), tsn)


def test_only_the_last_purchase_can_be_reversed(backend):
    _, first = _proven_purchase(backend.sam, amount=300)
    _proven_purchase(backend.sam, amount=400)
    undo = load(amount=300)
    with pytest.raises(ReversalRefused, match="not this SAM's last purchase"):
        backend.sam.reversal_mac2(undo, card_load_mac1(undo), first)


@pytest.mark.parametrize("kind", ["file", "psam"])
def test_a_reversal_stays_used_after_reopening(make_backend, kind):
    b = make_backend(kind)
    _, tsn = _proven_purchase(b.sam, amount=55)
    undo = load(amount=55)
    b.sam.reversal_mac2(undo, card_load_mac1(undo), tsn)
    sam = b.reopen()
    credited = load(amount=55, counter=4, balance=355)  # the card applied the credit: its counter moved on
    with pytest.raises(ReversalRefused):
        sam.reversal_mac2(credited, card_load_mac1(credited), tsn)
    # Still at the reversal's counter: that MAC2 never reached the card, so the undo may be given again.
    retry = load(amount=55)
    assert sam.reversal_mac2(retry, card_load_mac1(retry), tsn) == b.sam.reversal_mac2(
        retry, card_load_mac1(retry), tsn
    )


# --- keys and usages ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_pos_role_usages(make_backend, kind):
    sam = make_backend(kind, role="pos").sam
    s, tsn = _proven_purchase(sam, amount=42)
    top_up = load(amount=42)
    with pytest.raises(KeyUsageError, match="may not be used to mac"):
        sam.load_mac2(top_up, card_load_mac1(top_up))
    # Reversal-only LOAD still checks the undo's MAC3.
    sam.verify_load_mac3(top_up, pc.load_mac3(Algorithm.AES128, card_sk_l(top_up), 42 + 300, 42))
    assert len(sam.reversal_mac2(top_up, card_load_mac1(top_up), tsn)) == 8
    with pytest.raises(KeyNotFound, match="purpose access version 1 algorithm aes128"):
        sam.verify_card_mac(KeyPurpose.ACCESS, card(), b"m", bytes(8))
    assert not sam.has_key(ENTERPRISE, KeyPurpose.ACCESS, 1, Algorithm.AES128)
    assert sam.has_key(ENTERPRISE, KeyPurpose.LOAD, 1, Algorithm.SM4)
    assert {(i.purpose, i.usages) for i in sam.key_infos()} == {
        (KeyPurpose.PURCHASE, frozenset({KeyUsage.MAC, KeyUsage.VERIFY})),
        (KeyPurpose.LOAD, frozenset({KeyUsage.REVERSAL})),
    }


def test_access_macs_and_key_infos(backend):
    sam = backend.sam
    identity = card(Algorithm.SM4)
    message = bytes(range(112))
    mac = crypto.mac8(Algorithm.SM4, card_key(KeyPurpose.ACCESS, identity), message)
    sam.verify_card_mac(KeyPurpose.ACCESS, identity, message, mac)
    with pytest.raises(MacVerificationError, match="cloned card"):
        sam.verify_card_mac(KeyPurpose.ACCESS, identity, message, flip(mac))
    assert sam.card_mac(KeyPurpose.ACCESS, identity, b"write") == crypto.mac8(
        Algorithm.SM4, card_key(KeyPurpose.ACCESS, identity), b"write"
    )
    expected = {
        (k.purpose, k.algorithm, crypto.key_check_value(k.algorithm, k.key.reveal())) for k in keystore_for("all")
    }
    assert {(i.purpose, i.algorithm, i.kcv) for i in sam.key_infos()} == expected
    with pytest.raises(KeyNotFound, match="version 9"):
        sam.card_mac(KeyPurpose.ACCESS, replace(identity, key_version=9), b"x")


@pytest.mark.parametrize("purpose", [KeyPurpose.PURCHASE, KeyPurpose.LOAD])
def test_purse_keys_make_no_generic_macs(backend, purpose):
    with pytest.raises(KeyUsageError, match="only through the purse methods"):
        backend.sam.card_mac(purpose, card(), b"m")
    with pytest.raises(KeyUsageError, match="only through the purse methods"):
        backend.sam.verify_card_mac(purpose, card(), b"m", bytes(8))


def test_malformed_inputs_are_refused_before_any_tsn_is_used(backend):
    for bad in (
        purchase(amount=0),
        replace(purchase(), date=bytes.fromhex("2026013A")),
        replace(purchase(), card_random=b"1"),
        replace(purchase(), counter=0x10000),
    ):
        with pytest.raises(InvalidPurseInput):
            backend.sam.purchase_mac1(bad)
    assert backend.sam.purchase_mac1(purchase())[0] == 1


# --- crashes, tears, files ------------------------------------------------------------------------

_CRASHING_CHILD = """
import os, sys
from sam.keystore import KeystoreUnlock
from sam.software import SoftwareSam
from tests.test_sam_backends import purchase
sam = SoftwareSam.open(sys.argv[1], KeystoreUnlock.from_device_secret(b"s" * 32))
tsn, _ = sam.purchase_mac1(purchase())
print(tsn, flush=True)
os._exit(9)  # power cut right after the TSN left the SAM: no cleanup, no close
"""


def test_tsn_is_durable_before_purchase_mac1_returns(make_backend, tmp_path):
    b = make_backend("file")
    assert b.sam.purchase_mac1(purchase())[0] == 1
    handed_out = []
    for _ in range(2):
        child = subprocess.run(
            [sys.executable, "-c", _CRASHING_CHILD, str(tmp_path / "all.ks")],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert child.returncode == 9, child.stderr
        handed_out.append(int(child.stdout))
    assert handed_out == [2, 3]
    assert b.reopen().purchase_mac1(purchase())[0] == 4


def test_a_state_write_failure_hands_out_nothing(make_backend, tmp_path, monkeypatch):
    b = make_backend("file")
    b.sam.purchase_mac1(purchase())

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(StateFileError, match=r"No space left on device\); check free space"):
        b.sam.purchase_mac1(purchase())
    monkeypatch.undo()
    assert StateFile(tmp_path / "all.ks.state").load().last_tsn == 1
    assert b.sam.purchase_mac1(purchase())[0] == 2
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_a_corrupt_state_file_stops_the_sam_and_is_left_alone(make_backend, tmp_path):
    b = make_backend("file")
    b.sam.purchase_mac1(purchase())
    state = tmp_path / "all.ks.state"
    data = bytearray(state.read_bytes())
    data[data.index(b'"last_tsn":1') + len('"last_tsn":')] = ord("0")  # roll the TSN back by hand
    state.write_bytes(bytes(data))
    with pytest.raises(
        StateFileError, match=r"corrupted \(the checksum does not match.*onecard sam init-state"
    ) as excinfo:
        b.reopen()
    assert "\n" not in str(excinfo.value)
    assert state.read_bytes() == bytes(data)


def test_psam_tear_after_init_for_purchase_never_reuses_the_tsn(make_backend):
    from terminal.readers.pcsc import PcscReader

    b = make_backend("psam")
    assert b.sam.purchase_mac1(purchase())[0] == 1
    b.sam.close()
    # Power-cycle with a tear on the 3rd APDU: SELECT, GET KEY INFO, then INIT SAM FOR PURCHASE.
    b.icc.remove()
    reader = PcscReader(b.slot_name)
    try:
        assert reader.wait_for_removal(3)  # pcscd must see the slot empty, or it would hand us the old card's handle
    finally:
        reader.close()
    b.icc.insert(load_psam(b.path), tear_after=3)
    sam = PcscSam(b.slot_name, timeout=3)
    with pytest.raises(SamError, match="stopped answering during INIT SAM FOR PURCHASE.*treat it as failed"):
        sam.purchase_mac1(purchase())
    sam.close()
    reader = PcscReader(b.slot_name)
    try:
        assert reader.wait_for_removal(3)
    finally:
        reader.close()
    assert b.reopen().purchase_mac1(purchase())[0] == 3  # TSN 2 reached the PSAM's EEPROM before the tear


def test_no_psam_in_the_slot_is_one_line_with_the_fix(pcscd):
    with pytest.raises(SamError, match=r"no PSAM in reader .*; insert the terminal's PSAM") as excinfo:
        PcscSam(pcscd.slots[PSAM_SLOT].name, timeout=0.3)
    assert "\n" not in str(excinfo.value)


def test_a_card_that_is_not_a_psam(pcscd, vicc):
    from simulator.card import ForeignCard

    vicc(PSAM_SLOT).insert(ForeignCard())
    with pytest.raises(SamError, match="is not a onecard PSAM .*answered 6A82.*insert the PSAM"):
        PcscSam(pcscd.slots[PSAM_SLOT].name, timeout=3)


# --- version 2 cards: the sealed balance (docs/card-application.md 5.2a, docs/psam.md 4.2 / 4.4 / 4.6) -------------


def sealed(purpose: KeyPurpose, identity: CardIdentity, random: bytes, counter: int, balance: int) -> bytes:
    """What a version 2 card puts in its INITIALIZE answer's balance field (card-side, from the spec)."""
    key = card_key(purpose, identity)
    return pc.seal_purse_data(identity.algorithm, key, random, counter, balance.to_bytes(4, "big"))


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_every_sam_opens_a_sealed_balance_inside_mac1_and_mac2(make_backend, algorithm):
    from sam.interface import BalanceTooLow

    for kind in KINDS:
        sam = make_backend(kind).sam
        s = purchase(card(algorithm), amount=1250)
        with pytest.raises(BalanceTooLow):  # 12.49 does not cover 12.50: no MAC1, no TSN
            sam.purchase_mac1_sealed(s, sealed(KeyPurpose.PURCHASE, s.card, s.card_random, s.counter, 1249))
        tsn, mac1, clear = sam.purchase_mac1_sealed(
            s, sealed(KeyPurpose.PURCHASE, s.card, s.card_random, s.counter, 1250)
        )
        assert (tsn, clear) == (1, (1250).to_bytes(4, "big")), kind
        assert mac1 == pc.purchase_mac1(algorithm, card_sk_p(s, tsn), s.amount, TERMINAL, DATE, TIME), kind
        sam.verify_purchase_mac2(s, tsn, card_mac2(s, tsn))
        # A load: the SAM opens the balance before, checks MAC1 over it, and answers it with MAC2.
        undo = load(card(algorithm), amount=1250, balance=300)
        mac1 = pc.load_mac1(algorithm, card_sk_l(undo), 300, 1250, TERMINAL)
        box = sealed(KeyPurpose.LOAD, undo.card, undo.card_random, undo.counter, 300)
        mac2, before = sam.load_mac2_sealed(replace(undo, balance_before=0), mac1, box)
        assert before == 300 and mac2 == pc.load_mac2(algorithm, card_sk_l(undo), 1250, TERMINAL, DATE, TIME), kind
        with pytest.raises(MacVerificationError):  # a sealed field altered on the way: MAC1 fails over it
            sam.load_mac2_sealed(undo, mac1, bytes([box[0] ^ 1]) + box[1:])
        mac2_r, before_r = sam.reversal_mac2_sealed(undo, mac1, tsn, box)
        assert (mac2_r, before_r) == (mac2, 300), kind


def test_every_sam_enciphers_what_a_station_writes_under_sk_write(make_backend):
    """ENCIPHER CARD DATA (docs/psam.md 4.7b; SoftwareSam.encipher_card_data): the SK_WRITE keystream of
    card-application.md 9.11 under the card's ACCESS key here (the purposes 01..03 behave alike), usage mac."""
    context = bytes(range(8)) + bytes(4)
    plain = b"R-0707".ljust(16, b"\0") + "张伟".encode().ljust(32, b"\0")
    c = card()
    key = card_key(KeyPurpose.ACCESS, c)
    expected = crypto.ctr_crypt(c.algorithm, crypto.write_session_key(c.algorithm, key, context), plain)
    for kind in KINDS:
        sam = make_backend(kind).sam
        assert sam.encipher_card_data(KeyPurpose.ACCESS, c, context, plain) == expected, kind
        with pytest.raises(KeyUsageError):
            sam.encipher_card_data(KeyPurpose.PURCHASE, c, context, plain)  # never under a purse key
