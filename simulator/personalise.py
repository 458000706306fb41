"""Personalise a simulated RFID-SIM: write the holder's files and the card keys its enterprise SAM derives.

This is the factory / issuing step for simulated cards. The card keys come out of the SAM through its
one personalisation door (KeyUsage.PERSONALISE) and go straight into the card's state file.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from common import bcd
from sam.interface import Algorithm, CardIdentity, KeyPurpose
from simulator.card import (
    CARD_TYPE_RFID_SIM,
    ISSUER_ENTERPRISE,
    STATUS_ACTIVE,
    STATUS_TRANSPORT,
    CardState,
    CardStateFile,
    MultiCardState,
    MultiCardStateFile,
    Purse,
)
from terminal.card_protocol import encode_access_file


@dataclass(frozen=True)
class Personalisation:
    enterprise_id: bytes
    employee_no: str
    name: str
    door_groups: frozenset[int]
    valid_from: dt.date
    valid_to: dt.date
    time_profile: int = 0
    algorithm: Algorithm = Algorithm.AES128
    key_version: int = 1
    card_type: int = CARD_TYPE_RFID_SIM
    status: int = STATUS_ACTIVE
    asn: bytes | None = None  # random when not given
    purse: bool = True  # issue the e-purse too (needs the PURCHASE, LOAD and TAC master keys)
    purse_key_version: int = 1
    purse_expiry: dt.date | None = None  # default: valid_to
    max_balance: int = 200_000  # fen: 2,000.00 yuan
    opening_balance: int = 0  # fen; a real card starts at 0 and is loaded at a top-up terminal
    spending_pin: str | None = None  # the spending PIN (消费密码), 4..12 digits; None: none set

    def __post_init__(self) -> None:
        if len(self.employee_no.encode()) > 16:
            raise ValueError("employee number longer than 16 bytes")
        if len(self.name.encode()) > 32:
            raise ValueError("name longer than 32 bytes of UTF-8")
        if any(not 1 <= g <= 64 for g in self.door_groups):
            raise ValueError("door groups are numbered 1 to 64")
        if not 0 <= self.time_profile <= 255:
            raise ValueError("time profile is 0..255")
        if self.valid_to < self.valid_from:
            raise ValueError("valid-to date is before valid-from date")
        if not 0 <= self.opening_balance <= self.max_balance <= 0xFFFFFFFF:
            raise ValueError("opening balance must be between 0 and the maximum balance")


def holder_file(employee_no: str, name: str) -> bytes:
    return employee_no.encode().ljust(16, b"\x00") + name.encode().ljust(32, b"\x00")


def access_file(p: Personalisation) -> bytes:
    return encode_access_file(p.valid_from, p.valid_to, p.door_groups, p.time_profile)


def personalise(sam, p: Personalisation, label: str = "") -> CardState:
    """Build the card's state; `sam` must hold the enterprise's ACCESS key with the personalise usage."""
    asn = p.asn or os.urandom(8)
    identity = CardIdentity(asn=asn, enterprise_id=p.enterprise_id, key_version=p.key_version, algorithm=p.algorithm)
    # K_UPDATE too when the SAM has it, so the card accepts secured commands (replacement, cancellation) later.
    with_update = sam.has_key(p.enterprise_id, KeyPurpose.UPDATE, p.key_version, p.algorithm)
    keys = sam.derive_card_keys(identity, [KeyPurpose.ACCESS] + ([KeyPurpose.UPDATE] if with_update else []))
    purse = None
    if p.purse:
        purse_identity = CardIdentity(
            asn=asn, enterprise_id=p.enterprise_id, key_version=p.purse_key_version, algorithm=p.algorithm
        )
        purse_keys = sam.derive_card_keys(purse_identity, [KeyPurpose.PURCHASE, KeyPurpose.LOAD, KeyPurpose.TAC])
        expiry = p.purse_expiry or p.valid_to
        purse = Purse(
            balance=p.opening_balance,
            expiry=bcd.encode_date(expiry),
            max_balance=p.max_balance,
            key_version=p.purse_key_version,
            purchase_key=purse_keys[KeyPurpose.PURCHASE],
            load_key=purse_keys[KeyPurpose.LOAD],
            tac_key=purse_keys[KeyPurpose.TAC],
        )
    return CardState(
        asn=asn,
        enterprise_id=p.enterprise_id,
        status=p.status,
        key_version=p.key_version,
        algorithm=p.algorithm,
        card_type=p.card_type,
        access_key=keys[KeyPurpose.ACCESS],
        holder=holder_file(p.employee_no, p.name),
        access=access_file(p),
        label=label,
        purse=purse,
        update_key=keys.get(KeyPurpose.UPDATE),
        pin=p.spending_pin,
    )


def transport_card(
    sam,
    enterprise_id: bytes,
    asn: bytes | None = None,
    algorithm: Algorithm = Algorithm.AES128,
    card_type: int = CARD_TYPE_RFID_SIM,
    label: str = "",
) -> CardState:
    """A card as it leaves the factory for an enterprise: status 00, key version 00, only K_TRANSPORT.

    The ACCESS slot holds random bytes nobody knows: a transport card refuses ACCESS READ anyway (69 85), and
    washing replaces the slot. `sam` must hold the enterprise's TRANSPORT key with the personalise usage.
    """
    asn = asn or os.urandom(8)
    identity = CardIdentity(asn=asn, enterprise_id=enterprise_id, key_version=0, algorithm=algorithm)
    k_transport = sam.derive_card_keys(identity, [KeyPurpose.TRANSPORT])[KeyPurpose.TRANSPORT]
    return CardState(
        asn=asn,
        enterprise_id=enterprise_id,
        status=STATUS_TRANSPORT,
        key_version=0,
        algorithm=algorithm,
        card_type=card_type,
        access_key=os.urandom(16),
        holder=bytes(48),
        access=bytes(32),
        label=label,
        purse=None,
        update_key=k_transport,
    )


def write_card(path: str | Path, state: CardState, overwrite: bool = False) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"card file {path} exists; pick another name or pass --force to replace that card")
    CardStateFile(path).save(state)
    return path


# --- version 2: multi-enterprise cards (docs/card-application.md section 9) ---------------------------------


def sub_application(sam, p: Personalisation, name: str, label: str = "") -> CardState:
    """A version 2 sub-application of p.enterprise_id, personalised as `personalise` does (keys from `sam`)."""
    state = personalise(sam, p, label)
    state.name, state.app_version = name, 2
    state.__post_init__()  # the name's length
    return state


def transport_sub_application(sam, enterprise_id: bytes, name: str, asn: bytes | None = None, **kw) -> CardState:
    """A version 2 sub-application at transport state (status 00, key version 00, K_TRANSPORT only)."""
    state = transport_card(sam, enterprise_id, asn=asn, **kw)
    state.name, state.app_version = name, 2
    state.__post_init__()
    return state


def multi_card(
    apps: list[CardState],
    issuer_sam=None,
    serial: bytes | None = None,
    algorithm: Algorithm = Algorithm.AES128,
    card_type: int = CARD_TYPE_RFID_SIM,
    label: str = "",
) -> MultiCardState:
    """A version 2 card carrying `apps`. With `issuer_sam` (holding the card issuer's TRANSPORT master key of
    enterprise 00000000, personalise usage) the card gets K_CARD, so issuing stations can add sub-applications."""
    serial = serial or os.urandom(8)
    card_key = None
    if issuer_sam is not None:
        identity = CardIdentity(asn=serial, enterprise_id=ISSUER_ENTERPRISE, key_version=0, algorithm=algorithm)
        card_key = issuer_sam.derive_card_keys(identity, [KeyPurpose.TRANSPORT])[KeyPurpose.TRANSPORT]
    return MultiCardState(
        serial=serial, card_type=card_type, algorithm=algorithm, card_key=card_key, apps=list(apps), label=label
    )


def write_multi_card(path: str | Path, state: MultiCardState, overwrite: bool = False) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"card file {path} exists; pick another name or pass --force to replace that card")
    MultiCardStateFile(path).save(state)
    return path
