"""Where the command line plugs the simulator and the lab CA into the product, which never imports them
(README, House rules). `onecard.cli` hands one `Wiring` to every handler as `args.wiring`."""

from __future__ import annotations

import datetime as dt
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


def add_simulator_subcommands(sub) -> None:
    """`onecard sim ...`: simulated cards, PSAMs, master cards and readers."""
    from simulator import cli as sim_cli

    sim_cli.add_subcommands(sub)
