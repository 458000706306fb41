"""Replacing a file so that it is the old bytes or the new ones after any crash, never half of each."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(
    path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600, overwrite: bool = True, sync: bool = True
) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path` (or link it, when `overwrite` is
    False: FileExistsError if `path` appeared meanwhile). With `sync`, the file and the directory are fsynced, so the
    new bytes also survive a power cut once this returns. Raises OSError; callers turn it into their own message.
    """
    path = Path(path)
    # mkstemp creates the file 0600 and we only widen it afterwards: secrets are never readable by others.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode != 0o600:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link(tmp, path)
        if sync:
            dir_fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _link(tmp: str, path: Path) -> None:
    # link() fails if the target exists, which closes the race between a caller's exists-check and the rename.
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        # Filesystems without hard links (FAT on an SD card): check, then rename.
        if os.path.lexists(path):
            raise FileExistsError(path) from None
        os.replace(tmp, path)
