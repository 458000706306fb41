"""Hypothesis: random purchases, top-ups, undos, tears and terminal restarts never create or lose money.

After every settling tap: opening balance + credits logged - debits logged = balance on the card, and every
card counter value maps to exactly one logged transaction, across the POS's and the top-up terminal's logs.
"""

import datetime as dt

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from simulator.inprocess import InProcessReader
from terminal.decision import Refusal
from terminal.purse_flow import Incomplete
from terminal.reader import CardRemoved
from tests.support import MONDAY_10AM, make_card, make_sam
from tests.test_purse import make_purse_terminal

OPENING = 20_000
SIGN = {"pos.purchase": -1, "pos.undo": 1, "topup.load": 1}


class LeavesBefore:
    """The card leaves the field just before command INS reaches it (the terminal sent it, the card never got it)."""

    def __init__(self, card, ins):
        self.card, self.ins, self.atr = card, ins, card.atr

    def power_on(self):
        self.card.power_on()

    def power_off(self):
        self.card.power_off()

    def transmit(self, apdu):
        if apdu[1] == self.ins:
            raise CardRemoved("left before the command")
        return self.card.transmit(apdu)


class Money(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        import tempfile
        from pathlib import Path

        self.dir = Path(tempfile.mkdtemp(prefix="onecard-money-"))
        (self.dir / "pos").mkdir()
        (self.dir / "topup").mkdir()
        self.sam = make_sam()
        self.card = make_card(self.sam, opening_balance=OPENING, path=self.dir / "card.json")
        self.terminals = {
            "pos": make_purse_terminal(self.dir / "pos", self.sam, "pos"),
            "topup": make_purse_terminal(self.dir / "topup", self.sam, "topup"),
        }
        self.now = MONDAY_10AM

    def teardown(self):
        import shutil

        for t in getattr(self, "terminals", {}).values():
            t.event_log.close()
            t.blacklist.close()
        if hasattr(self, "dir"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def _present(self, tear):
        reader = InProcessReader()
        card = self.card
        if isinstance(tear, tuple):
            card = LeavesBefore(self.card, tear[1])
            tear = None
        reader.tap(card, tear_after=tear)
        self.now += dt.timedelta(seconds=7)
        return reader.wait_for_card(0).transmit

    def _run(self, action):
        try:
            action()
        except (Refusal, Incomplete, CardRemoved):
            pass

    tears = st.one_of(st.none(), st.integers(1, 4), st.tuples(st.just("before"), st.sampled_from([0x54, 0x52])))

    @rule(amount=st.integers(1, 6000), tear=tears)
    def purchase(self, amount, tear):
        self._run(lambda: self.terminals["pos"].purchase(self._present(tear), amount, self.now))

    @rule(amount=st.integers(1, 6000), tear=tears)
    def top_up(self, amount, tear):
        self._run(lambda: self.terminals["topup"].top_up(self._present(tear), amount, self.now))

    @rule(tear=tears)
    def undo(self, tear):
        self._run(lambda: self.terminals["pos"].undo_last(self._present(tear), self.now))

    @rule(which=st.sampled_from(["pos", "topup"]))
    def restart(self, which):
        """The terminal process dies and starts again: files survive, memory (the sale in progress) does not."""
        old = self.terminals[which]
        old.event_log.close()
        old.blacklist.close()
        self.terminals[which] = make_purse_terminal(self.dir / which, self.sam, which)

    @rule()
    def sync(self):
        pos = self.terminals["pos"]
        seq = pos.event_log.last_seq()
        pos.synced_seq = lambda: seq

    @rule()
    def settle_everywhere_and_check(self):
        for t in self.terminals.values():
            t.balance_inquiry(self._present(None), self.now)
        events = [e for t in self.terminals.values() for e in t.event_log.events()]
        logged = OPENING + sum(SIGN[e.kind] * e.detail["amount"] for e in events if e.kind in SIGN)
        assert logged == self.card.state.purse.balance
        purchases = sorted(e.detail["counter"] for e in events if e.kind == "pos.purchase")
        loads = sorted(e.detail["counter"] for e in events if e.kind in ("pos.undo", "topup.load"))
        assert purchases == list(range(self.card.state.purse.offline_counter))
        assert loads == list(range(self.card.state.purse.online_counter))

    @invariant()
    def balance_never_negative_and_chains_intact(self):
        if hasattr(self, "card"):
            assert self.card.state.purse.balance >= 0
            for t in self.terminals.values():
                assert t.event_log.verify().ok


Money.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestMoney = Money.TestCase
