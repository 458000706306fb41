"""Building blocks for tests: a real software SAM, personalised simulated cards, a terminal on real SQLite."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

from common.config import load_config
from sam.interface import Algorithm, KeyPurpose, KeyUsage
from sam.keystore import Keystore, MasterKey
from sam.software import SoftwareSam
from simulator.card import CardStateFile, OneCardApplet
from simulator.personalise import Personalisation, personalise
from terminal.app import Terminal
from terminal.blacklist import Blacklist
from terminal.event_log import EventLog
from terminal.outputs import ConsoleOutputs

ENTERPRISE = bytes.fromhex("00010001")
OTHER_ENTERPRISE = bytes.fromhex("00020002")
ALL_USAGES = (KeyUsage.VERIFY, KeyUsage.MAC, KeyUsage.PERSONALISE, KeyUsage.REVERSAL)
# 2026-11-23 is a Monday; 10:00 in Shanghai.
MONDAY_10AM = dt.datetime(2026, 11, 23, 2, 0, tzinfo=dt.timezone.utc)


PURSE_PURPOSES = (KeyPurpose.PURCHASE, KeyPurpose.LOAD, KeyPurpose.TAC)


def make_keystore(enterprise: bytes = ENTERPRISE, versions=(1,), usages=ALL_USAGES) -> Keystore:
    """An enterprise key set: ACCESS, UPDATE and the purse keys, both algorithms, every usage (an issuing keystore)."""
    return Keystore(
        [
            MasterKey.generate(enterprise, purpose, v, alg, usages)
            for purpose in (KeyPurpose.ACCESS, KeyPurpose.UPDATE, *PURSE_PURPOSES)
            for v in versions
            for alg in (Algorithm.AES128, Algorithm.SM4)
        ]
    )


def make_sam(enterprise: bytes = ENTERPRISE, versions=(1,), usages=ALL_USAGES) -> SoftwareSam:
    return SoftwareSam(make_keystore(enterprise, versions, usages))


def make_card(sam, path: Path | None = None, **overrides) -> OneCardApplet:
    fields = dict(
        enterprise_id=ENTERPRISE,
        employee_no="E1001",
        name="Zhang Wei",
        door_groups=frozenset({1, 2}),
        valid_from=dt.date(2026, 1, 1),
        valid_to=dt.date(2028, 12, 31),
    )
    fields.update(overrides)
    state = personalise(sam, Personalisation(**fields))
    store = None
    if path is not None:
        store = CardStateFile(path)
        store.save(state)
    return OneCardApplet(state=state, store=store)


TERMINAL_TOML = """
[terminal]
id = "000000000101"
kind = "{kind}"
enterprise_id = "00010001"
name = "Test {kind}"
timezone = "Asia/Shanghai"
database = "{db}"
blacklist = "{bl}"
[reader]
driver = "simulator"
card = "unused.json"
# Generous: a loaded test machine must not turn a slow answer into a refusal (tests/test_reader_faults.py
# sets a short deadline where the deadline is what is tested).
command_timeout_ms = 5000
[sam]
keystore = "unused.keystore"
passphrase_file = "unused.pass"
[door]
group = 1
open_seconds = 4
[attendance]
repeat_window_seconds = 60
[pos]
max_purchase = "100.00"
offline_limit = "150.00"
undo_window_seconds = 120
[topup]
max_load = "500.00"
[time_profiles.1]
name = "office hours"
mon = ["07:00-20:00"]
tue = ["07:00-20:00"]
"""


def make_terminal(
    tmp: Path,
    sam,
    kind: str = "door",
    nonce_source=None,
    command_timeout_ms: int = 5000,
    enterprise: bytes = ENTERPRISE,
):
    tag = kind if enterprise == ENTERPRISE else f"{kind}-{enterprise.hex()}"
    cfg = tmp / f"{tag}.toml"
    toml = TERMINAL_TOML.format(kind=kind, db=tmp / f"{tag}.db", bl=tmp / f"{tag}-blacklist.db")
    toml = toml.replace('enterprise_id = "00010001"', f'enterprise_id = "{enterprise.hex()}"')
    cfg.write_text(
        toml.replace("command_timeout_ms = 5000", f"command_timeout_ms = {command_timeout_ms}"), encoding="utf-8"
    )
    config = load_config(cfg)
    event_log = EventLog.open(config.terminal.database, config.terminal.id)
    blacklist = Blacklist.open(config.terminal.blacklist)
    screen = io.StringIO()
    kwargs = {"nonce_source": nonce_source} if nonce_source else {}
    term = Terminal(
        config, sam, event_log, blacklist, ConsoleOutputs(config.terminal.name, screen, color=False), **kwargs
    )
    return term, screen


def make_card_v2(sam, path: Path | None = None, name: str = "Office", extra=(), issuer_sam=None, **overrides):
    """A version 2 card carrying one sub-application of ENTERPRISE (fields as make_card) plus `extra`
    sub-applications (CardState of app_version 2)."""
    from simulator.card import MultiCardStateFile, OneCardV2Applet
    from simulator.personalise import multi_card, sub_application

    fields = dict(
        enterprise_id=ENTERPRISE,
        employee_no="E1001",
        name="Zhang Wei",
        door_groups=frozenset({1, 2}),
        valid_from=dt.date(2026, 1, 1),
        valid_to=dt.date(2028, 12, 31),
    )
    fields.update(overrides)
    state = multi_card([sub_application(sam, Personalisation(**fields), name), *extra], issuer_sam=issuer_sam)
    store = None
    if path is not None:
        store = MultiCardStateFile(path)
        store.save(state)
    return OneCardV2Applet(state, store)
