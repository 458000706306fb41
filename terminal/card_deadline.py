"""A deadline on every card command: past it the tap is refused, and the loop serves the next card.

A stalled card (or a reader waiting for an answer that never comes) blocks the PC/SC or nfcpy call that is
talking to it; no API can cancel that call. So each command runs on a worker thread and the tap waits for it
at most the deadline. A worker left behind by a late card is abandoned: it finishes (or fails) when the card
answers or leaves, releases the connection then, and exits; the next tap gets a fresh worker.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from terminal.reader import CardConnection, CardUnresponsive


class _Call:
    __slots__ = ("fn", "done", "result", "error")

    def __init__(self, fn: Callable[[], object]):
        self.fn = fn
        self.done = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the waiting tap, which raises it as its own
            self.error = exc
        finally:
            self.done.set()


class _Worker:
    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        # daemon: a card that never answers must not keep the process from exiting.
        threading.Thread(target=self._loop, name="card-commands", daemon=True).start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job.run()

    def submit(self, fn: Callable[[], object]) -> _Call:
        call = _Call(fn)
        self._jobs.put(call)
        return call

    def retire(self) -> None:
        self._jobs.put(None)


class CommandDeadline:
    """Runs card commands with a deadline of `timeout` seconds each; `wrap(conn)` gives the connection to use."""

    def __init__(self, timeout: float):
        if not timeout > 0:
            raise ValueError(f"a command deadline must be positive seconds, got {timeout!r}")
        self.timeout = timeout
        self._worker: _Worker | None = None

    def wrap(self, conn: CardConnection) -> DeadlineConnection:
        return conn if isinstance(conn, DeadlineConnection) else DeadlineConnection(conn, self)

    def _run(self, fn: Callable[[], object]) -> tuple[_Call, _Worker]:
        if self._worker is None:
            self._worker = _Worker()
        worker = self._worker
        call = worker.submit(fn)
        if not call.done.wait(self.timeout):
            self._worker = None  # abandoned to the late card; the next command gets a new thread
        return call, worker


class DeadlineConnection:
    """A CardConnection whose transmit raises CardUnresponsive when the card misses the deadline."""

    def __init__(self, conn: CardConnection, deadline: CommandDeadline):
        self._conn = conn
        self._deadline = deadline
        self._late: _Worker | None = None  # the worker still waiting for a late answer
        self.atr = conn.atr

    def __getattr__(self, name: str):
        return getattr(self._conn, name)  # protocol_name, uid, ... of the reader's own connection

    def transmit(self, apdu: bytes) -> bytes:
        if self._late is not None:
            raise CardUnresponsive("the card missed an earlier command's deadline on this tap")
        call, worker = self._deadline._run(lambda: self._conn.transmit(apdu))
        if not call.done.is_set():
            self._late = worker
            ms = round(self._deadline.timeout * 1000)
            raise CardUnresponsive(f"the card did not answer {bytes(apdu[:4]).hex().upper()} within {ms} ms")
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]

    def close(self) -> None:
        late, self._late = self._late, None
        if late is None:
            self._conn.close()
            return
        # The late command still holds the connection: release it after that command returns.
        late.submit(self._conn.close)
        late.retire()
