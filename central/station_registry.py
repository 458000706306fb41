"""The platform as the issuing station's Registry (common/registry.py), in this process: for labs, the demo and
tests, wired in by onecard/wiring.py. Platform refusals become RegistryError, one line with the fix."""
from __future__ import annotations

from central.db import PlatformError
from common.registry import RegistryError


class InProcessRegistry:
    """A central.store.Platform seen through the Registry interface."""

    def __init__(self, platform) -> None:
        self.pf = platform

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PlatformError as exc:
            raise RegistryError(str(exc)) from None

    def holder(self, enterprise_id: str, employee_no: str) -> dict:
        return self._call(self.pf.holder_contact, enterprise_id, employee_no)

    def card_of_phone(self, phone: str) -> str | None:
        return self.pf.card_of_phone(phone)

    def is_registered(self, asn: str) -> bool:
        return self.pf.is_registered(asn)

    def card(self, asn: str) -> dict:
        return self._call(self.pf.card, asn)

    def register(self, enterprise_id: str, employee_no: str, asn: str, rights: dict) -> None:
        self._call(self.pf.issue_card, enterprise_id, employee_no, asn, rights)

    def replace(self, old_asn: str, new_asn: str) -> None:
        self._call(self.pf.replace, old_asn, new_asn)

    def cancel(self, asn: str, settle: bool) -> None:
        self._call(self.pf.cancel, asn, settle=settle)
