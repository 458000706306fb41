"""Which master keys, with which usages, each kind of key holder gets (docs/key-handling.md 3): one table for
`onecard sam restrict --role`, the key master card's exports and the terminal self-test."""

from __future__ import annotations

from sam.interface import KeyPurpose, KeyUsage

_V, _M, _P, _R, _S = KeyUsage.VERIFY, KeyUsage.MAC, KeyUsage.PERSONALISE, KeyUsage.REVERSAL, KeyUsage.SUBSIDY

ROLE_KEYS: dict[str, dict[KeyPurpose, frozenset[KeyUsage]]] = {
    "door": {KeyPurpose.ACCESS: frozenset({_V})},
    "pos": {KeyPurpose.PURCHASE: frozenset({_M, _V}), KeyPurpose.LOAD: frozenset({_R, _S})},
    # The card service machine: loads, and writes access rights the platform changed (UPDATE, secured writes).
    "top-up": {KeyPurpose.LOAD: frozenset({_M, _V}), KeyPurpose.UPDATE: frozenset({_M})},
    "platform": {KeyPurpose.TAC: frozenset({_V})},
    # The issuing station, for every flow of docs/card-application.md 8 and key-handling.md 9: MACs secured writes
    # under UPDATE (and TRANSPORT, to wash a card), verifies the card's proof of its frozen balance under UPDATE
    # (replacement, cancellation), loads the carried balance onto a replacement card (LOAD mac; checking its MAC3
    # needs no more), and puts every card key on the cards it personalises. Never MAC or verify on TAC (that would
    # forge or test TACs), nor PURCHASE beyond personalise.
    "issuing": {
        KeyPurpose.UPDATE: frozenset({_M, _V, _P}),
        KeyPurpose.TRANSPORT: frozenset({_M, _P}),
        KeyPurpose.ACCESS: frozenset({_P}),
        KeyPurpose.PURCHASE: frozenset({_P}),
        KeyPurpose.LOAD: frozenset({_M, _P}),
        KeyPurpose.TAC: frozenset({_P}),
    },
}

# Usages a role's keystore is made with but a terminal still works without: a till without `subsidy` sends holders
# to the top-up terminal to collect allowances (docs/canteen.md), and a PSAM never has it (no subsidy commands). The
# self-test does not require them.
OPTIONAL_USAGES: frozenset[KeyUsage] = frozenset({_S})

# The card issuer (enterprise 00000000) owns one master key, TRANSPORT version 0, from which every version 2 card's
# K_CARD is diversified (docs/card-application.md 9.6). Of it an issuing station holds MAC only: it MACs CREATE
# SUB-APPLICATION under K_CARD and enciphers the new sub-application's transport key under a session key of K_CARD;
# PERSONALISE (putting K_CARD on a card) stays with the card factory, so a station can add sub-applications to the
# cards the issuer made but never make a card the issuer did not. No other role holds any of the card issuer's keys.
CARD_ISSUER = bytes(4)
CARD_ISSUER_KEYS: dict[str, dict[KeyPurpose, frozenset[KeyUsage]]] = {
    "issuing": {KeyPurpose.TRANSPORT: frozenset({_M})}
}


def role_keys(role: str, enterprise_id: bytes) -> dict[KeyPurpose, frozenset[KeyUsage]]:
    """What `role` holds of `enterprise_id`'s master keys: ROLE_KEYS for an enterprise, CARD_ISSUER_KEYS (nothing for
    a role not listed) for the card issuer."""
    if enterprise_id == CARD_ISSUER:
        return CARD_ISSUER_KEYS.get(role, {})
    return ROLE_KEYS[role]
