"""systemd integration over real sockets: sd_notify datagrams (READY, WATCHDOG from the tap loop only) and
journald priorities on log lines."""

import io
import logging
import os
import socket
import threading

import pytest

from common.logs import setup_logging, stream_is_journal
from terminal.systemd import Notifier
from tests.support import make_sam, make_terminal


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(5)
    yield str(path), sock
    sock.close()


def received(sock) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


def test_ready_and_stopping_reach_the_notify_socket(notify_socket):
    path, sock = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    n.ready("door terminal 000000000101 serving taps")
    assert received(sock) == {
        "READY": "1",
        "STATUS": "door terminal 000000000101 serving taps",
        "MAINPID": str(os.getpid()),
    }
    n.stopping()
    assert received(sock) == {"STOPPING": "1"}


def test_abstract_notify_socket():
    name = f"onecard-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).send(STATUS="x")
        assert received(sock) == {"STATUS": "x"}
    finally:
        sock.close()


def test_outside_systemd_nothing_is_sent():
    n = Notifier({})
    assert not n.active and n.watchdog_seconds is None and n.send(READY="1") is False
    n.heartbeat()


def test_watchdog_only_for_this_process_and_rate_limited(notify_socket):
    path, sock = notify_socket
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}).watchdog_seconds is None
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.watchdog_seconds == 20
    n.heartbeat()
    n.heartbeat()  # within a quarter of the interval: not sent again
    assert received(sock) == {"WATCHDOG": "1"}
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(4096)


class _HangingReader:
    """A reader whose second wait never returns: the tap loop hangs there."""

    name = "hanging"

    def __init__(self):
        self.calls, self.release = 0, threading.Event()

    def wait_for_card(self, timeout):
        self.calls += 1
        if self.calls >= 2:
            self.release.wait()
        return None

    def wait_for_removal(self, timeout):
        return True

    def close(self):
        pass


def test_the_tap_loop_pings_the_watchdog_and_a_hung_loop_stops_pinging(notify_socket, tmp_path):
    path, sock = notify_socket
    # A tiny interval so that every turn of the loop may ping.
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4", "WATCHDOG_PID": str(os.getpid())})
    term, _ = make_terminal(tmp_path, make_sam(), "door")
    reader, stop = _HangingReader(), threading.Event()
    runner = threading.Thread(
        target=term.run, args=(reader, lambda: None, stop, 0.01), kwargs={"heartbeat": n.heartbeat}
    )
    runner.start()
    try:
        assert received(sock) == {"WATCHDOG": "1"}  # first turn
        assert received(sock) == {"WATCHDOG": "1"}  # second turn, before the reader hangs
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(4096)  # hung in the reader: no more pings, so systemd's WatchdogSec restarts the unit
    finally:
        stop.set()
        reader.release.set()
        runner.join(5)


def test_warnings_and_errors_carry_journald_priorities(tmp_path, monkeypatch):
    stream = open(tmp_path / "journal", "w+")
    st = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert stream_is_journal(stream)
    setup_logging("INFO", stream)
    log = logging.getLogger("onecard.test")
    log.info("event=a")
    log.warning("event=b")
    log.error("event=c")
    stream.seek(0)
    lines = stream.read().splitlines()
    assert [line[:3] for line in lines] == ["<6>", "<4>", "<3>"]
    assert lines[1] == "<4>level=WARNING logger=onecard.test event=b"
    stream.close()


def test_no_priority_prefix_outside_the_journal(monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    stream = io.StringIO()
    setup_logging("INFO", stream)
    logging.getLogger("onecard.test").warning("event=b")
    assert not stream.getvalue().startswith("<") and "level=WARNING" in stream.getvalue()
