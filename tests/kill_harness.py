"""Run one purse operation in this process and SIGKILL it right after step N (a test helper, not a test).

Usage: python -m tests.kill_harness DIR OP AMOUNT N. Steps are counted across card APDUs (after the card
processed the command, before the answer reaches the terminal), SAM calls and log appends (after they return).
"""

import datetime as dt
import os
import signal
import sys
from pathlib import Path

from sam.keystore import KeystoreUnlock
from sam.software import SoftwareSam
from simulator.card_files import load_card
from simulator.inprocess import InProcessReader
from terminal.sam_state_log import LoggedSamState
from tests.test_purse import make_purse_terminal

NOW = dt.datetime(2026, 11, 23, 2, 0, tzinfo=dt.timezone.utc)


def open_purse_terminal(work: Path, op: str):
    """The terminal as `onecard terminal run` opens it: the software SAM's purse state (TSN) in the event log."""
    terminal = make_purse_terminal(work / op, None, op)
    state = LoggedSamState(terminal.event_log, terminal.config.terminal.enterprise_id)
    terminal.sam = SoftwareSam.open(work / "keystore", KeystoreUnlock.from_passphrase_file(work / "pass"), state=state)
    return terminal


def main() -> None:
    work, op, amount, kill_at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    steps = [0]

    def step():
        steps[0] += 1
        if steps[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def counted(fn):
        def wrapper(*args, **kwargs):
            result = fn(*args, **kwargs)
            step()
            return result

        return wrapper

    terminal = open_purse_terminal(work, op)
    sam = terminal.sam
    for name in ("purchase_mac1", "verify_purchase_mac2", "load_mac2", "verify_load_mac3", "reversal_mac2"):
        setattr(sam, name, counted(getattr(sam, name)))
    terminal.event_log.append = counted(terminal.event_log.append)
    card = load_card(work / "card.json")
    card.transmit = counted(card.transmit)
    reader = InProcessReader()
    reader.tap(card)
    transmit = reader.wait_for_card(0).transmit
    if op == "pos":
        terminal.purchase(transmit, amount, NOW)
    else:
        terminal.top_up(transmit, amount, NOW)
    print(f"completed after {steps[0]} steps", flush=True)


if __name__ == "__main__":
    main()
