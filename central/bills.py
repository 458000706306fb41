"""The holder's monthly bills (attendance and spending) as SMS text, and a till's day settlement.

A part of `central.store.Platform`: it works on the platform database through `self.conn` and `self._txn()`.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import dataclass

from central.attendance_rules import Day
from central.db import ACTIVE, LOST, PlatformError, _yuan
from common import settlement as st
from common import sync_protocol as p
from common.config import Shift
from common.money_records import MONEY_SIGN

CSV_COLUMNS = (
    "enterprise_id",
    "employee_no",
    "name",
    "date",
    "weekday",
    "shift",
    "day_type",
    "holiday",
    "first_in",
    "last_out",
    "clock_pairs",
    "late_minutes",
    "early_minutes",
    "status",
)


def _hm(t: dt.datetime | None) -> str:
    return t.strftime("%H:%M") if t is not None else "--"


@dataclass(frozen=True)
class AttendanceBill:
    enterprise_id: str
    employee_no: str
    name: str
    month: str
    shift: Shift | None
    days: tuple[Day, ...]

    def totals(self) -> dict[str, int]:
        work = [d for d in self.days if d.day_type == "work"]
        return {
            "working_days": len(work),
            "present": sum(1 for d in work if d.pairs),
            "late": sum("late" in d.status for d in self.days),
            "early": sum("early" in d.status for d in self.days),
            "absent": sum("absent" in d.status for d in self.days),
            "missing_clock": sum("no_out" in d.status or "no_in" in d.status for d in self.days),
        }

    def sms(self) -> str:
        items = []
        for d in self.days:
            text = f"{d.day.strftime('%m-%d %a')} " + (
                ", ".join(f"in {_hm(i)} out {_hm(o)}" for i, o in d.pairs) if d.pairs else "absent"
            )
            text += "".join(
                {"late": f" late {d.late_minutes} min", "early": f" early {d.early_minutes} min"}.get(s, "")
                for s in d.status
            )
            text += " no clock-out" if "no_out" in d.status else ""
            text += " no clock-in" if "no_in" in d.status else ""
            text += f" (holiday {d.holiday})" if d.day_type == "holiday" else ""
            text += " (day off)" if d.day_type == "off" and self.shift is not None else ""
            items.append(text)
        body = "; ".join(items) if items else "no clock-in recorded"
        head = f"[onecard] {self.name} ({self.employee_no}), attendance {self.month}"
        if self.shift is None:
            return f"{head}: {sum(1 for d in self.days if d.pairs)} day(s). {body}."
        t = self.totals()
        s = self.shift
        return (
            f"{head}, shift {s.name} {s.start.strftime('%H:%M')}-{s.end.strftime('%H:%M')}: worked "
            f"{t['present']} of {t['working_days']} working day(s), late {t['late']}, early {t['early']}, absent "
            f"{t['absent']}, missing clock {t['missing_clock']}. {body}."
        )

    def csv_rows(self) -> list[list[str]]:
        return [
            [
                self.enterprise_id,
                self.employee_no,
                self.name,
                d.day.isoformat(),
                d.day.strftime("%a"),
                self.shift.name if self.shift is not None else "",
                d.day_type,
                d.holiday,
                _hm(d.first_in) if d.first_in else "",
                _hm(d.last_out) if d.last_out else "",
                " ".join(f"{_hm(i)}-{_hm(o)}" for i, o in d.pairs),
                str(d.late_minutes),
                str(d.early_minutes),
                " ".join(d.status) or ("ok" if d.day_type == "work" else ""),
            ]
            for d in self.days
        ]


def bills_csv(bills: list[AttendanceBill]) -> str:
    """The administrator's CSV: a header, then one row per employee and day (RFC 4180, CRLF line ends)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for bill in bills:
        writer.writerows(bill.csv_rows())
    return out.getvalue()


