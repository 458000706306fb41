"""The platform as the issuing station's Registry (common/registry.py): in this process (InProcessRegistry, for
labs, the demo and tests, wired in by onecard/wiring.py), and the platform's side of the station's MQTT requests
(answer_request, run by central/service.py; docs/sync-protocol.md, "Issuing station registry"). Platform refusals
become RegistryError, one line with the fix."""

from __future__ import annotations

import logging

from central.db import PlatformError
from common import registry_protocol as rp
from common.logs import log_event
from common.registry import RegistryError

log = logging.getLogger("platform")


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

    def register(self, enterprise_id: str, employee_no: str, asn: str, rights: dict, key_version: int) -> None:
        self._call(self.pf.issue_card, enterprise_id, employee_no, asn, rights, key_version=key_version)

    def voided(self, asn: str, frozen_balance: int, proof: str, terminal_id: str, purse: dict) -> None:
        self._call(self.pf.record_void, asn, frozen_balance, proof, terminal_id, purse)

    def replace(self, old_asn: str, new_asn: str, key_version: int) -> None:
        self._call(self.pf.replace, old_asn, new_asn, key_version=key_version)

    def cancel(self, asn: str, settle: bool) -> None:
        self._call(self.pf.cancel, asn, settle=settle)


def answer_request(platform, station_id: str, payload: bytes) -> tuple[str, bytes]:
    """The platform's signed answer to one registry request from `station_id` (the station of the topic it came on,
    which the broker's ACL reserves to that station's certificate): (topic, payload) to publish.

    A station acts only for the enterprise it is registered to (`onecard platform add-terminal`), on that
    enterprise's holders and cards. ProtocolError when the request cannot be answered at all (it is dropped)."""
    req = rp.decode_request(payload)
    if req.station != station_id:
        raise rp.ProtocolError(f"registry request names station {req.station} but came on the topic of {station_id}")
    try:
        result = _perform(platform, req)
        error = None
    except RegistryError as exc:
        result, error = None, str(exc)
    return (
        rp.station_topic(station_id, rp.DOWN_REGISTRY),
        rp.seal_response(platform.key, req, platform.clock(), result=result, error=error),
    )


def _perform(platform, req: rp.RegistryRequest):
    enterprise = platform.terminal_enterprise(req.station)
    if enterprise is None or platform.terminal_kind(req.station) != "issuing":
        raise RegistryError(
            f"station {req.station} is not registered with the platform as an issuing station; "
            f"register it with `onecard platform add-terminal {req.station} --enterprise ID --kind "
            "issuing`"
        )
    registry = InProcessRegistry(platform)
    a = req.args
    if "enterprise_id" in a and a["enterprise_id"] != enterprise:
        raise RegistryError(
            f"station {req.station} serves enterprise {enterprise}, not {a['enterprise_id']}; use "
            "a station of that enterprise"
        )
    for key in ("asn", "old_asn"):
        if key in a and registry.is_registered(a[key]):
            owner = registry.card(a[key])["enterprise_id"]
            if owner != enterprise:
                raise RegistryError(
                    f"card {a[key]} belongs to another enterprise; station {req.station} serves enterprise {enterprise}"
                )
    if req.op == "holder":
        return registry.holder(a["enterprise_id"], a["employee_no"])
    if req.op == "card_of_phone":
        return registry.card_of_phone(a["phone"])
    if req.op == "is_registered":
        return registry.is_registered(a["asn"])
    if req.op == "card":
        return registry.card(a["asn"])
    if req.op == "register":
        registry.register(a["enterprise_id"], a["employee_no"], a["asn"], a["rights"], a["key_version"])
    elif req.op == "voided":
        # The voiding station is the one whose topic the request came on (the broker's ACL), not an argument.
        purse = {k: v for k, v in a.items() if k not in ("asn", "frozen_cents", "proof")}
        registry.voided(a["asn"], a["frozen_cents"], a["proof"], req.station, purse)
    elif req.op == "replace":
        registry.replace(a["old_asn"], a["new_asn"], a["key_version"])
    elif req.op == "cancel":
        registry.cancel(a["asn"], a["settle"])
    log_event(
        log,
        f"platform.station_{req.op}",
        station=req.station,
        request=req.id,
        text=f"station {req.station}: {req.op} " + " ".join(f"{k}={v}" for k, v in sorted(a.items()) if k != "rights"),
    )
    return None
