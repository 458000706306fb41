"""One way to open a onecard SQLite file: checked read-only opens, durable read-write opens, atomic creation.

Every check runs on a read-only connection before anything is written, so a file that is not ours is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

SQLITE_MAGIC = b"SQLite format 3\x00"


class DatabaseError(Exception):
    """A database file cannot be used as it is; the one-line message names the problem and the fix."""


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception: a crash or an error leaves all of it or none.

    For connections opened with isolation_level=None (connect_readwrite). Used inside another transaction (a flow
    calling a helper that also opens one), it joins the outer one, which alone commits or rolls back."""
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if conn.in_transaction:
        conn.execute("COMMIT")


# --------------------------------------------------------------------------------------------
# Opening files safely: every check runs on a read-only connection before anything is written.
# --------------------------------------------------------------------------------------------


def _wal_path(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


# Below this much free space on its filesystem a database is not opened for writing: SQLite needs room for its
# -wal and -shm files and a checkpoint, and a terminal that starts only to refuse every tap helps nobody.
MIN_FREE_BYTES = 1024 * 1024

NEW_INSTALL_FIX = "keep it for investigation and restore it from backup, or delete it if this is a new install"


def free_bytes(path: Path) -> int | None:
    """Free space (for unprivileged writers) on the filesystem that holds `path`, None if it cannot be told."""
    directory = path if path.is_dir() else path.parent
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def disk_full_problem(path: Path) -> str | None:
    """The one-line refusal when the filesystem holding `path` is (nearly) full, else None."""
    free = free_bytes(path)
    if free is None or free >= MIN_FREE_BYTES:
        return None
    return (
        f"the disk holding {path} is full ({free // 1024} KiB free, at least {MIN_FREE_BYTES // 1024} KiB "
        "needed); free space on that filesystem, then start again — nothing was written"
    )


def check_free_space(path: Path) -> None:
    """Raise DatabaseError when `path` cannot be written for lack of space (checked before every read-write open)."""
    problem = disk_full_problem(path)
    if problem:
        raise DatabaseError(problem)


def is_disk_full(exc: BaseException) -> bool:
    """True for SQLite's and the OS's 'no space left' errors."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return isinstance(exc, sqlite3.Error) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    )


def preflight(path: Path, setting: str, lost_fix: str = NEW_INSTALL_FIX) -> bool:
    """Return True when `path` is new (absent); raise if it is empty, truncated or clearly not SQLite.

    Looks at the raw header with plain file I/O, so SQLite never gets a chance to create side
    files next to something that is not a database at all. onecard never leaves an empty or short
    database behind (create_new links a complete file into place), so an empty file was wiped or
    truncated by someone else: it is refused, never silently replaced (`lost_fix` says what to do).
    """
    # Looked at before the size: a live database's checkpoint writes its header before the pages that extend the
    # file, and removes the WAL only when done, so a WAL seen at any point means the size may not be final yet.
    wal_before = _wal_path(path).exists()
    try:
        st = path.stat()
    except FileNotFoundError:
        return True
    except OSError as exc:
        raise DatabaseError(
            f"cannot access database {path} ({exc.strerror}); fix the path or its permissions"
        ) from None
    if not path.is_file():
        raise DatabaseError(f"database {path} is not a regular file; point {setting} at a database file")
    if st.st_size == 0:
        raise DatabaseError(
            f"database {path} is empty (0 bytes), so it was wiped or truncated (onecard never "
            f"leaves an empty database); {lost_fix}"
        )
    try:
        with path.open("rb") as f:
            header = f.read(_HEADER_SIZE)
    except OSError as exc:
        raise DatabaseError(f"cannot read database {path} ({exc.strerror}); fix its permissions") from None
    if not header.startswith(SQLITE_MAGIC):
        if SQLITE_MAGIC.startswith(header):
            raise DatabaseError(
                f"database {path} is truncated ({st.st_size} bytes, shorter than an SQLite header); {lost_fix}"
            )
        raise DatabaseError(
            f"database {path} is not a onecard database (not an SQLite file); "
            f"point {setting} at the right file or move it away"
        )
    problem = _size_problem(header, st.st_size, wal_before or _wal_path(path).exists())
    if problem:
        raise DatabaseError(f"database {path} is truncated ({problem}); {lost_fix}")
    return False


_HEADER_SIZE = 100


def _size_problem(header: bytes, size: int, has_wal: bool) -> str | None:
    """Why the file cannot be the whole database its header describes (SQLite file format, section 1.3)."""
    if len(header) < _HEADER_SIZE:
        return f"{size} bytes, shorter than the 100-byte SQLite header"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"its header gives page size {page_size}"
    if has_wal:
        return None  # the WAL may hold pages the main file has not received yet; quick_check reads through it
    if size % page_size:
        return f"{size} bytes is not a whole number of {page_size}-byte pages"
    pages = int.from_bytes(header[28:32], "big")
    # The in-header page count is valid when its change counter matches "version-valid-for".
    if pages and header[24:28] == header[92:96] and size < pages * page_size:
        return f"{size} bytes of the {pages * page_size} its header records"
    return None


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
        check_free_space(path)  # a read-only open of a WAL file needs room for its -shm: not corruption
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
    try:
        conn = _connect_readonly(path)
    except sqlite3.Error as exc:
        check_free_space(path)
        raise DatabaseError(f"cannot open database {path} ({exc}); check the path and its permissions") from None
    try:
        _quick_check(conn, path)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            check_free_space(path)
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


def connect_readwrite(path: Path, page_size: int | None = None) -> sqlite3.Connection:
    """Open for writing with the durability settings of docs/event-log.md; raise if WAL is unavailable.

    isolation_level=None: this module issues BEGIN IMMEDIATE / COMMIT itself, so the Python
    driver never opens or commits a transaction behind our back.
    """
    check_free_space(path)
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=5.0)
        if page_size is not None:
            conn.execute(f"PRAGMA page_size = {int(page_size)}")  # only a new, empty file takes it (before WAL)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    except sqlite3.Error as exc:
        check_free_space(path)
        if is_disk_full(exc):
            raise DatabaseError(
                f"the disk holding {path} is full ({exc}); free space on that filesystem, then "
                "start again — nothing was written"
            ) from None
        raise DatabaseError(
            f"cannot open database {path} for writing ({exc}); check the path and its permissions"
        ) from None
    if str(mode).lower() != "wal":
        conn.close()
        raise DatabaseError(f"database {path} cannot use WAL journaling (got {mode}); put it on a local filesystem")
    # FULL: in WAL mode this fsyncs the WAL on every commit, so an acknowledged append survives
    # power loss, not just a process crash (NORMAL may lose the last commits on power loss).
    conn.execute("PRAGMA synchronous = FULL")
    # Keep the WAL from staying at its high-water mark after a large transaction.
    conn.execute("PRAGMA journal_size_limit = 8388608")
    return conn


def create_new(path: Path, build, page_size: int | None = None) -> bool:
    """Create the database at `path` complete or not at all, even when another process (the terminal and its sync
    agent start together) does the same: `build(conn)` makes the schema in a private file, which is then linked
    into place. Returns False when another process created `path` first; the caller then opens that one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")
    check_free_space(path)
    try:
        conn = connect_readwrite(tmp, page_size)
        try:
            build(conn)
        finally:
            conn.close()  # the last close checkpoints the WAL into the file and removes -wal and -shm
        os.link(tmp, path)  # never over an existing file, not even an empty one (preflight refuses those)
    except FileExistsError:
        return False
    except (sqlite3.Error, OSError) as exc:
        check_free_space(path)
        if is_disk_full(exc):
            raise DatabaseError(
                f"cannot create database {path}: the disk holding it is full ({exc}); free space on "
                "that filesystem, then start again"
            ) from None
        if isinstance(exc, OSError):
            raise DatabaseError(
                f"cannot create database {path} ({exc.strerror}); check the directory and its permissions"
            ) from None
        raise
    finally:
        for leftover in (tmp, _wal_path(tmp), tmp.with_name(tmp.name + "-shm")):
            leftover.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the new name survives power loss before the first record is acknowledged
    finally:
        os.close(dir_fd)
    return True
