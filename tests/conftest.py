"""Session fixtures for a private pcscd with vpcd readers (`pcscd`) and virtual cards in its slots (`vicc`)."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_PCSCD_DIR: str | None = None


def pytest_configure(config):
    # pcsc-lite's client library reads PCSCLITE_CSOCK_NAME once per process, at the first PC/SC call;
    # point it at the private pcscd now, before any test module can touch PC/SC.
    global _PCSCD_DIR
    _PCSCD_DIR = tempfile.mkdtemp(prefix="onecard-pcscd-")
    os.environ["PCSCLITE_CSOCK_NAME"] = os.path.join(_PCSCD_DIR, "run", "pcscd.comm")


def pytest_unconfigure(config):
    if _PCSCD_DIR:
        shutil.rmtree(_PCSCD_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def pcscd():
    """A private pcscd with 4 vpcd readers: `.slots[i].name` (PC/SC reader name) and `.slots[i].port` (vpcd)."""
    from simulator.pcscd import PcscdError, private_pcscd

    manager = private_pcscd(n_readers=4, workdir=_PCSCD_DIR)
    try:
        env = manager.__enter__()
    except PcscdError as exc:
        problem = str(exc)  # failed outside the except block, so the report is the one line, not a chain
    else:
        problem = None
    if problem:
        pytest.fail(problem, pytrace=False)
    try:
        yield env
    finally:
        manager.__exit__(None, None, None)


@pytest.fixture
def vicc(pcscd):
    """`vicc(i)` -> a VirtualIcc on reader slot i; at teardown its card leaves and pcscd has seen the slot empty."""
    from simulator.vpcd import VirtualIcc
    from terminal.readers.pcsc import PcscReader

    made = []

    def make(slot: int = 0) -> VirtualIcc:
        icc = VirtualIcc(pcscd.slots[slot].port, label=f"test-slot-{slot}")
        made.append((slot, icc))
        return icc

    yield make
    for slot, icc in made:
        icc.remove()
        reader = PcscReader(pcscd.slots[slot].name)
        try:
            # The next test must find the slot empty, not a card pcscd has not yet noticed leaving.
            assert reader.wait_for_removal(3), f"pcscd still sees a card in {reader.name} 3 s after removal"
        finally:
            reader.close()


# ---------------------------------------------------------------------------------------------
# Sync agent / platform fixtures (tests/test_sync_*.py): a test PKI once per session, a private
# mosquitto with TLS and the onecard ACL per test, a platform service on it (tests/mqtt_env.py).
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sync_pki(tmp_path_factory):
    from tests.mqtt_env import make_pki

    return make_pki(tmp_path_factory.mktemp("sync-pki"))


@pytest.fixture
def broker(sync_pki, tmp_path):
    """A private mosquitto (TLS, client certificates, ACL) on 127.0.0.1; stopped with SIGTERM at teardown."""
    from tests.mqtt_env import Broker, BrokerError

    try:
        b = Broker(tmp_path / "broker", sync_pki)
        b.start()
    except BrokerError as exc:
        problem = str(exc)
    else:
        problem = None
    if problem:
        pytest.fail(problem, pytrace=False)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def platform(broker, tmp_path):
    """(admin Platform for the test thread, running PlatformService with 2 shared-subscription workers)."""
    from tests.mqtt_env import start_platform

    (tmp_path / "platform").mkdir()
    admin, service = start_platform(tmp_path / "platform", broker)
    try:
        yield admin, service
    finally:
        service.stop()
        admin.close()


# ---------------------------------------------------------------------------------------------
# Tests that call `onecard.cli.main` in-process install the CLI's log handler on the root logger;
# put the root logger back afterwards so later tests (and their threads) log where pytest expects.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _restore_root_logger():
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# ---------------------------------------------------------------------------------------------
# PostgreSQL (tests/pg_env.py): one private server per session, a new database per test. Store-level tests take
# `platform_db` and run once on SQLite and once on PostgreSQL (marker `postgres`).
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server():
    from tests.pg_env import PostgresServer, pg_bin

    if pg_bin() is None:
        pytest.fail("PostgreSQL is not installed; run deploy/setup-debian.sh (it installs postgresql)", pytrace=False)
    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_dsn(pg_server):
    """A new, empty PostgreSQL database on the session's server: its libpq DSN."""
    return pg_server.new_database()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def platform_db(request, tmp_path):
    """Where a test's platform database lives: a new SQLite file, or a new PostgreSQL database (as a target
    `postgresql:DSN`, what `onecard platform --db` takes)."""
    if request.param == "sqlite":
        return tmp_path / "platform.db"
    return "postgresql:" + request.getfixturevalue("pg_dsn")
