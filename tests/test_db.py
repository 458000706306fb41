"""common/db.transaction: the one BEGIN IMMEDIATE / COMMIT / ROLLBACK of every onecard database."""

import pytest

from common.db import connect_readwrite, transaction


def test_commit_rollback_and_nesting(tmp_path):
    conn = connect_readwrite(tmp_path / "t.db")
    conn.execute("CREATE TABLE t (x INTEGER)")
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
    assert not conn.in_transaction
    with pytest.raises(RuntimeError):
        with transaction(conn):
            conn.execute("INSERT INTO t VALUES (2)")
            with transaction(conn):  # joins the outer one: its end commits nothing
                conn.execute("INSERT INTO t VALUES (3)")
            assert conn.in_transaction
            raise RuntimeError("undo all of it")
    assert not conn.in_transaction
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (4)")
        conn.execute("COMMIT")  # a body that commits itself (old style) is not committed twice
    assert [r[0] for r in conn.execute("SELECT x FROM t ORDER BY x")] == [1, 4]
    conn.close()
