"""The registry interface between the card office's issuing station and the platform (the station's only way to
the platform's records): look up a holder, register an issued card, record a voided card, replacement,
cancellation."""

from __future__ import annotations

from typing import Protocol


class Registry(Protocol):
    """What the issuing terminal needs from the platform: the platform in this process
    (central.station_registry.InProcessRegistry, labs, demo and tests) or over MQTT."""

    def holder(self, enterprise_id: str, employee_no: str) -> dict:
        """{"name", "phone"}; raises RegistryError when the employee is not registered."""

    def card_of_phone(self, phone: str) -> str | None:
        """ASN of an active or lost card whose holder has this phone number, if any."""

    def is_registered(self, asn: str) -> bool: ...

    def card(self, asn: str) -> dict: ...

    def register(self, enterprise_id: str, employee_no: str, asn: str, rights: dict, key_version: int) -> None:
        """Register an issued card with the key version it was personalised at (0..255), which the platform counts
        for `platform key-versions` before the station's log is uploaded."""

    def voided(self, asn: str, frozen_balance: int, proof: str, terminal_id: str, purse: dict) -> None:
        """The card was voided here (APPLICATION BLOCK) and froze this balance (fen), `proof` the card's MAC over it
        (hex): the platform lists it VOIDED. `purse`: the rest of what that MAC covers and how it was computed, the
        `voided` request's other arguments (common/registry_protocol.py OPS and OPTIONAL: counters, challenge, key
        version; the frozen subsidy purse of P1 01). Idempotent."""

    def replace(self, old_asn: str, new_asn: str, key_version: int) -> None:
        """The new card (personalised at `key_version`) replaces the old one: it gets its holder, rights and
        balance, the old one is REPLACED and blacklisted."""

    def cancel(self, asn: str, settle: bool) -> None: ...


class RegistryError(Exception):
    """The platform refused; the message names the problem and the fix."""
