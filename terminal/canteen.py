"""The canteen till's rules around a sale: the cashier's shift, the meal period and its limits, the fixed price.

The decisions are in terminal/meal_rules.py and terminal/shifts.py (sans-I/O); this reads what they need from the
terminal's own log. A card's usage today is what this till's log holds (every sale, uploaded or not) plus what the
platform confirmed for the enterprise's *other* tills (`other_tills`, docs/sync-protocol.md "Meal usage"): offline,
a till therefore never lets a card past a limit by its own sales, and sales at other tills count as soon as the
platform confirmed them to this till (until then they are unknown here; the platform's settlement shows them).

PurseTerminal.purchase asks `sale_fields` before the card is asked for anything; the fields it returns go into the
purchase intent and from there into the outcome (money_records: operator, batch, meal_period, item). It is also
where the card-application-v2 steps slot in: the spending PIN (消费密码, VERIFY before INIT FOR PURCHASE when the
amount is over its threshold) and the purse split (补助: subsidy and cash shares of `amount`, into the same fields).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from common.config import Config
from common.money_records import PURCHASE, UNDO
from terminal import meal_rules as mr
from terminal import shifts
from terminal.decision import Decision, Refusal

# (asn, service day) -> this card's usage at the enterprise's other tills, keyed by period name ("" = whole day)
OtherTills = Callable[[str, dt.date], dict[str, mr.Usage]]


def no_other_tills(asn: str, day: dt.date) -> dict[str, mr.Usage]:
    return {}


class Canteen:
    def __init__(self, event_log, other_tills: OtherTills = no_other_tills):
        self.event_log = event_log
        self.other_tills = other_tills

    # --- shifts -----------------------------------------------------------------------------------

    def shift(self) -> shifts.Shift | None:
        last = self.event_log.last_event_of(shifts.SHIFT_KINDS)
        if last is None:
            return None
        return shifts.open_shift(last.kind, last.detail, last.time)

    def sign_in(self, config: Config, number: str, password: str, now: dt.datetime) -> Decision:
        try:
            operator = shifts.sign_in(config.pos.operators, self.shift(), number, password)
        except shifts.ShiftRefused as exc:
            return Decision(False, "pos.deny", exc.reason_code, exc.message, detail={"operator": number[:8]})
        last = self.event_log.last_event_of((shifts.SIGN_IN,))
        batch = shifts.next_batch(last.detail["batch"] if last is not None else 0)
        return Decision(
            True,
            shifts.SIGN_IN,
            "signed_in",
            f"Signed in: {operator.name} ({operator.number}), batch {batch:06d}",
            detail={"operator": operator.number, "name": operator.name, "batch": batch},
        )

    def sign_out(self, now: dt.datetime) -> Decision:
        current = self.shift()
        if current is None:
            return Decision(False, "pos.deny", "no_operator", "Nobody is signed in", detail={})
        return Decision(
            True,
            shifts.SIGN_OUT,
            "signed_out",
            f"Signed out: {current.name} ({current.operator}), batch {current.batch:06d} closed",
            detail={"operator": current.operator, "batch": current.batch},
        )

    # --- a sale -----------------------------------------------------------------------------------

    def usage(self, config: Config, asn: str, local: dt.datetime) -> tuple[mr.Usage, mr.Usage]:
        """(this card's usage in the period at `local`, over its service day): own log plus confirmed others."""
        periods = config.pos.meal_periods
        day = mr.service_day(periods, local)
        start, _ = mr.service_day_bounds(periods, day, local.tzinfo or dt.timezone.utc)
        tz = config.terminal.timezone
        sales, undone = {}, set()
        for e in self.event_log.card_events_since(asn, (PURCHASE, UNDO), start):
            if e.kind == PURCHASE:
                sales[e.seq] = mr.Sale(e.time.astimezone(tz), e.detail["amount"])
            else:
                undone.add(e.detail["purchase_seq"])
        period = mr.period_at(periods, local)
        own = [s for seq, s in sales.items() if seq not in undone]
        in_period, in_day = mr.tally(periods, own, day, period)
        others = self.other_tills(asn, day)
        if period is not None:
            in_period += others.get(period.name, mr.Usage())
        return in_period, in_day + others.get("", mr.Usage())

    def sale_fields(self, config: Config, asn: str, amount: int, now: dt.datetime, item: str = "") -> dict:
        """The shift and meal-period fields of a sale about to be made, or Refusal naming the limit it breaks."""
        local = now.astimezone(config.terminal.timezone)
        try:
            current = shifts.require_shift(config.pos.operators, self.shift())
        except shifts.ShiftRefused as exc:
            raise Refusal(exc.reason_code, exc.message, asn) from None
        if config.pos.meal_periods or config.pos.daily_max_amount:  # else there is no limit to count against
            in_period, in_day = self.usage(config, asn, local)
            limit = mr.check_sale(config.pos, local, amount, in_period, in_day)
            if limit is not None:
                raise Refusal(limit.reason_code, limit.message, asn, {"resets_at": limit.resets_at.isoformat()})
        fields: dict = {}
        if current is not None:
            fields.update(operator=current.operator, batch=current.batch)
        period = mr.period_at(config.pos.meal_periods, local)
        if period is not None:
            fields["meal_period"] = period.name
        if config.pos.meal_periods or config.pos.daily_max_amount:  # the platform counts usage by it
            fields["service_day"] = mr.service_day(config.pos.meal_periods, local).isoformat()
        if item:
            fields["item"] = item
        return fields

    def undo_fields(self, config: Config, purchase_detail: dict) -> dict:
        """An undo is made in the shift open now (the operator who gives the money back) and counts against the
        meal period of the sale it reverses."""
        fields: dict = {}
        current = self.shift()
        if current is not None:
            fields.update(operator=current.operator, batch=current.batch)
        for key in ("meal_period", "service_day"):
            if key in purchase_detail:
                fields[key] = purchase_detail[key]
        return fields
