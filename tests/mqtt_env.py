"""A private mosquitto with TLS and the onecard ACL on 127.0.0.1, plus a test PKI and platform key, for sync tests."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from simulator.broker import MOSQUITTO, BrokerError, Pki, free_port  # noqa: F401  (re-exported for tests)
from simulator.broker import Broker as _Broker
from simulator.broker import make_pki as _make_pki

ENTERPRISE = "00010001"
OTHER_ENTERPRISE = "00020002"


def terminal_id(i: int) -> str:
    return f"{i:012d}"


# 60 terminals of the test enterprise (IDs 1..60) and 2 of another (IDs 901, 902).
TERMINALS = {
    **{terminal_id(i): ENTERPRISE for i in range(1, 61)},
    **{terminal_id(i): OTHER_ENTERPRISE for i in (901, 902)},
}
# Issuing stations (the card office), with certificates of their own: one per enterprise.
STATIONS = {terminal_id(900): ENTERPRISE, terminal_id(903): OTHER_ENTERPRISE}


def make_pki(directory: Path, terminals: dict[str, str] = TERMINALS) -> Pki:
    return _make_pki(directory, {**terminals, **STATIONS})


@dataclass
class Broker(_Broker):
    terminals: dict[str, str] = field(default_factory=lambda: dict(TERMINALS))
    stations: dict[str, str] = field(default_factory=lambda: dict(STATIONS))


# --------------------------------------------------------------------------------------------
# Terminals with sync agents, and a platform, for tests and bench/sync.py
# --------------------------------------------------------------------------------------------

TERMINAL_SYNC_TOML = """
[terminal]
id = "{tid}"
kind = "{kind}"
enterprise_id = "{eid}"
name = "Sync test {tid}"
timezone = "Asia/Shanghai"
database = "{dir}/events.db"
blacklist = "{dir}/blacklist.db"
[reader]
driver = "simulator"
card = "unused.json"
[sam]
keystore = "unused.keystore"
passphrase_file = "unused.pass"
[door]
group = 1
[sync]
broker_host = "127.0.0.1"
broker_port = {port}
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"
platform_public_key = "{pub}"
database = "{dir}/sync.db"
{extra}
"""


def write_terminal_config(
    directory: Path, tid: str, broker: Broker, *, kind: str = "door", cert_cn: str | None = None, **sync
) -> Path:
    """firmware.toml of terminal `tid` with a [sync] section; `cert_cn` lets a test give it another's certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    c = broker.pki.client(cert_cn or tid)
    extra = "\n".join(
        f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {str(v).lower()}" if isinstance(v, bool) else f"{k} = {v}"
        for k, v in sync.items()
    )
    path = directory / "firmware.toml"
    path.write_text(
        TERMINAL_SYNC_TOML.format(
            tid=tid,
            kind=kind,
            eid=broker.terminals[tid],
            dir=directory,
            port=broker.port,
            ca=broker.pki.ca.cert,
            cert=c.cert,
            key=c.key,
            pub=broker.pki.platform_public,
            extra=extra,
        ),
        encoding="utf-8",
    )
    return path


def fill_log(db: Path, tid: str, n: int, *, start=None, kind: str = "door.grant", asn: str = "0102030405060708"):
    """Append n chained records quickly (synchronous=OFF on this connection only: test data, not durability)."""
    import datetime as dt

    from terminal.event_log import EventLog

    start = start or dt.datetime(2026, 11, 23, 1, 0, tzinfo=dt.timezone.utc)
    with EventLog.open(db, tid) as log:
        log.db.execute("PRAGMA synchronous = OFF")
        for i in range(n):
            log.append(
                start + dt.timedelta(seconds=i), kind, asn=asn, reason_code="ok", message="Welcome", detail={"i": i}
            )
        return log.last_seq()


def wait_until(condition, timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll `condition` until true; a liveness deadline (not a performance assertion) naming what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"{what} did not happen within {timeout} s")


class AgentThread:
    """A SyncAgent built, stepped and closed in its own thread (SQLite connections stay in that thread).

    Tests look at the agent's files through their own connections (acked_seq, blacklist_version).
    """

    def __init__(self, config_path: Path, **agent_kwargs) -> None:
        import threading

        from common.config import load_config

        self.config = load_config(config_path)
        self.agent_kwargs = agent_kwargs
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.graceful = True
        self.agent = None
        self.thread = threading.Thread(target=self._loop, daemon=True, name=f"agent-{self.config.terminal.id}")
        self.error: BaseException | None = None

    def _loop(self) -> None:
        from sync_agent.agent import SyncAgent

        try:
            self.agent = SyncAgent.from_config(self.config, **self.agent_kwargs)
            self.agent.start()
            self.ready.set()
            try:
                while not self.stop_event.is_set():
                    self.agent.step()
            finally:
                self.agent.close(graceful=self.graceful)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
            self.ready.set()

    def start(self) -> AgentThread:
        self.thread.start()
        self.ready.wait(10)
        return self

    def stop(self, graceful: bool = True) -> None:
        self.graceful = graceful
        self.stop_event.set()
        self.thread.join(30)
        if self.error:
            raise self.error

    def acked_seq(self) -> int:
        from sync_agent.store import read_acked_seq

        return read_acked_seq(self.config.sync.database)

    def blacklist_version(self) -> int:
        return blacklist_version(self.config.terminal.blacklist)


def blacklist_version(path: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return conn.execute("SELECT version FROM bl_meta WHERE id = 1").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def start_platform(
    workdir: Path,
    broker: Broker,
    *,
    workers: int = 2,
    terminals: dict[str, str] | None = None,
    tac_sam=None,
    kinds: dict[str, str] | None = None,
    db=None,
):
    """A PlatformService on platform.db (or `db`, e.g. a `postgresql:DSN` target) with every test enterprise and the
    given terminals registered (as door terminals unless `kinds` says otherwise); without `tac_sam` it runs in the lab
    mode (money unverified)."""
    from central.service import BrokerSettings, PlatformService
    from central.store import Platform

    db = workdir / "platform.db" if db is None else db
    admin = Platform(db, broker.pki.platform_key)
    admin.add_enterprise(ENTERPRISE, "Test Co")
    admin.add_enterprise(OTHER_ENTERPRISE, "Other Co")
    for tid, eid in (terminals if terminals is not None else broker.terminals).items():
        admin.add_terminal(tid, eid, kind=(kinds or {}).get(tid, "door"))
    service = PlatformService(
        db,
        broker.pki.platform_key,
        BrokerSettings("127.0.0.1", broker.port, broker.pki.ca.cert, broker.pki.platform_cert_dir),
        workers=workers,
        tac_sam=tac_sam,
        unverified_money=tac_sam is None,
    )
    service.start()
    assert service.wait_connected(), "platform workers could not connect to the test broker"
    return admin, service
