"""Wait until sockets can be read: poll(2), which, unlike select(2), takes file descriptors above 1023 (a long test
run or a busy simulator can have that many open)."""

from __future__ import annotations

import select
import socket


def readable(socks: list[socket.socket], timeout: float | None) -> list[socket.socket]:
    """The sockets of `socks` ready to read (or at EOF / in error, so that the read reports it), within `timeout`
    seconds (None: wait for ever); [] when the time ran out."""
    poller = select.poll()
    by_fd = {}
    for s in socks:
        by_fd[s.fileno()] = s
        poller.register(s, select.POLLIN | select.POLLPRI)
    ms = None if timeout is None else max(0, int(timeout * 1000))
    return [by_fd[fd] for fd, _ in poller.poll(ms)]
