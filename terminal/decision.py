"""What a terminal decided about one tap, in the words shown to the person and the codes written to the log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from terminal.card_protocol import AccessReadResponse, CardInfo


@dataclass(frozen=True)
class AuthenticatedCard:
    """A card whose ACCESS READ answer carried a MAC the SAM verified for this very tap."""

    info: CardInfo
    read: AccessReadResponse


@dataclass(frozen=True)
class Decision:
    accepted: bool  # green light and the happy beep, or red and the error beep
    kind: str  # event kind in the log, e.g. "door.grant", "door.deny", "attendance.in"
    reason_code: str  # short stable code, e.g. "blacklisted"
    message: str  # the sentence on the display
    card: AuthenticatedCard | None = None
    asn: str | None = None  # hex, when the card told us (even if it was then refused)
    logged: bool = True  # repeats and half-finished taps are shown but not logged as events
    detail: dict[str, Any] = field(default_factory=dict)


class ListedCard(Protocol):
    """A blacklist entry as the decisions read it (terminal.blacklist.BlacklistEntry)."""

    @property
    def reason(self) -> str: ...

    @property
    def listed_in_version(self) -> int: ...


class Refusal(Exception):
    """The card cannot be used here; carries the reason for the display and the log."""

    def __init__(
        self, reason_code: str, message: str, asn: str | None = None, detail: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        self.message = message
        self.asn = asn
        self.detail = detail or {}
