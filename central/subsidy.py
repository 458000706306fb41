"""The subsidy wallet (补助) on the platform: allowances issued per employee, their downlink to the enterprise's
terminals, and the subsidy purse's records (docs/canteen.md "Subsidy wallet", docs/card-application.md 5.6).

Accounted apart from the cash purse: `subsidy_allowances` (what the enterprise gave) and `subsidy_transactions` (what
the cards did: loads of allowances, the subsidy share of two-purse sales, withdrawals of expired subsidy), each
record stored once (ingest sees a chain record once; the key is terminal, seq and kind) with its TAC status. Nothing
here touches a card's cash balance (`cards.balance_cents`) or phone credit.

A part of `central.store.Platform`: it works on the platform database through `self.conn` and `self._txn()`.
"""

from __future__ import annotations

import datetime as dt
import logging
import re

from central.db import PlatformError, _yuan
from common import money_records as mr
from common import sync_protocol as p
from common import transactions as tx
from common.logs import log_event

log = logging.getLogger("platform")

POLICIES = ("subsidy_first", "cash_first")
_LABEL_RE = re.compile(r"[A-Za-z0-9._-]{1,40}\Z")
STREAM = {"load": "online", "purchase": "offline", "withdraw": "offline"}
TX_TYPE = {"load": tx.SUBSIDY_LOAD, "purchase": tx.SUBSIDY_PURCHASE, "withdraw": tx.SUBSIDY_WITHDRAW}


def allowance_id(label: str, employee_no: str) -> str:
    return f"{label}.{employee_no}"[:64]


