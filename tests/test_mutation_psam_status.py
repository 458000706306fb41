"""Every status word a PSAM answers (docs/psam.md) becomes one SamError naming the problem and the fix: the
terminal-side mapping in sam/pcsc_sam.py, word by word. Issue 15."""

import pytest

from sam.interface import (
    Algorithm,
    CardIdentity,
    KeyNotFound,
    KeyPurpose,
    KeyUsageError,
    MacVerificationError,
    SamError,
)
from sam.pcsc_sam import PcscSam
from sam.sam_state import InvalidPurseInput, ReversalRefused, TsnExhausted

CARD = CardIdentity(bytes.fromhex("1122334455667788"), bytes.fromhex("00010001"), 3, Algorithm.SM4)
DESC = "enterprise 00010001 purpose purchase version 3 algorithm sm4"


def fail(sw, purpose=KeyPurpose.PURCHASE):
    sam = PcscSam.__new__(PcscSam)  # not connected: _fail only words an answer already received
    sam.name = "PSAM 0"
    return sam._fail(sw, "PURCHASE MAC1", CARD, purpose, "sign purchases", "MAC2 of the card does not verify")


@pytest.mark.parametrize(
    "sw, cls, message, reason",
    [
        (0x9302, MacVerificationError, "MAC2 of the card does not verify", None),
        (
            0x6A88,
            KeyNotFound,
            f"the PSAM in 'PSAM 0' has no master key for {DESC}; insert a PSAM that holds it "
            "(PcscSam.key_infos() lists what this one holds)",
            None,
        ),
        (
            0x6982,
            KeyUsageError,
            f"master key {DESC} in the PSAM in 'PSAM 0' may not be used to sign purchases; insert a "
            "PSAM made from a keystore that allows it ('onecard sam restrict --role ...')",
            None,
        ),
        (
            0x6985,
            ReversalRefused,
            "reversal refused by the PSAM: not this SAM's last purchase (card, amount or TSN differ, "
            "or there is none); only the last purchase can be undone, on the same card and for the same amount",
            "not-last",
        ),
        (
            0x6983,
            ReversalRefused,
            "reversal refused by the PSAM: the debit was never proven (its MAC2 was not verified by "
            "this PSAM); verify the purchase's MAC2 before undoing it",
            "not-debited",
        ),
        (
            0x6984,
            ReversalRefused,
            "reversal refused by the PSAM: that purchase has already been undone once; it cannot be undone again",
            "reversed",
        ),
        (
            0x6A84,
            TsnExhausted,
            "the PSAM in 'PSAM 0' has used every TSN and cannot sign another purchase; replace the PSAM",
            None,
        ),
        (
            0x6581,
            SamError,
            "the PSAM in 'PSAM 0' could not write its memory during PURCHASE MAC1 (6581); replace the PSAM",
            None,
        ),
        (
            0x6A80,
            InvalidPurseInput,
            "the PSAM in 'PSAM 0' refused the data of PURCHASE MAC1 (6A80); check the card's "
            "answer and the session values",
            None,
        ),
        (
            0x6F00,
            SamError,
            "the PSAM in 'PSAM 0' answered PURCHASE MAC1 with status 6F00; check it is a onecard PSAM (docs/psam.md)",
            None,
        ),
    ],
)
def test_status_word_becomes_one_named_error(sw, cls, message, reason):
    err = fail(sw)
    assert type(err) is cls and str(err) == message
    if reason is not None:
        assert err.reason == reason


def test_transport_keys_are_named_at_version_0():
    err = fail(0x6A88, KeyPurpose.TRANSPORT)
    assert "purpose transport version 0 algorithm sm4" in str(err)
