"""Shift (X) and day (Z) settlement of a till's money records: one computation for the terminal and the platform.

`onecard terminal report` feeds it the terminal's own log; `onecard platform settlement` the records the platform
received from that terminal. Both print `format_totals`, so the two reports agree line for line on what both
hold, and each says what it has not seen (records not yet uploaded, or not yet received). Sans-I/O.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from common.money import format_yuan
from common.money_records import LOAD, PURCHASE, SUBSIDY_REFUND, UNDO

# An undone two-purse sale is a pos.undo (its cash share) and a subsidy.refund (its subsidy share): both are undos.
MONEY_OUTCOMES = (PURCHASE, UNDO, LOAD, SUBSIDY_REFUND)
NO_PERIOD, NO_OPERATOR = "(no period)", "(no operator)"


@dataclass(frozen=True)
class Record:
    seq: int
    time: dt.datetime  # aware
    kind: str
    detail: dict[str, Any]


@dataclass
class Tally:
    count: int = 0
    amount: int = 0

    def add(self, amount: int) -> None:
        self.count += 1
        self.amount += amount


@dataclass
class Totals:
    sales: Tally = field(default_factory=Tally)
    undos: Tally = field(default_factory=Tally)
    loads: Tally = field(default_factory=Tally)
    # The subsidy purse's share of the sales (two-purse sales, card-application.md 5.6): part of `sales`, counted
    # apart so that the cash the till took (net - subsidy) and the enterprise's subsidy are never mixed.
    subsidy_spent: Tally = field(default_factory=Tally)
    # The subsidy share given back by undos (subsidy.refund): part of `undos`, counted apart as subsidy_spent is.
    subsidy_undone: Tally = field(default_factory=Tally)
    by_period: dict[str, dict[str, Tally]] = field(default_factory=dict)  # period -> {sales, undos}
    by_operator: dict[str, dict[str, Tally]] = field(default_factory=dict)
    seqs: list[int] = field(default_factory=list)  # the money records counted

    @property
    def net(self) -> int:
        """What the till took in: sales less refunds (top-ups are money in at a top-up terminal, shown apart)."""
        return self.sales.amount - self.undos.amount


def select_day(records: Iterable[Record], day: dt.date, tz: dt.tzinfo) -> list[Record]:
    """The money records of calendar day `day` in the terminal's time zone."""
    return [r for r in records if r.kind in MONEY_OUTCOMES and r.time.astimezone(tz).date() == day]


def select_batch(records: Iterable[Record], batch: int) -> list[Record]:
    return [r for r in records if r.kind in MONEY_OUTCOMES and r.detail.get("batch") == batch]


def settle(records: Iterable[Record]) -> Totals:
    totals = Totals()
    for r in records:
        if r.kind not in MONEY_OUTCOMES:
            continue
        amount = r.detail["amount"]
        column = {PURCHASE: "sales", UNDO: "undos", LOAD: "loads", SUBSIDY_REFUND: "undos"}[r.kind]
        getattr(totals, column).add(amount)
        totals.seqs.append(r.seq)
        if r.kind == PURCHASE and r.detail.get("subsidy_amount"):
            totals.subsidy_spent.add(r.detail["subsidy_amount"])
        if r.kind == SUBSIDY_REFUND:
            totals.subsidy_undone.add(amount)
        if r.kind == LOAD:
            continue
        period = r.detail.get("meal_period") or NO_PERIOD
        operator = r.detail.get("operator") or NO_OPERATOR
        for table, key in ((totals.by_period, period), (totals.by_operator, operator)):
            row = table.setdefault(key, {"sales": Tally(), "undos": Tally()})
            row[column].add(amount)
    return totals


def _tally(t: Tally) -> str:
    return f"{t.count:>4}  {format_yuan(t.amount):>10}"


def format_totals(totals: Totals) -> list[str]:
    """The totals as report lines (the same on the terminal and the platform)."""
    lines = [
        f"sales          {_tally(totals.sales)}",
        f"undos          {_tally(totals.undos)}",
        f"net            {'':>4}  {format_yuan(totals.net) if totals.net >= 0 else '-' + format_yuan(-totals.net):>10}",
        f"loads          {_tally(totals.loads)}",
        f"subsidy spent  {_tally(totals.subsidy_spent)}",
        f"subsidy undone {_tally(totals.subsidy_undone)}",
    ]
    for title, table in (("by meal period", totals.by_period), ("by operator", totals.by_operator)):
        if table:
            lines.append(title)
            lines += [
                f"  {k:<12} sales {_tally(table[k]['sales'])}  undos {_tally(table[k]['undos'])}" for k in sorted(table)
            ]
    return lines


def seq_ranges(seqs: Iterable[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    runs: list[list[int]] = []  # [first, last] of each run of consecutive seqs
    for s in sorted(seqs):
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)
