"""The SQLite platform's writers queue on <db>-writer.lock (an exclusive flock) before BEGIN IMMEDIATE."""

from __future__ import annotations

import fcntl
import os
import threading

import pytest

from central.db import PlatformError
from central.store import WRITER_LOCK_SUFFIX, Platform
from tests.test_platform_money import KEY


def test_a_second_writer_waits_for_the_first_and_enters_as_soon_as_it_commits(tmp_path):
    db = tmp_path / "platform.db"
    a, b = Platform(db, KEY), Platform(db, KEY)
    entered, order = threading.Event(), []

    def second():
        with b._txn():
            entered.set()
            order.append("b")

    try:
        assert (tmp_path / ("platform.db" + WRITER_LOCK_SUFFIX)).is_file()
        with a._txn():
            t = threading.Thread(target=second, daemon=True)
            t.start()
            assert not entered.wait(0.3), "the second writer entered while the first held the lock"
            a.add_enterprise("00010001", "Test Co")
            order.append("a")
        assert entered.wait(5), "the second writer never entered after the first committed"
        t.join(5)
        assert order == ["a", "b"]
        assert b.conn.execute("SELECT count(*) FROM enterprises").fetchone()[0] == 1
    finally:
        a.close()
        b.close()


def test_the_lock_is_held_only_during_a_transaction_and_released_on_error(tmp_path):
    db = tmp_path / "platform.db"
    pf = Platform(db, KEY)
    probe = os.open(str(tmp_path / ("platform.db" + WRITER_LOCK_SUFFIX)), os.O_RDWR)

    def free() -> bool:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(probe, fcntl.LOCK_UN)
        return True

    try:
        assert free()
        with pf._txn():
            assert not free()
            with pf._txn():  # a nested call joins the outer transaction, it does not lock again
                assert not free()
            assert not free()
        assert free()
        with pytest.raises(RuntimeError), pf._txn():
            raise RuntimeError("a flow fails")
        assert free() and not pf.conn.in_transaction
    finally:
        os.close(probe)
        pf.close()


def test_a_folder_without_write_permission_is_a_one_line_error(tmp_path):
    db = tmp_path / "platform.db"
    Platform(db, KEY).close()
    (tmp_path / ("platform.db" + WRITER_LOCK_SUFFIX)).unlink()
    (tmp_path / ("platform.db" + WRITER_LOCK_SUFFIX)).mkdir()  # os.open of a directory for writing fails
    with pytest.raises(PlatformError, match="writer lock file"):
        Platform(db, KEY)
