"""The holder's monthly bills (attendance and spending) as SMS text.

A part of `central.store.Platform`: it works on the platform database through `self.conn` and `self._txn()`.
"""

from __future__ import annotations

import datetime as dt

from central.db import ACTIVE, LOST, PlatformError, _yuan
from common import sync_protocol as p


class Bills:
    def attendance_bill(self, enterprise_id: str, employee_no: str, month: str) -> str:
        """The SMS text of an employee's monthly attendance bill, from ingested attendance events."""
        holder_id, name, _ = self._holder(enterprise_id, employee_no)
        try:
            first = dt.datetime.strptime(month, "%Y-%m").replace(tzinfo=self.tz)
        except ValueError:
            raise PlatformError(f"month {month!r} is not YYYY-MM; write e.g. 2026-11") from None
        nxt = (first + dt.timedelta(days=32)).replace(day=1)
        asns = [r[0] for r in self.conn.execute("SELECT asn FROM cards WHERE holder_id = ?", (holder_id,))]
        days: dict[dt.date, dict[str, dt.datetime]] = {}
        lo, hi = p.format_time(first), p.format_time(nxt)
        for asn in asns:
            for kind, time in self.conn.execute(
                "SELECT kind, time FROM events WHERE asn = ? AND kind IN ('attendance.in', 'attendance.out') "
                "AND time >= ? AND time < ?",
                (asn, lo, hi),
            ):
                local = p.parse_time(time, "event time").astimezone(self.tz)
                d = days.setdefault(local.date(), {})
                if kind == "attendance.in":
                    d["in"] = min(d.get("in", local), local)
                else:
                    d["out"] = max(d.get("out", local), local)
        lines = []
        for day in sorted(days):
            d = days[day]
            fmt = lambda k: d[k].strftime("%H:%M") if k in d else "--"  # noqa: E731
            lines.append(f"{day.strftime('%m-%d %a')} in {fmt('in')} out {fmt('out')}")
        body = "; ".join(lines) if lines else "no clock-in recorded"
        return f"[onecard] {name} ({employee_no}), attendance {month}: {len(days)} day(s). {body}."

    def spending_bill(self, enterprise_id: str, employee_no: str, month: str) -> str:
        """The SMS text of an employee's monthly purse bill: payments, refunds and top-ups with their TAC-checked
        amounts, the month's totals and the balance the platform holds."""
        holder_id, name, _ = self._holder(enterprise_id, employee_no)
        try:
            first = dt.datetime.strptime(month, "%Y-%m").replace(tzinfo=self.tz)
        except ValueError:
            raise PlatformError(f"month {month!r} is not YYYY-MM; write e.g. 2026-11") from None
        nxt = (first + dt.timedelta(days=32)).replace(day=1)
        rows = self.conn.execute(
            "SELECT e.time, t.kind, t.amount_cents FROM purse_transactions t JOIN events e "
            "ON e.terminal_id = t.terminal_id AND e.seq = t.seq JOIN cards c ON c.asn = t.asn "
            "WHERE c.holder_id = ? AND e.time >= ? AND e.time < ? ORDER BY e.time",
            (holder_id, p.format_time(first), p.format_time(nxt)),
        ).fetchall()
        label = {"pos.purchase": "paid", "pos.undo": "refund", "topup.load": "top-up"}
        spent = sum(a for _, k, a in rows if k == "pos.purchase") - sum(a for _, k, a in rows if k == "pos.undo")
        loaded = sum(a for _, k, a in rows if k == "topup.load")
        items = (
            "; ".join(
                f"{p.parse_time(t, 'event time').astimezone(self.tz).strftime('%m-%d %H:%M')} {label[k]} {_yuan(a)}"
                for t, k, a in rows
            )
            or "no purse transactions"
        )
        balance = sum(
            r[0]
            for r in self.conn.execute(
                "SELECT balance_cents FROM cards WHERE holder_id = ? AND status IN (?, ?)", (holder_id, ACTIVE, LOST)
            )
        )
        unchecked = self.conn.execute(
            "SELECT count(*) FROM purse_transactions t JOIN cards c ON c.asn = t.asn WHERE c.holder_id = ? AND "
            "c.status IN (?, ?) AND t.tac_status = 'unchecked'",
            (holder_id, ACTIVE, LOST),
        ).fetchone()[0]
        flag = " (UNVERIFIED: not checked against the cards' TACs)" if unchecked else ""
        return (
            f"[onecard] {name} ({employee_no}), canteen {month}: spent {_yuan(spent)} yuan, topped up "
            f"{_yuan(loaded)} yuan, balance {_yuan(balance)} yuan{flag}. {items}."
        )