SPENDING_CSV_COLUMNS = (
    "enterprise_id",
    "employee_no",
    "name",
    "month",
    "time",
    "wallet",
    "item",
    "place",
    "terminal_id",
    "amount",
    "balance",
)
# What each booked item is called on the bill, and which way it moves its wallet.
_CASH_LABEL = {"pos.purchase": "paid", "pos.undo": "refund", "topup.load": "top-up", "payout": "paid out"}
_SUBSIDY_LABEL = {
    "load": "subsidy",
    "purchase": "paid from subsidy",
    "withdraw": "subsidy withdrawn",
    "lapsed": "subsidy lapsed",  # expired when its card was replaced (docs/card-application.md 8.5)
    "returned": "subsidy returned to the enterprise",  # its card was cancelled (8.5): never paid out in cash
}
_SUBSIDY_SIGN = {"load": 1, "purchase": -1, "withdraw": -1, "lapsed": -1, "returned": -1}
OVER_THE_AIR = "over the air"


@dataclass(frozen=True)
class BillItem:
    """One booked movement of a wallet: `amount` in fen, signed (+ into the wallet)."""

    time: dt.datetime | None  # platform time zone; None: the ledger row has no time (counted before every month)
    wallet: str  # "cash" or "subsidy"
    kind: str  # a key of _CASH_LABEL or _SUBSIDY_LABEL
    place: str  # a terminal's name, "over the air", or "cancellation"
    terminal_id: str
    amount: int

    @property
    def label(self) -> str:
        return (_CASH_LABEL if self.wallet == "cash" else _SUBSIDY_LABEL)[self.kind]

    def sms(self) -> str:
        when = self.time.strftime("%m-%d %H:%M") if self.time is not None else "--"
        where = self.place if self.place in (OVER_THE_AIR, "at cancellation", "at replacement") else f"at {self.place}"
        return f"{when} {self.label} {_yuan(abs(self.amount))} {where}"


@dataclass(frozen=True)
class SpendingBill:
    """A holder's monthly purse bill: every booked item of the month, so that opening + items = closing for the
    cash purse (and for the subsidy wallet when the holder has one)."""

    enterprise_id: str
    employee_no: str
    name: str
    month: str
    opening: int
    closing: int
    items: tuple[BillItem, ...]  # both wallets, in time order
    subsidy_opening: int | None  # None: the holder has no subsidy wallet records
    subsidy_closing: int | None
    unverified: bool

    def cash(self) -> list[BillItem]:
        return [i for i in self.items if i.wallet == "cash"]

    def sms(self) -> str:
        cash = self.cash()
        spent = -sum(i.amount for i in cash if i.kind in ("pos.purchase", "pos.undo"))
        loaded = sum(i.amount for i in cash if i.kind == "topup.load")
        paid_out = -sum(i.amount for i in cash if i.kind == "payout")
        flag = " (UNVERIFIED: not checked against the cards' TACs)" if self.unverified else ""
        text = (
            f"[onecard] {self.name} ({self.employee_no}), canteen {self.month}: opening {_yuan(self.opening)} "
            f"yuan, spent {_yuan(spent)}, topped up {_yuan(loaded)}"
            + (f", paid out {_yuan(paid_out)}" if paid_out else "")
            + f", closing balance {_yuan(self.closing)} yuan{flag}"
        )
        if self.subsidy_opening is not None:
            assert self.subsidy_closing is not None
            text += f"; subsidy {_yuan(self.subsidy_opening)} -> {_yuan(self.subsidy_closing)} yuan"
        body = "; ".join(i.sms() for i in self.items) or "no purse transactions"
        return f"{text}. {body}."

    def csv_rows(self) -> list[list[str]]:
        head = [self.enterprise_id, self.employee_no, self.name, self.month]
        rows = []
        wallets = [("cash", self.opening, self.closing)]
        if self.subsidy_opening is not None:
            assert self.subsidy_closing is not None
            wallets.append(("subsidy", self.subsidy_opening, self.subsidy_closing))
        for wallet, opening, closing in wallets:
            balance = opening
            rows.append(head + ["", wallet, "opening balance", "", "", "", _yuan(opening)])
            for i in self.items:
                if i.wallet != wallet:
                    continue
                balance += i.amount
                when = i.time.isoformat(timespec="seconds") if i.time is not None else ""
                rows.append(head + [when, wallet, i.label, i.place, i.terminal_id, _yuan(i.amount), _yuan(balance)])
            assert balance == closing, (wallet, balance, closing)  # opening + items = closing, by construction
            rows.append(head + ["", wallet, "closing balance", "", "", "", _yuan(closing)])
        return rows


