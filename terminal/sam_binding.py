"""The SAM binding: which SAM (by its keys' check values) a terminal was installed with, in a file beside its
firmware.toml; the terminal refuses to start with another SAM (docs/install.md)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from pathlib import Path

from common import files
from common.logs import log_event
from sam.interface import KeyInfo

log = logging.getLogger("onecard.provision")

BINDING_FORMAT = "onecard-sam-binding/1"


class BindingError(Exception):
    """The SAM binding file is unreadable or names another SAM."""


def binding_path(config_path: Path) -> Path:
    """firmware.toml -> firmware.sam-binding.json beside it (one binding per configuration)."""
    config_path = Path(config_path)
    return config_path.with_name(config_path.stem + ".sam-binding.json")


def key_entries(infos: list[KeyInfo]) -> list[dict]:
    return sorted(
        (
            {
                "enterprise": i.enterprise_id.hex(),
                "purpose": i.purpose.value,
                "version": i.version,
                "algorithm": i.algorithm.name.lower(),
                "usages": sorted(u.value for u in i.usages),
                "kcv": i.kcv,
            }
            for i in infos
        ),
        key=lambda e: (e["enterprise"], e["purpose"], e["version"], e["algorithm"]),
    )


def sam_fingerprint(infos: list[KeyInfo]) -> str:
    """SHA-256 over the key list with check values: equal only for a SAM holding the same keys and usages."""
    return hashlib.sha256(json.dumps(key_entries(infos), sort_keys=True).encode()).hexdigest()


def binding_document(terminal_id: str, backend: str, sam_name: str, infos: list[KeyInfo], now: dt.datetime) -> dict:
    return {
        "format": BINDING_FORMAT,
        "terminal_id": terminal_id,
        "backend": backend,
        "sam": sam_name,
        "fingerprint": sam_fingerprint(infos),
        "keys": key_entries(infos),
        "bound_at": now.isoformat(timespec="seconds"),
    }


def read_binding(path: Path) -> dict | None:
    """The binding document, None when the terminal was never bound; BindingError when it is damaged."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BindingError(
            f"SAM binding {path} is unreadable ({exc}); re-bind the SAM: onecard terminal provision "
            f"--rebind-sam --config <firmware.toml>"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != BINDING_FORMAT or not isinstance(doc.get("keys"), list):
        raise BindingError(
            f"SAM binding {path} is not a {BINDING_FORMAT} document; re-bind the SAM: onecard "
            "terminal provision --rebind-sam --config <firmware.toml>"
        )
    return doc


def _entry_text(e: dict) -> str:
    return f"{e['purpose']} v{e['version']} {e['algorithm']} KCV {e['kcv']}"


def binding_problem(binding: dict, backend: str, infos: list[KeyInfo]) -> str | None:
    """What differs between the bound SAM and this one, or None when it is the bound SAM."""
    if binding.get("backend") != backend:
        return f"the terminal is bound to a {binding.get('backend')} SAM, this is a {backend}"
    if binding.get("fingerprint") == sam_fingerprint(infos):
        return None
    bound = {_entry_text(e) for e in binding["keys"] if isinstance(e, dict) and "kcv" in e}
    here = {_entry_text(e) for e in key_entries(infos)}
    gone, new = sorted(bound - here), sorted(here - bound)
    parts = []
    if gone:
        parts.append(f"bound key {gone[0]} is not in this SAM")
    if new:
        parts.append(f"this SAM holds {new[0]}")
    return "; ".join(parts) or "its keys' usages differ from the bound SAM's"


def check_bound_sam(config_path: Path, backend: str, sam) -> None:
    """Raise BindingError when a binding file exists and `sam` is not the SAM it names (used at terminal start)."""
    path = binding_path(config_path)
    binding = read_binding(path)
    if binding is None:
        return
    problem = binding_problem(binding, backend, sam.key_infos())
    if problem:
        raise BindingError(
            f"this SAM is not the one terminal {binding.get('terminal_id')} was installed with "
            f"({problem}, per {path.name}); put back the bound SAM, or re-bind this one: onecard "
            f"terminal provision --rebind-sam --config {config_path}"
        )


def bind_sam(
    config_path: Path, terminal_id: str, backend: str, name: str, infos: list[KeyInfo], now: dt.datetime, force: bool
) -> str:
    """Write the binding of this SAM beside the configuration; keep an equal one; refuse another without force."""
    path = binding_path(config_path)
    try:
        current = read_binding(path)
    except BindingError:
        if not force:
            raise
        current = None
    if current is not None:
        problem = binding_problem(current, backend, infos)
        if problem is None:
            return f"kept the binding to {backend} {name} ({len(infos)} keys) in {path}"
        if not force:
            raise BindingError(
                f"{path} binds this terminal to another SAM ({problem}); insert that SAM, or pass "
                "--force to bind this one"
            )
    doc = binding_document(terminal_id, backend, name, infos, now)
    files.write_atomically(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(), mode=0o644)
    log_event(
        log,
        "provision.sam_bound",
        terminal=terminal_id,
        backend=backend,
        fingerprint=doc["fingerprint"],
        text=f"SAM {name} bound",
    )
    return f"bound {backend} {name}: {len(infos)} keys, fingerprint {doc['fingerprint'][:16]} in {path}"
