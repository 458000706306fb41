"""One way to open a onecard SQLite file: checked read-only opens, durable read-write opens, atomic creation.

Every check runs on a read-only connection before anything is written, so a file that is not ours is never touched.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

SQLITE_MAGIC = b"SQLite format 3\x00"


class DatabaseError(Exception):
    """A database file cannot be used as it is; the one-line message names the problem and the fix."""


# --------------------------------------------------------------------------------------------
# Opening files safely: every check runs on a read-only connection before anything is written.
# --------------------------------------------------------------------------------------------

def _wal_path(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def preflight(path: Path, setting: str) -> bool:
    """Return True when `path` is new (absent or empty); raise if it is clearly not SQLite.

    Looks at the raw header with plain file I/O, so SQLite never gets a chance to create side
    files next to something that is not a database at all.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return True
    except OSError as exc:
        raise DatabaseError(f"cannot access database {path} ({exc.strerror}); fix the path or its permissions") from None
    if not path.is_file():
        raise DatabaseError(f"database {path} is not a regular file; point {setting} at a database file")
    if st.st_size == 0 and not _wal_path(path).exists():
        return True  # e.g. created by `touch` or by a crash before SQLite wrote its first page
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise DatabaseError(f"cannot read database {path} ({exc.strerror}); fix its permissions") from None
    if head != SQLITE_MAGIC:
        raise DatabaseError(
            f"database {path} is not a onecard database (not an SQLite file); "
            f"point {setting} at the right file or move it away"
        )
    return False


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A connection that cannot change `path` or create files next to it.

    Without a -wal file the main file is complete (SQLite deletes the WAL on clean close), so it
    is opened immutable: a plain `mode=ro` open of a WAL database would create -wal and -shm
    files. With a -wal present (a crash, or a live terminal) those files exist already and
    `mode=ro` reads through them, seeing every committed transaction.
    """
    uri = path.resolve().as_uri()
    if _wal_path(path).exists():
        uri += "?mode=ro"
    else:
        uri += "?immutable=1"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    return conn


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(
            f"database {path} is corrupt ({exc}); keep it for investigation and restore from backup"
            " — nothing was written"
        ) from None
    if rows != [("ok",)]:
        lines = [ln for r in rows for ln in str(r[0]).splitlines() if ln and not ln.startswith("*** in database")]
        first = lines[0] if lines else "no result"
        raise DatabaseError(
            f"database {path} is corrupt (quick_check: {first}; {len(lines)} problem(s)); "
            "keep it for investigation and restore from backup — nothing was written"
        )


def open_checked_readonly(path: Path, *, setting: str, required_tables: set[str], what: str) -> sqlite3.Connection:
    """Open an existing database read-only, run quick_check and make sure it has our tables."""
    conn = _connect_readonly(path)
    try:
        _quick_check(conn, path)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(
                f"database {path} is corrupt ({exc}); keep it for investigation and restore from backup"
                " — nothing was written"
            ) from None
        missing = required_tables - tables
        if missing:
            raise DatabaseError(
                f"database {path} is not a {what} database (no {', '.join(sorted(missing))} table); "
                f"point {setting} at the right file or move it away"
            )
    except BaseException:
        conn.close()
        raise
    return conn


def connect_readwrite(path: Path) -> sqlite3.Connection:
    """Open for writing with the durability settings of docs/event-log.md; raise if WAL is unavailable.

    isolation_level=None: this module issues BEGIN IMMEDIATE / COMMIT itself, so the Python
    driver never opens or commits a transaction behind our back.
    """
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=5.0)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot open database {path} for writing ({exc}); check the path and its permissions") from None
    if str(mode).lower() != "wal":
        conn.close()
        raise DatabaseError(
            f"database {path} cannot use WAL journaling (got {mode}); put it on a local filesystem"
        )
    # FULL: in WAL mode this fsyncs the WAL on every commit, so an acknowledged append survives
    # power loss, not just a process crash (NORMAL may lose the last commits on power loss).
    conn.execute("PRAGMA synchronous = FULL")
    # Keep the WAL from staying at its high-water mark after a large transaction.
    conn.execute("PRAGMA journal_size_limit = 8388608")
    return conn


def create_new(path: Path, build) -> bool:
    """Create the database at `path` complete or not at all, even when another process (the terminal and its sync
    agent start together) does the same: `build(conn)` makes the schema in a private file, which is then linked
    into place. Returns False when another process created `path` first; the caller then opens that one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")
    conn = connect_readwrite(tmp)
    try:
        build(conn)
    finally:
        conn.close()  # the last close checkpoints the WAL into the file and removes -wal and -shm
    try:
        if path.exists() and path.stat().st_size == 0 and not _wal_path(path).exists():
            os.replace(tmp, path)  # an empty file (touch, or a crash before the first page) counts as new
        else:
            os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the new name survives power loss before the first record is acknowledged
    finally:
        os.close(dir_fd)
    return True
