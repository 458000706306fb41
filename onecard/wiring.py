"""Where the command line plugs the simulator and the lab CA into the product, which never imports them
(README, House rules). `onecard.cli` hands one `Wiring` to every handler as `args.wiring`."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, TextIO

from common.errors import UserError


class Wiring:
    """The factories the product's commands are given instead of importing simulator/ or central/."""

    def simulated_card_reader(self, card_file: Path):
        """An in-process reader holding the simulated card in `card_file` (tapped once): `[reader] driver =
        "simulator"` and the issuing station's `--card`."""
        from simulator.inprocess import reader_with_card

        return reader_with_card(card_file)

    @contextlib.contextmanager
    def simulated_sim_in_contact_reader(self, card_file: Path) -> Iterator[str]:
        """`onecard phone --card`: the simulated RFID-SIM's contact interface (simulator/sim_toolkit.py) in a vpcd
        reader of a private pcscd, for as long as the block runs; yields the reader's name."""
        from simulator.pcscd import PcscdError, private_pcscd
        from simulator.sim_toolkit import load_sim
        from simulator.vpcd import VirtualIcc, VpcdUnreachable

        try:
            sim = load_sim(card_file)
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(
                f"cannot load simulated RFID-SIM {card_file}: {exc}; check the path, or create the card with "
                "'onecard sim new-card'"
            ) from None
        try:
            with private_pcscd(n_readers=1) as pcscd:
                slot = pcscd.slots[0]
                icc = VirtualIcc(slot.port, label=str(card_file))
                icc.insert(sim)
                try:
                    yield slot.name
                finally:
                    icc.remove()
        except (PcscdError, VpcdUnreachable) as exc:
            raise UserError(str(exc)) from None

    def platform_sms_link(
        self, db: Path, key: Path, tac_keystore: Path, passphrase_file: Path, out: TextIO
    ) -> Callable[[str, bytes], str | None]:
        """`onecard phone menu --platform-db`: short messages from the SIM delivered to the platform's API at once
        (the mobile network's part is the issue "Over the air through the mobile network")."""
        from central.db import PlatformError, load_signing_key
        from central.store import Platform
        from sam.interface import SamError
        from sam.keystore import KeystoreError, KeystoreUnlock
        from sam.software import SoftwareSam

        if not db.exists():
            raise UserError(f"platform database {db} does not exist; create it with `onecard platform init`")
        try:
            signing_key = load_signing_key(key)
            tac_sam = SoftwareSam.open(tac_keystore, KeystoreUnlock.from_passphrase_file(passphrase_file))
        except (PlatformError, SamError, KeystoreError) as exc:
            raise UserError(str(exc)) from None

        def deliver(destination: str, data: bytes) -> str | None:
            try:
                platform = Platform(db, signing_key, tac_sam=tac_sam)
            except PlatformError as exc:
                return str(exc)
            try:
                done = platform.delete_application(data)
            except PlatformError as exc:
                out.write(f"platform: {exc}\n")
                return str(exc)
            finally:
                platform.close()
            cents = done["refunded_cents"]
            out.write(
                f"platform: application of enterprise {done['enterprise_id']} on card {done['asn']} deleted, "
                f"{cents // 100}.{cents % 100:02d} yuan refunded\n"
                if done["blacklist_version"] is not None
                else f"platform: application on card {done['asn']} was already deleted\n"
            )
            return None

        return deliver

    def lab_ca_signer(self, ca_dir: Path, csr_pem: bytes, now: dt.datetime) -> bytes:
        """`onecard terminal provision --ca-dir`: sign the CSR at once with the platform CA kept in `ca_dir` (labs)."""
        from cryptography.hazmat.primitives import serialization

        from central.ca import CaError, PlatformCa

        try:
            return PlatformCa.load(ca_dir).sign_csr(csr_pem, now=now).public_bytes(serialization.Encoding.PEM)
        except CaError as exc:
            raise UserError(str(exc)) from None

    @contextlib.contextmanager
    def lab_registry(self, platform_db: Path, platform_key: Path) -> Iterator:
        """`onecard issue ... --lab-platform-db DB --lab-platform-key KEY`: the platform in this process as the
        issuing station's Registry (central.station_registry.InProcessRegistry), for labs with no broker. A card
        office's station reaches the platform over MQTT with its own certificate and never opens platform.db."""
        from central.db import PlatformError, load_signing_key
        from central.station_registry import InProcessRegistry
        from central.store import Platform

        if not Path(platform_db).is_file():
            raise UserError(f"platform database {platform_db} does not exist; create it with `onecard platform init`")
        try:
            platform = Platform(platform_db, load_signing_key(platform_key))
        except PlatformError as exc:
            raise UserError(str(exc)) from None
        try:
            yield InProcessRegistry(platform)
        finally:
            platform.close()


def add_simulator_subcommands(sub) -> None:
    """`onecard sim ...`: simulated cards, PSAMs, master cards and readers."""
    from simulator import cli as sim_cli

    sim_cli.add_subcommands(sub)
