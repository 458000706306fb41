"""Checks every application makes of an authenticated card, whatever the terminal: blacklist and validity."""

from __future__ import annotations

import datetime as dt

from terminal.decision import AuthenticatedCard, ListedCard, Refusal

BLACKLIST_MESSAGES = {
    "lost": "Card reported lost: refused. If it is yours, see the administrator to unlock it",
    "cancelled": "Card cancelled: refused",
    "replaced": "This card was replaced: use your new card",
}


def check_blacklist(card: AuthenticatedCard, entry: ListedCard | None) -> None:
    """entry: the blacklist's entry for this card, or None."""
    if entry is None:
        return
    message = BLACKLIST_MESSAGES.get(entry.reason, f"Card blocked ({entry.reason}): refused, see the administrator")
    raise Refusal(
        "blacklisted",
        message,
        card.info.asn_hex,
        {"blacklist_reason": entry.reason, "blacklist_version": entry.listed_in_version},
    )


def check_validity(card: AuthenticatedCard, today: dt.date) -> None:
    rights = card.read.rights
    if today < rights.valid_from:
        raise Refusal("not_yet_valid", f"Card not valid until {rights.valid_from.isoformat()}", card.info.asn_hex)
    if today > rights.valid_to:
        raise Refusal(
            "expired", f"Card expired on {rights.valid_to.isoformat()}: please see the administrator", card.info.asn_hex
        )
