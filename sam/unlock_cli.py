"""The one set of command-line options that unlock a software keystore, for every command that opens one:
`--passphrase-file F` or `--device-secret-file F` (with a prefix, e.g. `--out-...`, for a second keystore)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sam.keystore import KeystoreUnlock


def add_unlock_options(
    parser: argparse.ArgumentParser, *, required: bool = True, prefix: str = "", what: str = "the keystore"
) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument(
        f"--{prefix}passphrase-file",
        type=Path,
        metavar="F",
        help=f"file holding the passphrase of {what} (one trailing newline is ignored)",
    )
    group.add_argument(
        f"--{prefix}device-secret-file", type=Path, metavar="F", help=f"or the device secret file locking {what}"
    )


def unlock_from_args(args: argparse.Namespace, prefix: str = "") -> KeystoreUnlock | None:
    """The unlock the options name, None when neither was given (KeystoreError for an unreadable file)."""
    attr = prefix.replace("-", "_")
    passphrase, device = getattr(args, f"{attr}passphrase_file"), getattr(args, f"{attr}device_secret_file")
    if passphrase is not None:
        return KeystoreUnlock.from_passphrase_file(passphrase, f"--{prefix}passphrase-file")
    if device is not None:
        return KeystoreUnlock.from_device_secret_file(device, f"--{prefix}device-secret-file")
    return None
