"""simulator/readable.py: the simulators wait on sockets with poll(2), so a process with more than 1023 open files
(a long test run) still serves cards; select(2) raised "filedescriptor out of range" there."""

import os
import resource
import socket

import pytest

from simulator.readable import readable


@pytest.fixture
def high_fd_pair():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard limit of open files is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    a, b = socket.socketpair()
    try:
        assert b.fileno() > 1023
        yield a, b
    finally:
        a.close()
        b.close()
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_socket_above_fd_1023_is_waited_on(high_fd_pair):
    a, b = high_fd_pair
    assert readable([b], 0.05) == []  # nothing sent: the time runs out
    a.sendall(b"\x01")
    assert readable([b], 1.0) == [b]
    assert readable([a, b], 0) == [b]  # only the one with data
    a.close()
    assert b.recv(1) == b"\x01"
    assert readable([b], None) == [b]  # EOF is readable: the read reports it
    assert b.recv(1) == b""
