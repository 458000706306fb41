"""The subsidy wallet (补助) on the platform: allowances issued per employee, their downlink to the enterprise's
terminals, and the subsidy purse's records (docs/canteen.md "Subsidy wallet", docs/card-application.md 5.6).

Accounted apart from the cash purse: `subsidy_allowances` (what the enterprise gave) and `subsidy_transactions` (what
the cards did: loads of allowances, the subsidy share of two-purse sales, withdrawals of expired subsidy), each
record stored once (ingest sees a chain record once; the key is terminal, seq and kind) with its TAC status.

Each allowance has a per-card number (1, 2, 3 ... per employee of the enterprise, in issue order, never reused): the
card loads an allowance only above the last number it loaded (card-application.md 5.6), and a load's TAC covers the
number, so two records of one allowance are never both valid (the second is held as `duplicate`, one whose number
is not its allowance's as `mismatch`). An allowance still uncollected when the card loads a later one can never be
collected: it is marked lapsed and its amount goes back to the enterprise (subsidy_report's `lapsed`). Nothing
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
# refund: the subsidy share of an undone two-purse sale given back, a subsidy load with allowance number 0
STREAM = {"load": "online", "purchase": "offline", "withdraw": "offline", "refund": "online"}
TX_TYPE = {
    "load": tx.SUBSIDY_LOAD,
    "purchase": tx.SUBSIDY_PURCHASE,
    "withdraw": tx.SUBSIDY_WITHDRAW,
    "refund": tx.SUBSIDY_LOAD,
}
KIND = {mr.SUBSIDY_LOAD: "load", mr.SUBSIDY_WITHDRAW: "withdraw", mr.SUBSIDY_REFUND: "refund"}


MAX_NUMBER = 0xFFFF  # the card keeps the last allowance number in 2 bytes (FCI tag CA)
# A load record that proves its allowance: not refused by its TAC, nor by its number (held for review otherwise).
_PROVEN = "tac_status NOT IN ('bad', 'mismatch')"


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
                number = self.conn.execute(
                    "SELECT coalesce(max(number), 0) + 1 FROM subsidy_allowances "
                    "WHERE enterprise_id = ? AND employee_no = ?",
                    (enterprise_id, emp),
                ).fetchone()[0]
                if number > MAX_NUMBER:
                    raise PlatformError(
                        f"employee {emp} already has {MAX_NUMBER} allowances, as many as a card can number; "
                        "nothing issued"
                    )
                self.conn.execute(
                    "INSERT INTO subsidy_allowances (allowance_id, enterprise_id, employee_no, amount_cents, expiry, "
                    "policy, label, issued_at, number) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (aid, enterprise_id, emp, amount_cents, expiry.isoformat(), policy, label, self._now(), number),
                )
                ids.append(aid)
            self._publish_allowances(enterprise_id)
        return ids

    def subsidy_allowances_body(self, enterprise_id: str) -> dict:
        """The signed downlink's body: every allowance not yet expired nor lapsed, for each ACTIVE card of its
        employee, with its number."""
        today = self.clock().astimezone(self.tz).date().isoformat()
        rows = self.conn.execute(
            "SELECT a.allowance_id, c.asn, a.number, a.amount_cents, a.expiry, a.policy FROM subsidy_allowances a "
            "JOIN holders h ON h.enterprise_id = a.enterprise_id AND h.employee_no = a.employee_no "
            "JOIN cards c ON c.holder_id = h.holder_id AND c.status = 'ACTIVE' "
            "WHERE a.enterprise_id = ? AND a.expiry >= ? AND a.lapsed_at IS NULL ORDER BY a.number, a.allowance_id",
            (enterprise_id, today),
        ).fetchall()
        collected = {
            r[0]
            for r in self.conn.execute(
                # Collected once the card proved a load of it: a record whose TAC failed, or whose number is not its
                # allowance's, is no proof (held for review), so the allowance stays on offer.
                "SELECT allowance_id FROM subsidy_transactions WHERE kind = 'load' AND allowance_id IS NOT NULL "
                f"AND {_PROVEN}"
            ).fetchall()
        }
        return {
            "enterprise_id": enterprise_id,
            "allowances": [
                {
                    "allowance_id": a,
                    "asn": asn,
                    "number": number,
                    "amount": amt,
                    "expiry": exp,
                    "policy": pol,
                    "collected": a in collected,
                }
                for a, asn, number, amt, exp, pol in rows
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
        kind = KIND[e.kind]
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
        allowance = None
        if kind == "load" and status != "bad":
            allowance = self._allowance_of_load(enterprise, e.asn, d)
            if allowance is None:
                status = "mismatch"  # not this card's allowance, or another number than the one the TAC covers
            elif status != "duplicate" and self._collected_by(d["allowance_id"]) is not None:
                status = "duplicate"  # a second load of one allowance: the card refuses it, so this is no card's
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
        if status in ("bad", "duplicate", "no_keys", "mismatch"):
            self._subsidy_alarm(terminal_id, e, status, f"subsidy {kind} of {_yuan(amount)} yuan not accounted")
        if allowance is not None and status in ("ok", "unchecked"):
            self._lapse_skipped(allowance)

    def _allowance_of_load(self, enterprise: str | None, asn: str, d: dict) -> tuple[str, str, int] | None:
        """(enterprise, employee, number) of the allowance a load record names, if it is one of this card's
        holder's and carries its number; None otherwise."""
        row = self.conn.execute(
            "SELECT a.enterprise_id, a.employee_no, a.number FROM subsidy_allowances a "
            "JOIN holders h ON h.enterprise_id = a.enterprise_id AND h.employee_no = a.employee_no "
            "JOIN cards c ON c.holder_id = h.holder_id "
            "WHERE a.allowance_id = ? AND a.enterprise_id = ? AND c.asn = ?",
            (d["allowance_id"], enterprise or "", asn),
        ).fetchone()
        if row is None or row[2] != d["allowance_no"] or d["amount"] != self._allowance_amount(d["allowance_id"]):
            return None
        return (row[0], row[1], row[2])

    def _allowance_amount(self, aid: str) -> int:
        return int(
            self.conn.execute("SELECT amount_cents FROM subsidy_allowances WHERE allowance_id = ?", (aid,)).fetchone()[
                0
            ]
        )

    def _collected_by(self, aid: str) -> tuple[str, int] | None:
        row = self.conn.execute(
            f"SELECT terminal_id, seq FROM subsidy_transactions WHERE kind = 'load' AND allowance_id = ? AND {_PROVEN}",
            (aid,),
        ).fetchone()
        return None if row is None else (row[0], int(row[1]))

    def _lapse_skipped(self, allowance: tuple[str, str, int]) -> None:
        """The card loaded allowance `number`: any earlier one of its holder still uncollected can never be loaded
        (the card refuses a number not above its last one); it lapses, its amount back to the enterprise."""
        enterprise, employee, number = allowance
        for (aid,) in self.conn.execute(
            "SELECT allowance_id FROM subsidy_allowances WHERE enterprise_id = ? AND employee_no = ? AND number < ? "
            "AND lapsed_at IS NULL ORDER BY number",
            (enterprise, employee, number),
        ).fetchall():
            if self._collected_by(aid) is None:
                self.conn.execute(
                    "UPDATE subsidy_allowances SET lapsed_at = ? WHERE allowance_id = ?", (self._now(), aid)
                )
                log_event(
                    log,
                    "platform.subsidy_lapsed",
                    logging.INFO,
                    allowance=aid,
                    msg="allowance skipped by a later one the card loaded: lapsed, back to the enterprise",
                )

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
                # a load's TSN field carries its allowance number, a refund's 0 (card-application.md 5.6)
                tsn=d["allowance_no"] if kind == "load" else 0 if kind == "refund" else d.get("tsn", 0),
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
        it, less what a replacement carried (or let lapse) from it and what its cancellation returned to the
        enterprise. The expiry is the latest of the allowances it
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
        (returned,) = self.conn.execute(
            "SELECT coalesce(sum(amount_cents), 0) FROM subsidy_returned WHERE asn = ?", (asn,)
        ).fetchone()
        balance = int(sums.get("load") or 0) - int(sums.get("purchase") or 0) - int(sums.get("withdraw") or 0)
        balance += int(sums.get("refund") or 0)  # subsidy shares of undone two-purse sales
        balance += int(carried_in) - int(carried_out) - int(returned)
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

    def subsidy_known(self, asn: str) -> bool:
        """Whether the platform knows of a subsidy purse on the card: a subsidy record of it, or a subsidy a
        replacement carried onto it (an over-the-air void then proves it: APPLICATION BLOCK P1 01)."""
        return (
            self.conn.execute(
                "SELECT 1 FROM subsidy_transactions WHERE asn = ?1 UNION ALL "
                "SELECT 1 FROM subsidy_carried WHERE new_asn = ?1 LIMIT 1",
                (asn.upper(),),
            ).fetchone()
            is not None
        )

    def _return_subsidy(self, asn: str) -> int:
        """Within `cancel`'s transaction: the card's subsidy ledger balance goes back to the enterprise (recorded
        `returned`, never refunded in cash: the purses are not interchangeable). Returns the amount in fen (0: none;
        a second cancellation finds the ledger at 0 and returns nothing)."""
        balance, expiry = self.subsidy_ledger(asn)
        if balance <= 0:
            return 0
        self.conn.execute("INSERT INTO subsidy_returned VALUES (?, ?, ?, ?)", (asn, balance, expiry, self._now()))
        return balance

    # ---- reports -------------------------------------------------------------------------------------------------

    def subsidy_list(self, enterprise_id: str) -> list[dict]:
        """Each allowance with what became of it: pending, collected (by which terminal and seq), expired."""
        today = self.clock().astimezone(self.tz).date().isoformat()
        out = []
        for aid, emp, amount, expiry, policy, label, number, lapsed in self.conn.execute(
            "SELECT allowance_id, employee_no, amount_cents, expiry, policy, label, number, lapsed_at "
            "FROM subsidy_allowances WHERE enterprise_id = ? ORDER BY issued_at, number, allowance_id",
            (enterprise_id,),
        ).fetchall():
            load = self.conn.execute(
                "SELECT terminal_id, seq, tac_status FROM subsidy_transactions "
                f"WHERE kind = 'load' AND allowance_id = ? AND {_PROVEN} ORDER BY tac_status = 'duplicate', seq",
                (aid,),
            ).fetchone()
            state = "collected" if load else "lapsed" if lapsed else ("expired" if expiry < today else "pending")
            out.append(
                {
                    "allowance_id": aid,
                    "number": number,
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
        'unchecked' records only), carried and lapsed at replacements, returned to the enterprise at cancellations,
        and what is outstanding on the cards (collected - spent + refunded - withdrawn - lapsed - returned)."""
        issued, skipped = self.conn.execute(
            "SELECT coalesce(sum(amount_cents), 0), "
            "coalesce(sum(CASE WHEN lapsed_at IS NULL THEN 0 ELSE amount_cents END), 0) "
            "FROM subsidy_allowances WHERE enterprise_id = ?",
            (enterprise_id,),
        ).fetchone()
        sums = dict(
            self.conn.execute(
                "SELECT t.kind, sum(t.amount_cents) FROM subsidy_transactions t JOIN cards c ON c.asn = t.asn "
                "WHERE c.enterprise_id = ? AND t.tac_status IN ('ok', 'unchecked') GROUP BY t.kind",
                (enterprise_id,),
            ).fetchall()
        )
        collected, spent, withdrawn, refunded = (
            int(sums.get(k) or 0) for k in ("load", "purchase", "withdraw", "refund")
        )
        carried, lapsed = (
            int(v)
            for v in self.conn.execute(
                "SELECT coalesce(sum(CASE WHEN s.lapsed = 0 THEN s.amount_cents ELSE 0 END), 0), "
                "coalesce(sum(CASE WHEN s.lapsed = 1 THEN s.amount_cents ELSE 0 END), 0) "
                "FROM subsidy_carried s JOIN cards c ON c.asn = s.old_asn WHERE c.enterprise_id = ?",
                (enterprise_id,),
            ).fetchone()
        )
        (returned,) = self.conn.execute(
            "SELECT coalesce(sum(r.amount_cents), 0) FROM subsidy_returned r JOIN cards c ON c.asn = r.asn "
            "WHERE c.enterprise_id = ?",
            (enterprise_id,),
        ).fetchone()
        return {
            "issued": int(issued),
            "collected": collected,
            "spent": spent,
            "withdrawn": withdrawn,
            "refunded": refunded,  # subsidy shares of undone two-purse sales, given back to the subsidy purse
            # moved from replaced cards to their new cards (stays on the cards), and lapsed there (expired)
            "carried": carried,
            "lapsed": lapsed,
            # given back to the enterprise when a card holding it was cancelled (never paid out in cash)
            "returned": int(returned),
            "on_cards": collected - spent + refunded - withdrawn - lapsed - int(returned),
            # allowances skipped by a later one the card loaded (never collectable): back to the enterprise
            "allowances_lapsed": int(skipped),
        }