class SubsidyAccounts:
    # ---- issuing -----------------------------------------------------------------------------------------------

    def issue_subsidy(
        self,
        enterprise_id: str,
        employees: list[str],
        amount_cents: int,
        expiry: dt.date,
        policy: str,
        label: str,
    ) -> list[str]:
        """One allowance per employee, named `label.EMPLOYEE` (a month `2026-11` or a one-off label): refused whole
        (PlatformError) if any employee is unknown or already has this label; then the downlink is queued."""
        if policy not in POLICIES:
            raise PlatformError(f"--policy {policy!r} is not subsidy_first or cash_first")
        if not 0 < amount_cents <= 0xFFFFFFFF:
            raise PlatformError("--amount must be above 0.00 and at most 42949672.95 yuan")
        if not _LABEL_RE.match(label):
            raise PlatformError(f"--label {label!r} must be 1-40 characters of [A-Za-z0-9._-], e.g. 2026-11")
        if expiry < self.clock().astimezone(self.tz).date():
            raise PlatformError(f"--expiry {expiry.isoformat()} is in the past; give the last day it may be spent")
        if not employees:
            raise PlatformError("no employee given: name them (--employee E, repeatable) or give --list FILE")
        with self._txn():
            ids = []
            for emp in dict.fromkeys(employees):
                row = self.conn.execute(
                    "SELECT holder_id FROM holders WHERE enterprise_id = ? AND employee_no = ?", (enterprise_id, emp)
                ).fetchone()
                if row is None:
                    raise PlatformError(
                        f"employee {emp} is not registered in enterprise {enterprise_id}; nothing issued"
                    )
                aid = allowance_id(label, emp)
                if self.conn.execute("SELECT 1 FROM subsidy_allowances WHERE allowance_id = ?", (aid,)).fetchone():
                    raise PlatformError(f"employee {emp} already has allowance {label}; nothing issued")
                self.conn.execute(
                    "INSERT INTO subsidy_allowances VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (aid, enterprise_id, emp, amount_cents, expiry.isoformat(), policy, label, self._now()),
                )
                ids.append(aid)
            self._publish_allowances(enterprise_id)
        return ids

    def subsidy_allowances_body(self, enterprise_id: str) -> dict:
        """The signed downlink's body: every allowance not yet expired, for each ACTIVE card of its employee."""
        today = self.clock().astimezone(self.tz).date().isoformat()
        rows = self.conn.execute(
            "SELECT a.allowance_id, c.asn, a.amount_cents, a.expiry, a.policy FROM subsidy_allowances a "
            "JOIN holders h ON h.enterprise_id = a.enterprise_id AND h.employee_no = a.employee_no "
            "JOIN cards c ON c.holder_id = h.holder_id AND c.status = 'ACTIVE' "
            "WHERE a.enterprise_id = ? AND a.expiry >= ? ORDER BY a.issued_at, a.allowance_id",
            (enterprise_id, today),
        ).fetchall()
        collected = {
            r[0]
            for r in self.conn.execute(
                # Collected once the card proved a load of it: a record whose TAC failed is no proof (held for
                # review), so the allowance stays on offer.
                "SELECT allowance_id FROM subsidy_transactions WHERE kind = 'load' AND allowance_id IS NOT NULL "
                "AND tac_status != 'bad'"
            ).fetchall()
        }
        return {
            "enterprise_id": enterprise_id,
            "allowances": [
                {
                    "allowance_id": a,
                    "asn": asn,
                    "amount": amt,
                    "expiry": exp,
                    "policy": pol,
                    "collected": a in collected,
                }
                for a, asn, amt, exp, pol in rows
            ],
        }

    def _publish_allowances(self, enterprise_id: str) -> None:
        body = self.subsidy_allowances_body(enterprise_id)
        self._queue(p.enterprise_topic(enterprise_id), self.seal("subsidy_allowances", f"e:{enterprise_id}", body))

    # ---- ingest ------------------------------------------------------------------------------------------------

    def _account_subsidy(self, terminal_id: str, e: p.WireEvent) -> None:
        """subsidy.load / subsidy.withdraw: stored once with its TAC status; never raises for the record's content."""
        try:
            d = mr.check_subsidy_detail(e.kind, e.detail)
        except p.ProtocolError as exc:
            self._subsidy_alarm(terminal_id, e, "malformed", str(exc))
            return
        kind = "load" if e.kind == mr.SUBSIDY_LOAD else "withdraw"
        self._store_subsidy(terminal_id, e, kind, d, d["amount"], d["counter"], d["balance_after"], d["tac"])
        if kind == "load":
            self._publish_allowances(self._terminal_facts(terminal_id)[0] or "")

    def _account_subsidy_part(self, terminal_id: str, e: p.WireEvent, d: dict) -> None:
        """The subsidy share of a two-purse pos.purchase (the cash share goes to the cash purse's accounts)."""
        if d["subsidy_amount"]:
            self._store_subsidy(
                terminal_id,
                e,
                "purchase",
                d,
                d["subsidy_amount"],
                d["subsidy_counter"],
                d["subsidy_balance_after"],
                d["subsidy_tac"],
            )

    def _store_subsidy(self, terminal_id, e, kind, d, amount, counter, balance_after, tac) -> None:
        enterprise = self._terminal_facts(terminal_id)[0]
        status = self._check_subsidy_tac(terminal_id, enterprise, e, d, kind, amount, counter, balance_after, tac)
        dup = self.conn.execute(
            "SELECT terminal_id, seq FROM subsidy_transactions WHERE asn = ? AND stream = ? AND counter = ? AND "
            "tac_status != 'bad'",
            (e.asn, STREAM[kind], counter),
        ).fetchone()
        if dup is not None and status != "bad":
            status = "duplicate"  # the same counter twice: a cloned card or a replayed record; kept as evidence
        self.conn.execute(
            "INSERT INTO subsidy_transactions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                terminal_id,
                e.seq,
                e.asn,
                kind,
                STREAM[kind],
                counter,
                amount,
                balance_after,
                tac,
                status,
                d.get("allowance_id"),
                self._now(),
            ),
        )
        if status in ("bad", "duplicate", "no_keys"):
            self._subsidy_alarm(terminal_id, e, status, f"subsidy {kind} of {_yuan(amount)} yuan not accounted")

    def _check_subsidy_tac(self, terminal_id, enterprise, e, d, kind, amount, counter, balance_after, tac) -> str:
        if self.tac_sam is None:
            return "unchecked" if self.unverified_money else "no_keys"
        from sam.interface import Algorithm, CardIdentity, SamError

        tx_type = TX_TYPE[kind]
        if kind == "purchase" and d.get("pin_verified") is True:
            tx_type = tx.SUBSIDY_PURCHASE_WITH_PIN_TAC  # the card's TAC covers the spending-password flag (5.5)
        try:
            card = CardIdentity(
                bytes.fromhex(e.asn), bytes.fromhex(enterprise or ""), d["key_version"], Algorithm[d["algorithm"]]
            )
            self.tac_sam.verify_tac(
                card,
                amount=amount,
                tx_type=tx_type,
                terminal_id=bytes.fromhex(terminal_id),
                tsn=d.get("tsn", 0) if kind != "load" else 0,
                date=bytes.fromhex(d["date"]),
                time=bytes.fromhex(d["time"]),
                counter=counter,
                balance_after=balance_after,
                tac=bytes.fromhex(tac),
            )
        except (SamError, ValueError):
            return "bad"
        return "ok"

    def _subsidy_alarm(self, terminal_id: str, e: p.WireEvent, code: str, why: str) -> None:
        log_event(
            log,
            "platform.subsidy_held",
            logging.WARNING,
            terminal=terminal_id,
            seq=e.seq,
            asn=e.asn,
            reason=code,
            msg=why,
        )

    # ---- the ledger of one card, and replacement ------------------------------------------------------------------

    def subsidy_ledger(self, asn: str) -> tuple[int, str | None]:
        """(balance in fen, expiry YYYY-MM-DD or None) of a card's subsidy purse as the platform confirmed it: its
        TAC-verified (or lab 'unchecked') loads less its sales and withdrawals, plus what a replacement carried onto
        it, less what a replacement carried (or let lapse) from it. The expiry is the latest of the allowances it
        collected and of what was carried onto it; None while the balance is not above 0."""
        sums = dict(
            self.conn.execute(
                "SELECT kind, sum(amount_cents) FROM subsidy_transactions WHERE asn = ? "
                "AND tac_status IN ('ok', 'unchecked') GROUP BY kind",
                (asn,),
            ).fetchall()
        )
        carried_in, in_expiry = self.conn.execute(
            "SELECT coalesce(sum(amount_cents), 0), max(expiry) FROM subsidy_carried WHERE new_asn = ? AND lapsed = 0",
            (asn,),
        ).fetchone()
        (carried_out,) = self.conn.execute(
            "SELECT coalesce(sum(amount_cents), 0) FROM subsidy_carried WHERE old_asn = ?", (asn,)
        ).fetchone()
        balance = int(sums.get("load") or 0) - int(sums.get("purchase") or 0) - int(sums.get("withdraw") or 0)
        balance += int(carried_in) - int(carried_out)
        if balance <= 0:
            return balance, None
        (load_expiry,) = self.conn.execute(
            "SELECT max(a.expiry) FROM subsidy_transactions t JOIN subsidy_allowances a USING (allowance_id) "
            "WHERE t.asn = ? AND t.kind = 'load' AND t.tac_status IN ('ok', 'unchecked')",
            (asn,),
        ).fetchone()
        expiries = [e for e in (load_expiry, in_expiry) if e]
        return balance, max(expiries) if expiries else None

    def _carry_subsidy(self, old_asn: str, new_asn: str, enterprise_id: str) -> str:
        """Within `replace`'s transaction: the old card's subsidy ledger balance moves to the new card (lapses when
        its expiry is past), and the allowances it had not collected are announced for the new card (the downlink
        names each holder's ACTIVE cards). Returns the history text."""
        balance, expiry = self.subsidy_ledger(old_asn)
        text = ""
        if balance > 0:
            today = self.clock().astimezone(self.tz).date().isoformat()
            lapsed = expiry is None or expiry < today
            self.conn.execute(
                "INSERT INTO subsidy_carried VALUES (?, ?, ?, ?, ?, ?)",
                (old_asn, new_asn, balance, expiry, int(lapsed), self._now()),
            )
            text = (
                f", subsidy {_yuan(balance)} yuan lapsed (expired {expiry})"
                if lapsed
                else f", subsidy {_yuan(balance)} yuan (until {expiry}) moved"
            )
        if self.conn.execute(
            "SELECT 1 FROM subsidy_allowances WHERE enterprise_id = ? LIMIT 1", (enterprise_id,)
        ).fetchone():
            self._publish_allowances(enterprise_id)  # an enterprise without allowances has nothing to announce
        return text

    # ---- reports -------------------------------------------------------------------------------------------------

    def subsidy_list(self, enterprise_id: str) -> list[dict]:
        """Each allowance with what became of it: pending, collected (by which terminal and seq), expired."""
        today = self.clock().astimezone(self.tz).date().isoformat()
        out = []
        for aid, emp, amount, expiry, policy, label in self.conn.execute(
            "SELECT allowance_id, employee_no, amount_cents, expiry, policy, label FROM subsidy_allowances "
            "WHERE enterprise_id = ? ORDER BY issued_at, allowance_id",
            (enterprise_id,),
        ).fetchall():
            load = self.conn.execute(
                "SELECT terminal_id, seq, tac_status FROM subsidy_transactions "
                "WHERE kind = 'load' AND allowance_id = ?",
                (aid,),
            ).fetchone()
            state = "collected" if load else ("expired" if expiry < today else "pending")
            out.append(
                {
                    "allowance_id": aid,
                    "employee_no": emp,
                    "amount_cents": amount,
                    "expiry": expiry,
                    "policy": policy,
                    "label": label,
                    "state": state,
                    "collected_at": None if load is None else f"{load[0]}#{load[1]}",
                    "tac_status": None if load is None else load[2],
                }
            )
        return out

    def subsidy_report(self, enterprise_id: str) -> dict[str, int]:
        """Totals in fen of what was issued, collected onto cards, spent and withdrawn (TAC-verified or lab
        'unchecked' records only), and what is outstanding on the cards (collected - spent - withdrawn)."""
        issued = self.conn.execute(
            "SELECT coalesce(sum(amount_cents), 0) FROM subsidy_allowances WHERE enterprise_id = ?", (enterprise_id,)
        ).fetchone()[0]
        sums = dict(
            self.conn.execute(
                "SELECT t.kind, sum(t.amount_cents) FROM subsidy_transactions t JOIN cards c ON c.asn = t.asn "
                "WHERE c.enterprise_id = ? AND t.tac_status IN ('ok', 'unchecked') GROUP BY t.kind",
                (enterprise_id,),
            ).fetchall()
        )
        collected, spent, withdrawn = (int(sums.get(k) or 0) for k in ("load", "purchase", "withdraw"))
        carried, lapsed = (
            int(v)
            for v in self.conn.execute(
                "SELECT coalesce(sum(CASE WHEN s.lapsed = 0 THEN s.amount_cents ELSE 0 END), 0), "
                "coalesce(sum(CASE WHEN s.lapsed = 1 THEN s.amount_cents ELSE 0 END), 0) "
                "FROM subsidy_carried s JOIN cards c ON c.asn = s.old_asn WHERE c.enterprise_id = ?",
                (enterprise_id,),
            ).fetchone()
        )
        return {
            "issued": int(issued),
            "collected": collected,
            "spent": spent,
            "withdrawn": withdrawn,
            # moved from replaced cards to their new cards (stays on the cards), and lapsed there (expired)
            "carried": carried,
            "lapsed": lapsed,
            "on_cards": collected - spent - withdrawn - lapsed,
        }
