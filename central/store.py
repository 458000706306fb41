"""The reference platform's state in SQLite: terminals and their verified event chains, holders, cards, blacklists.

Every operation is one transaction; messages it must send are signed and queued in `outbound` in that same
transaction, so a crash never leaves a blacklist change without its notification (or the reverse).
"""

from __future__ import annotations

import datetime as dt
import secrets
import sqlite3
import zoneinfo
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.bills import Bills
from central.blacklists import Blacklists
from central.card_flows import CardFlows
from central.db import _SCHEMA, PlatformError, migrate
from central.ingest import Ingest
from central.outbound import Outbound
from central.purse import PurseAccounts
from central.registry import Registry
from common import sync_protocol as p
from common.db import transaction


class Platform(Registry, Blacklists, CardFlows, Outbound, Ingest, PurseAccounts, Bills):
    """Accounts, ingest and signed publications of one platform database (one instance per thread).

    Each job lives in its own module (registry, blacklists, card_flows, outbound, ingest, purse, bills); this class
    owns the connection, the clock and the signing key they share.
    """

    def __init__(
        self,
        path: Path,
        signing_key: Ed25519PrivateKey,
        *,
        clock=None,
        timezone: str = "Asia/Shanghai",
        tac_sam=None,
        unverified_money: bool = False,
    ) -> None:
        self.path = Path(path)
        self.key = signing_key
        # A SAM holding the enterprises' TAC master keys (usage verify): only the platform can check a TAC.
        # Without one, money records are held ('no_tac_keys') unless `unverified_money` (the lab flag of
        # `platform serve --lab-unverified-money`): then they are accounted with tac_status 'unchecked' and every
        # balance they move is labelled unverified.
        self.tac_sam = tac_sam
        self.unverified_money = unverified_money
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self.tz = zoneinfo.ZoneInfo(timezone)
        # check_same_thread=False: a service builds its Platform objects and hands each to one worker
        # thread; an object is never used by two threads at once.
        self.conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30.0, check_same_thread=False)
        if self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise PlatformError(f"platform database {self.path} cannot use WAL; put it on a local filesystem")
        self.conn.execute("PRAGMA synchronous = FULL")  # an ack is sent only for what survives power loss
        self.conn.executescript(_SCHEMA)
        migrate(self.conn)
        # The epoch every blacklist body carries: made once per platform database (`onecard platform init`).
        self.conn.execute(
            "INSERT OR IGNORE INTO platform_epoch VALUES (1, ?, 1, ?, 'created')", (secrets.token_hex(16), self._now())
        )
        self._digests: dict[tuple, str] = {}

    def close(self) -> None:
        self.conn.close()

    def _txn(self):
        return transaction(self.conn)

    def _now(self) -> str:
        return p.format_time(self.clock())

    def seal(self, type_: str, target: str, body: dict) -> bytes:
        # The platform never signs what a terminal would refuse: the same schema the agent applies.
        try:
            p.BODY_CHECKS[type_](body)
        except p.ProtocolError as exc:
            raise PlatformError(f"refusing to sign this {type_}: {exc}") from None
        return p.seal(self.key, type_, target, body, self.clock(), self.new_message_id())

    @staticmethod
    def new_message_id() -> str:
        return secrets.token_hex(16)

    def _queue(self, topic: str, payload: bytes) -> None:
        self.conn.execute(
            "INSERT INTO outbound (topic, payload, created_at) VALUES (?, ?, ?)", (topic, payload, self._now())
        )