def spending_bills_csv(bills: list[SpendingBill]) -> str:
    """The administrator's CSV of spending bills: a header, then per employee and wallet an opening row, one row
    per booked item (signed amount, running balance) and a closing row (RFC 4180, CRLF line ends)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(SPENDING_CSV_COLUMNS)
    for bill in bills:
        writer.writerows(bill.csv_rows())
    return out.getvalue()


class Bills:
    def attendance_bill(self, enterprise_id: str, employee_no: str, month: str) -> str:
        """The SMS text of an employee's monthly attendance bill (docs/door-rules.md, "Attendance bill")."""
        return self.attendance_bills(month, enterprise_id, employee_no)[0].sms()

    def _holder_filter(
        self, enterprise_id: str | None, employee_no: str | None, alias: str = ""
    ) -> tuple[list[str], list[str]]:
        """(WHERE terms, arguments) choosing the holders of one enterprise, or all, or one employee when named;
        PlatformError naming an unknown enterprise or employee."""
        if employee_no is not None:
            assert enterprise_id is not None
            self._holder(enterprise_id, employee_no)  # a clear error for an unknown employee
        where, args = ["1 = 1"], []
        if enterprise_id is not None:
            self._enterprise(enterprise_id)
            where.append(f"{alias}enterprise_id = ?")
            args.append(enterprise_id)
        if employee_no is not None:
            where.append(f"{alias}employee_no = ?")
            args.append(employee_no)
        return where, args

    def attendance_bills(
        self, month: str, enterprise_id: str | None = None, employee_no: str | None = None
    ) -> list[AttendanceBill]:
        """Every employee's bill for the month (one enterprise, or all; one employee when named), from the
        ingested attendance events judged against the employee's shift and the enterprise's holiday calendar as
        last published (its configuration document)."""
        from central.attendance_rules import Clock, attendance_month, month_range
        from common.config import ConfigError, document_calendar

        try:
            first, nxt = month_range(month)
        except ValueError:
            raise PlatformError(f"month {month!r} is not YYYY-MM; write e.g. 2026-11") from None
        lo = p.format_time(dt.datetime.combine(first, dt.time(0), self.tz))
        hi = p.format_time(dt.datetime.combine(nxt, dt.time(0), self.tz))
        today = self.clock().astimezone(self.tz).date()
        where, args = self._holder_filter(enterprise_id, employee_no, "h.")
        holders = self.conn.execute(
            "SELECT h.holder_id, h.enterprise_id, h.employee_no, h.name, h.shift, e.config_document FROM holders h "
            f"JOIN enterprises e USING (enterprise_id) WHERE {' AND '.join(where)} "
            "ORDER BY h.enterprise_id, h.employee_no",
            args,
        ).fetchall()
        bills = []
        for holder_id, eid, number, name, shift_name, document in holders:
            try:
                holidays, shifts = document_calendar(json.loads(document) if document else None)
            except ConfigError as exc:  # published before this check existed: say so rather than guess
                raise PlatformError(f"enterprise {eid}'s configuration document: {exc}") from None
            shift = shifts.get(shift_name or "default")
            if shift_name and shift is None:
                raise PlatformError(
                    f"employee {number} is on shift {shift_name!r}, which enterprise {eid}'s configuration does not "
                    "define; publish it (shifts) or set another with `onecard platform set-shift`"
                )
            clocks = [
                Clock(p.parse_time(t, "event time").astimezone(self.tz), "in" if k == "attendance.in" else "out")
                for (k, t) in self.conn.execute(
                    "SELECT e.kind, e.time FROM events e JOIN cards c ON c.asn = e.asn WHERE c.holder_id = ? "
                    "AND e.kind IN ('attendance.in', 'attendance.out') AND e.time >= ? AND e.time < ?",
                    (holder_id, lo, hi),
                )
            ]
            days = attendance_month(month, clocks, shift, today, holidays)
            bills.append(AttendanceBill(eid, number, name, month, shift, tuple(days)))
        return bills

    def spending_bill(self, enterprise_id: str, employee_no: str, month: str) -> str:
        """The SMS text of an employee's monthly purse bill (docs/canteen.md "Spending bill")."""
        return self.spending_bills(month, enterprise_id, employee_no)[0].sms()

    def spending_bills(
        self, month: str, enterprise_id: str | None = None, employee_no: str | None = None
    ) -> list[SpendingBill]:
        """Every employee's purse bill for the month (one enterprise, or all; one employee when named): each item
        the platform booked for the holder's cards (sales, undos, loads at terminals, over-the-air top-ups, the
        balance paid out at a cancellation, and the subsidy wallet's records), opening and closing balances.

        The cash purse's closing balance is the one the platform holds now less what was booked after the month;
        the opening balance less the month's items again, so opening + items = closing whatever the cards' history
        (a balance given at issue, a replacement that moved it). The subsidy wallet starts at 0 (central/subsidy.py:
        collected - spent - withdrawn), counting its TAC-verified (or lab 'unchecked') records only."""
        from central.attendance_rules import month_range

        try:
            first_day, next_day = month_range(month)
        except ValueError:
            raise PlatformError(f"month {month!r} is not YYYY-MM; write e.g. 2026-11") from None
        lo = p.format_time(dt.datetime.combine(first_day, dt.time(0), self.tz))
        hi = p.format_time(dt.datetime.combine(next_day, dt.time(0), self.tz))
        where, args = self._holder_filter(enterprise_id, employee_no)
        holders = self.conn.execute(
            f"SELECT holder_id, enterprise_id, employee_no, name FROM holders WHERE {' AND '.join(where)} "
            "ORDER BY enterprise_id, employee_no",
            args,
        ).fetchall()
        return [self._spending_bill(h, month, lo, hi) for h in holders]

    def _spending_bill(self, holder: tuple, month: str, lo: str, hi: str) -> SpendingBill:
        from central.ota_jobs import OTA_LEDGER_TERMINAL

        holder_id, eid, number, name = holder
        cards = "SELECT asn FROM cards WHERE holder_id = ?"
        # (platform time text, terminal, seq, item): every booked item of the holder, sorted by when it happened and
        # then by its place in its terminal's chain (a two-purse sale's cash and subsidy parts share one record).
        ledger: list[tuple[str, str, int, BillItem]] = []
        for t, kind, amount, tid, seq, place in self.conn.execute(
            "SELECT coalesce(e.time, o.booked_at, ''), t.kind, t.amount_cents, t.terminal_id, t.seq, tm.name "
            "FROM purse_transactions t "
            "LEFT JOIN events e ON e.terminal_id = t.terminal_id AND e.seq = t.seq "
            "LEFT JOIN ota_loads o ON t.terminal_id = ? AND o.seq = t.seq "
            "LEFT JOIN terminals tm ON tm.terminal_id = t.terminal_id "
            f"WHERE t.asn IN ({cards})",
            (OTA_LEDGER_TERMINAL, holder_id),
        ):
            where = OVER_THE_AIR if tid == OTA_LEDGER_TERMINAL else (place or f"terminal {tid}")
            ledger.append((t, tid, seq, self._bill_item(t, "cash", kind, where, tid, MONEY_SIGN[kind] * amount)))
        for t, row_id, amount in self.conn.execute(
            f"SELECT at, id, amount_cents FROM refunds WHERE asn IN ({cards})", (holder_id,)
        ):
            ledger.append((t, "", row_id, self._bill_item(t, "cash", "payout", "at cancellation", "", -amount)))
        for t, kind, amount, tid, seq, place in self.conn.execute(
            "SELECT coalesce(e.time, s.recorded_at), s.kind, s.amount_cents, s.terminal_id, s.seq, tm.name "
            "FROM subsidy_transactions s "
            "LEFT JOIN events e ON e.terminal_id = s.terminal_id AND e.seq = s.seq "
            "LEFT JOIN terminals tm ON tm.terminal_id = s.terminal_id "
            f"WHERE s.asn IN ({cards}) AND s.tac_status IN ('ok', 'unchecked')",
            (holder_id,),
        ):
            item = self._bill_item(t, "subsidy", kind, place or f"terminal {tid}", tid, _SUBSIDY_SIGN[kind] * amount)
            ledger.append((t, tid, seq, item))
        # A replacement moves the subsidy between the holder's own cards (nothing to bill), unless it had expired.
        for t, amount in self.conn.execute(
            f"SELECT at, amount_cents FROM subsidy_carried WHERE lapsed = 1 AND old_asn IN ({cards})", (holder_id,)
        ):
            ledger.append((t, "", 0, self._bill_item(t, "subsidy", "lapsed", "at replacement", "", -amount)))
        # A cancelled card's subsidy goes back to the enterprise (never paid out in cash, unlike the cash refund).
        for t, amount in self.conn.execute(
            f"SELECT at, amount_cents FROM subsidy_returned WHERE asn IN ({cards})", (holder_id,)
        ):
            ledger.append((t, "", 0, self._bill_item(t, "subsidy", "returned", "at cancellation", "", -amount)))
        ledger.sort(key=lambda r: (r[0], r[1], r[2], r[3].wallet))
        (balance,) = self.conn.execute(
            f"SELECT coalesce(sum(balance_cents), 0) FROM cards WHERE asn IN ({cards})", (holder_id,)
        ).fetchone()
        cash_after = sum(i.amount for t, _, _, i in ledger if i.wallet == "cash" and t >= hi)
        month_items = tuple(i for t, _, _, i in ledger if lo <= t < hi)
        closing = balance - cash_after
        opening = closing - sum(i.amount for i in month_items if i.wallet == "cash")
        subsidy = [(t, i) for t, _, _, i in ledger if i.wallet == "subsidy"]
        s_open = sum(i.amount for t, i in subsidy if t < lo) if subsidy else None
        s_close = sum(i.amount for t, i in subsidy if t < hi) if subsidy else None
        unchecked = self.conn.execute(
            "SELECT count(*) FROM purse_transactions t JOIN cards c ON c.asn = t.asn WHERE c.holder_id = ? AND "
            "c.status IN (?, ?) AND t.tac_status = 'unchecked'",
            (holder_id, ACTIVE, LOST),
        ).fetchone()[0]
        return SpendingBill(eid, number, name, month, opening, closing, month_items, s_open, s_close, bool(unchecked))

    def _bill_item(self, t: str, wallet: str, kind: str, place: str, tid: str, amount: int) -> BillItem:
        when = p.parse_time(t, "ledger time").astimezone(self.tz) if t else None
        return BillItem(when, wallet, kind, place, tid, amount)

    def settlement_records(self, terminal_id: str, day: dt.date) -> list[st.Record]:
        """The money records of `day` (platform time zone) that the platform received from this terminal."""
        self.terminal(terminal_id)  # PlatformError if it is not registered
        first = dt.datetime.combine(day, dt.time(0), tzinfo=self.tz)
        nxt = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=self.tz)
        marks = ",".join("?" * len(st.MONEY_OUTCOMES))
        rows = self.conn.execute(
            f"SELECT seq, time, kind, detail FROM events WHERE terminal_id = ? AND kind IN ({marks}) "
            "AND time >= ? AND time < ? ORDER BY seq",
            (terminal_id, *st.MONEY_OUTCOMES, p.format_time(first), p.format_time(nxt)),
        ).fetchall()
        return [st.Record(seq, p.parse_time(t, "event time"), k, json.loads(d)) for seq, t, k, d in rows]

    def settlement(self, terminal_id: str, day: dt.date) -> str:
        """The Z report of one till for one day, from what the platform received: the same totals as the till's
        `onecard terminal report --day` for the records both hold, and what the platform has not received."""
        records = self.settlement_records(terminal_id, day)
        totals = st.settle(records)
        t = self.terminal(terminal_id)
        lines = [f"Z report (platform): terminal {terminal_id}, {day.isoformat()} ({self.tz.key})"]
        lines += st.format_totals(totals)
        lines.append(f"received up to seq {t['contiguous_seq']}")
        head = (t["heartbeat"] or {}).get("head_seq")
        if isinstance(head, int) and head > t["contiguous_seq"]:
            lines.append(
                f"not yet received: seq {t['contiguous_seq'] + 1}-{head} (the terminal's last heartbeat); "
                "their sales are missing above"
            )
        marks = ",".join("?" * len(totals.seqs)) or "NULL"
        held = self.conn.execute(
            f"SELECT count(*) FROM held_money WHERE terminal_id = ? AND seq IN ({marks}) AND status IN ('waiting', "
            "'held')",
            (terminal_id, *totals.seqs),
        ).fetchone()[0]
        if held:
            lines.append(f"of these, {held} record(s) not accounted to the cards (onecard platform held)")
        return "\n".join(lines)

    def _publish_meal_usage(self, terminal_id: str, after_seq: int, upto_seq: int) -> None:
        """Queue, for the enterprise's tills, the confirmed usage of every (card, service day) that the sales just
        received from this till touched (docs/sync-protocol.md "Meal usage across tills"). In the ingest's
        transaction, so the figures and the records that made them are committed together. JSON details are read
        in Python (the same on SQLite and PostgreSQL)."""
        touched: dict[str, list[str]] = {}
        for asn, detail in self.conn.execute(
            "SELECT asn, detail FROM events WHERE terminal_id = ? AND seq > ? AND seq <= ? "
            "AND kind IN ('pos.purchase', 'pos.undo') AND asn IS NOT NULL ORDER BY seq",
            (terminal_id, after_seq, upto_seq),
        ).fetchall():
            day = json.loads(detail).get("service_day")
            if isinstance(day, str) and asn not in touched.setdefault(day, []):
                touched[day].append(asn)
        if not touched:
            return
        enterprise = self.terminal_enterprise(terminal_id)
        for day, asns in sorted(touched.items()):
            rows: list[dict] = []
            for asn in asns:
                usage = self.meal_usage(enterprise, asn, day)
                rows += usage or [{"asn": asn, "terminal_id": terminal_id, "period": "", "count": 0, "amount": 0}]
                if len(rows) >= p.MAX_MEAL_USAGE_ROWS - 100:
                    self._queue_meal_usage(enterprise, day, rows)
                    rows = []
            if rows:
                self._queue_meal_usage(enterprise, day, rows)

    def _queue_meal_usage(self, enterprise: str, day: str, rows: list[dict]) -> None:
        body = {"enterprise_id": enterprise, "day": day, "usage": rows}
        self._queue(p.enterprise_topic(enterprise), self.seal("meal_usage", f"e:{enterprise}", body))

    def meal_usage(self, enterprise_id: str, asn: str, day: str) -> list[dict]:
        """A card's sales on service day `day` at each of the enterprise's tills, by meal period, net of undone
        sales: the rows of a meal_usage message. A service day spans at most its date and the next morning, so
        only events from the day before to two days after are read."""
        first = dt.datetime.combine(
            dt.date.fromisoformat(day) - dt.timedelta(days=1), dt.time(0), tzinfo=dt.timezone.utc
        )
        sales: dict[tuple[str, int], tuple[str, int]] = {}
        undone: set[tuple[str, int]] = set()
        for tid, seq, kind, detail in self.conn.execute(
            "SELECT e.terminal_id, e.seq, e.kind, e.detail FROM events e JOIN terminals t ON t.terminal_id = "
            "e.terminal_id WHERE t.enterprise_id = ? AND e.asn = ? AND e.kind IN ('pos.purchase', 'pos.undo') "
            "AND e.time >= ? AND e.time < ? ORDER BY e.terminal_id, e.seq",
            (enterprise_id, asn, p.format_time(first), p.format_time(first + dt.timedelta(days=4))),
        ).fetchall():
            d = json.loads(detail)
            if d.get("service_day") != day:
                continue
            if kind == "pos.purchase":
                sales[(tid, seq)] = (d.get("meal_period") or "", d["amount"])
            else:
                undone.add((tid, d["purchase_seq"]))
        totals: dict[tuple[str, str], list[int]] = {}
        for (tid, seq), (period, amount) in sales.items():
            if (tid, seq) in undone:
                continue
            row = totals.setdefault((tid, period), [0, 0])
            row[0] += 1
            row[1] += amount
        return [
            {"asn": asn, "terminal_id": tid, "period": period, "count": count, "amount": amount}
            for (tid, period), (count, amount) in sorted(totals.items())
        ]
