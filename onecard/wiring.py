"""Where the command line plugs the simulator and the lab CA into the product, which never imports them
(README, House rules). `onecard.cli` hands one `Wiring` to every handler as `args.wiring`."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

from common.errors import UserError


class Wiring:
    """The factories the product's commands are given instead of importing simulator/ or central/."""

    def simulated_card_reader(self, card_file: Path):
        """An in-process reader holding the simulated card in `card_file` (tapped once): `[reader] driver =
        "simulator"` and the issuing station's `--card`."""
        from simulator.inprocess import reader_with_card

        return reader_with_card(card_file)

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
