"""The issuing station's Registry over MQTT: each call is one request on the station's own topic, answered by the
platform on the station's down topic, signed with the platform key (docs/sync-protocol.md, "Issuing station
registry"). The station holds only its certificate and the platform's public key: never the platform database or
its signing key."""

from __future__ import annotations

import logging
import queue
import secrets
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common import registry_protocol as rp
from common.logs import log_event
from common.mqtt import MESSAGE, MqttConfigError, MqttLink, TlsFiles
from common.registry import RegistryError
from common.sync_protocol import ProtocolError, SignatureError

log = logging.getLogger("onecard.issuing")


def load_platform_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise RegistryError(
            f"cannot read the platform public key {path} ({exc}); pass the platform-ed25519.pub the "
            "platform operator gave you"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise RegistryError(f"{path} is not an Ed25519 public key; pass the platform's platform-ed25519.pub")
    return key


class MqttRegistry:
    """A Registry whose every answer comes from the platform over the broker; open with `connect()`."""

    def __init__(
        self,
        station_id: str,
        host: str,
        port: int,
        tls: TlsFiles,
        platform_key: Ed25519PublicKey,
        timeout: float = 10.0,
    ) -> None:
        self.station_id, self.platform_key, self.timeout = station_id, platform_key, timeout
        self.where = f"{host}:{port}"
        self.link = MqttLink(
            f"onecard-station-{station_id}",
            host,
            port,
            tls,
            subscriptions=[rp.station_topic(station_id, rp.DOWN_REGISTRY)],
        )

    def connect(self) -> MqttRegistry:
        try:
            self.link.start()
        except MqttConfigError as exc:
            raise RegistryError(
                str(exc).replace("[sync].ca_file, cert_file and key_file", "--broker-ca, --cert and --cert-key")
            ) from None
        if not self.link.connected.wait(self.timeout):
            self.close()
            raise RegistryError(
                f"cannot reach the platform's broker at {self.where} within {self.timeout:g} s "
                f"(or it refused certificate CN {self.station_id}); check --broker-host/--broker-port, "
                "the network, and that the station's certificate is the one the platform issued"
            )
        return self

    def close(self) -> None:
        self.link.stop()

    def __enter__(self) -> MqttRegistry:
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, op: str, **args):
        request_id = secrets.token_hex(16)
        info = self.link.publish(
            rp.station_topic(self.station_id, rp.UP_REGISTRY),
            rp.encode_request(request_id, self.station_id, op, args),
            qos=1,
        )
        if info.rc != 0:
            raise RegistryError(
                f"could not send the {op} request to the broker at {self.where}; check the link and "
                "run the command again"
            )
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RegistryError(
                    f"the platform did not answer the {op} request within {self.timeout:g} s; check "
                    "that the platform service runs and that this station is in the broker's ACL, "
                    "then tap again (the station finishes what it started)"
                )
            try:
                item = self.link.events.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            if item[0] != MESSAGE:
                continue
            try:
                answer = rp.open_response(item[2], self.platform_key)
            except SignatureError:
                log_event(
                    log,
                    "issuing.registry_forged",
                    logging.ERROR,
                    station=self.station_id,
                    text="a registry answer not signed by the platform key was dropped",
                )
                continue
            except ProtocolError as exc:
                log_event(
                    log,
                    "issuing.registry_garbled",
                    logging.WARNING,
                    station=self.station_id,
                    text=f"{exc}; answer dropped",
                )
                continue
            if answer.request_id != request_id or answer.station != self.station_id or answer.op != op:
                continue  # an answer to an earlier request that timed out here
            if not answer.ok:
                raise RegistryError(answer.error)
            return answer.result

    # --- the Registry interface (common/registry.py) ---------------------------------------------------

    def holder(self, enterprise_id: str, employee_no: str) -> dict:
        return self.call("holder", enterprise_id=enterprise_id, employee_no=employee_no)

    def card_of_phone(self, phone: str) -> str | None:
        return self.call("card_of_phone", phone=phone)

    def is_registered(self, asn: str) -> bool:
        return bool(self.call("is_registered", asn=asn.upper()))

    def card(self, asn: str) -> dict:
        return self.call("card", asn=asn.upper())

    def register(self, enterprise_id: str, employee_no: str, asn: str, rights: dict, key_version: int) -> None:
        self.call(
            "register",
            enterprise_id=enterprise_id,
            employee_no=employee_no,
            asn=asn.upper(),
            rights=rights,
            key_version=key_version,
        )

    def voided(self, asn: str, frozen_balance: int, proof: str, terminal_id: str, purse: dict) -> None:
        """`terminal_id` is not sent: the platform records the station of the topic (this station's certificate)."""
        if terminal_id.upper() != self.station_id:
            raise RegistryError(
                f"terminal {terminal_id} cannot report a void over station {self.station_id}'s link; "
                "run the issuing station with its own --terminal-id"
            )
        self.call("voided", asn=asn.upper(), frozen_cents=frozen_balance, proof=proof.lower(), **purse)

    def replace(self, old_asn: str, new_asn: str, key_version: int) -> None:
        self.call("replace", old_asn=old_asn.upper(), new_asn=new_asn.upper(), key_version=key_version)

    def cancel(self, asn: str, settle: bool) -> None:
        self.call("cancel", asn=asn.upper(), settle=bool(settle))
