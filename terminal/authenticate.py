"""Two card round trips that tell who is tapping: SELECT, then an ACCESS READ the SAM verifies.

The caller supplies `transmit` (a reader's) and a fresh nonce; everything else is decided here
without I/O of its own. Anything short of a verified answer raises Refusal with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

from sam.interface import KeyPurpose, MacVerificationError, Sam
from terminal import card_protocol as cp
from terminal.decision import AuthenticatedCard, Refusal


def select_application(transmit: Callable[[bytes], bytes], enterprise_id: bytes) -> cp.CardInfo:
    """This enterprise's application on the card: its version 2 sub-application (one APDU), else a version 1
    application (a second APDU, only for version 1 cards and cards without one-card). Raises the card_protocol
    errors: NoSubApplication (a version 2 card without this enterprise), NotOneCard, CardProtocolError."""
    aid = cp.sub_application_aid(enterprise_id)
    try:
        return cp.parse_select(transmit(cp.select_command(aid)), aid)
    except cp.NoSubApplication:
        raise
    except cp.NotOneCard:
        return cp.parse_select(transmit(cp.select_command()))


def select_card(transmit: Callable[[bytes], bytes], enterprise_id: bytes) -> cp.CardInfo:
    """SELECT, then refuse what no application of this site may use: other enterprise, not issued, voided."""
    try:
        info = select_application(transmit, enterprise_id)
    except cp.NoSubApplication:
        raise Refusal("other_enterprise", "This card has no application for this site") from None
    except cp.NotOneCard:
        raise Refusal("not_supported", "Card not supported: no one-card application on this card or phone") from None
    except cp.CardProtocolError as exc:
        raise Refusal(
            "not_supported", "Card not supported: it does not answer like a one-card", detail={"problem": str(exc)}
        ) from None
    asn = info.asn_hex
    if info.enterprise_id != enterprise_id:
        raise Refusal(
            "other_enterprise",
            "This card has no application for this site",
            asn,
            {"card_enterprise": info.enterprise_id.hex()},
        )
    if info.status == cp.STATUS_TRANSPORT:
        raise Refusal("not_issued", "Card not issued yet: please see the card office", asn)
    if info.status == cp.STATUS_VOIDED:
        raise Refusal("voided", "This card has been voided: use your new card or see the administrator", asn)
    if info.status == cp.STATUS_LOCKED:
        raise Refusal("card_status", "This card is locked (reported lost): please see the administrator", asn)
    if info.status != cp.STATUS_ACTIVE:
        raise Refusal("card_status", f"Card status {info.status:02X} unknown: please see the administrator", asn)
    return info


def authenticate_card(
    transmit: Callable[[bytes], bytes], sam: Sam, enterprise_id: bytes, terminal_id: bytes, nonce: bytes
) -> AuthenticatedCard:
    """Raises Refusal, or CardRemoved (from transmit) when the card leaves mid-way."""
    info = select_card(transmit, enterprise_id)
    asn = info.asn_hex
    if not sam.has_key(enterprise_id, KeyPurpose.ACCESS, info.key_version, info.algorithm):
        raise Refusal(
            "unknown_key_version",
            f"Card key version {info.key_version} is not accepted here: please see the administrator",
            asn,
            {"key_version": info.key_version, "algorithm": info.algorithm.name},
        )
    try:
        envelope = cp.split_access_read(transmit(cp.access_read_command(nonce, terminal_id)), info, nonce, terminal_id)
    except cp.ApplicationInactive as exc:
        raise Refusal(
            "application_inactive",
            "Card blocked: its application is not active or used up. Take the card to the card office",
            asn,
            {"problem": str(exc)},
        ) from None
    except cp.CardProtocolError as exc:
        raise Refusal("card_error", "Card could not be read: please tap again", asn, {"problem": str(exc)}) from None
    identity = info.identity()
    try:
        sam.verify_card_mac(KeyPurpose.ACCESS, identity, envelope.mac_input, envelope.mac)
    except MacVerificationError:
        raise Refusal(
            "auth_failed",
            "Card authentication failed: this card is not genuine or is damaged",
            asn,
            {"counter": envelope.counter},
        ) from None
    private = envelope.private
    if info.private:  # version 2: EF_ACCESS || EF_HOLDER enciphered for this answer only (section 9.3)
        private = sam.decipher_card_data(KeyPurpose.ACCESS, identity, envelope.context, private)
    try:
        read = cp.open_access_read(envelope, private)
    except cp.CardProtocolError as exc:
        raise Refusal("card_error", "Card could not be read: please tap again", asn, {"problem": str(exc)}) from None
    if read.status != cp.STATUS_ACTIVE:
        raise Refusal("card_status", "Card reports its application is not active: please see the administrator", asn)
    return AuthenticatedCard(info=info, read=read)
