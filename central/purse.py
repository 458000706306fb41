"""Purse accounting: a completed purse transaction moves a card's balance once, and only when it is believable.

A money record (docs/sync-protocol.md "Money records") is accounted when its detail passes the shared schema
(common/money_records.py), it comes from a terminal kind that handles money (pos, top-up), its TAC verifies (or the
platform runs in the explicit lab mode), and it continues the card's history: its counter is the next of its
counter (purchase or load) and its balance before equals the balance the platform holds. Anything else is not
accounted; it goes into `held_money` with its reason and an alarm:

- status `waiting`: an earlier record is missing (a counter gap, or a balance the other counter's missing record
  would explain, e.g. an offline POS not yet uploaded). It is accounted by itself when the records before it arrive.
- status `held`: a contradiction (duplicate or conflicting counter, counter behind the history, bad TAC, wrong
  terminal kind, malformed detail, unknown card, no TAC keys). Only an administrator resolves it
  (`onecard platform resolve-held ID --account|--reject --note ...`), after investigation; the row stays as evidence.

A part of `central.store.Platform`: it works on the platform database through `self.conn` and `self._txn()`.
"""

from __future__ import annotations

import json
import logging

from central.db import PlatformError, _yuan
from central.sql import add_to_balances, insert_rows
from common import money_records as mr
from common import sync_protocol as p
from common import transactions as tx
from common.logs import log_event

log = logging.getLogger("platform")

WAITING, HELD, ACCOUNTED, REJECTED = "waiting", "held", "accounted", "rejected"
_HELD_KEYS = (
    "id",
    "terminal_id",
    "seq",
    "asn",
    "kind",
    "counter",
    "amount_cents",
    "balance_after_cents",
    "tac_status",
    "reason_code",
    "reason",
    "status",
    "held_at",
    "resolved_at",
    "resolution",
)


class _Purse:
    """A card as one batch's ingest holds it: enterprise, balance, last counter of each stream, balance change not
    yet written."""

    __slots__ = ("enterprise", "balance", "last", "delta")

    def __init__(self, enterprise: str, balance: int) -> None:
        self.enterprise, self.balance, self.delta = enterprise, balance, 0
        self.last: dict[str, int] = {}


class PurseAccounts:
    def _account(self, terminal_id: str, e: p.WireEvent) -> None:
        """A money record, seen exactly once (this runs only for a new record of the chain): account it, or hold
        it with its reason. Never raises for the record's content: the chain moves on either way."""
        try:
            d = mr.check_money_detail(e.kind, e.detail)
        except p.ProtocolError as exc:
            self._hold(terminal_id, e, None, "unchecked", HELD, "malformed", f"refused as a protocol error: {exc}")
            return
        if "subsidy_amount" in d:
            # A two-purse sale (docs/card-application.md 5.6): its subsidy share goes to the subsidy accounts
            # (central/subsidy.py), its cash share, if any, is an ordinary purchase of the cash purse.
            self._account_subsidy_part(terminal_id, e, d)
            subsidy, cash = mr.two_purse_parts(d)
            if cash == 0:
                return
            d = {k: v for k, v in d.items() if k not in mr.TWO_PURSE_FIELDS} | {"amount": cash}
        enterprise, kind = self._terminal_facts(terminal_id)
        if kind not in mr.ACCOUNTING_KINDS[e.kind]:
            what = (
                f"a {kind} terminal cannot {e.kind}"
                if kind
                else f"terminal {terminal_id} has no registered kind (set it: add-terminal {terminal_id} --kind ...)"
            )
            self._hold(
                terminal_id,
                e,
                d,
                "unchecked",
                HELD,
                "terminal_kind",
                f"{what}: only {', '.join(mr.ACCOUNTING_KINDS[e.kind])} terminals' {e.kind} records are accounted",
            )
            return
        batch = getattr(self, "_purse_batch", None)
        if batch and e.asn in batch:
            card: tuple | None = (batch[e.asn].enterprise,)
        else:
            card = self.conn.execute("SELECT enterprise_id FROM cards WHERE asn = ?", (e.asn,)).fetchone()
        if card is None or card[0] != enterprise:
            self._hold(
                terminal_id,
                e,
                d,
                "unchecked",
                HELD,
                "unknown_card",
                f"card {e.asn} is not registered in enterprise {enterprise}",
            )
            return
        status = self._check_tac(terminal_id, e, d)
        if status == "bad":
            self._hold(terminal_id, e, d, status, HELD, "bad_tac", "its TAC does not verify: forged or altered")
            return
        if status == "no_keys":
            self._hold(
                terminal_id,
                e,
                d,
                "unchecked",
                HELD,
                "no_tac_keys",
                "the platform has no TAC keys to verify it (serve with --tac-keystore)",
            )
            return
        if self._book_continuing(terminal_id, e, d, status):
            return
        verdict = self._placement(e.asn, e.kind, d)
        if verdict is None:
            self._book(terminal_id, e.seq, e.asn, e.kind, d, status)
            self._release_waiting(e.asn)
        else:
            self._hold(terminal_id, e, d, status, *verdict)

    # ---- one batch's cards, read once (Ingest.ingest opens and closes it) ---------------------------------------
    #
    # The common money record simply continues its card's history: the next counter of its stream, the balance
    # before equal to the platform's, no record of the card waiting. Checking that one record at a time costs about
    # seven statements (on PostgreSQL, seven round trips); a batch's cards are read instead in three statements
    # when the batch starts, the continuing records are booked against that copy, and their rows and balance
    # changes are written together before the batch's transaction ends. Anything else (a card the copy does not
    # hold, a waiting record, a counter that is not the next one, a balance gap) writes what the copy holds so far,
    # drops the card from the copy, and takes the record-at-a-time path above, which decides as it always has.
    # The copy is read and written inside the batch's one transaction (SQLite: the only writer; PostgreSQL:
    # SERIALIZABLE), so it is what the database holds for that transaction.

    def _open_purse_batch(self, events: list[p.WireEvent], contiguous: int) -> None:
        asns = sorted({e.asn for e in events if e.seq > contiguous and e.kind in mr.MONEY_SIGN and e.asn})
        self._purse_batch: dict[str, _Purse] | None = None
        self._purse_rows: list[tuple] = []
        if not asns:
            return
        batch: dict[str, _Purse] = {}
        for i in range(0, len(asns), 500):  # SQLite's default limit is far above 500 parameters
            chunk = asns[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(
                f"SELECT 'card', asn, enterprise_id, balance_cents FROM cards WHERE asn IN ({marks}) "
                f"UNION ALL SELECT 'last', asn, kind, max(counter) FROM purse_transactions WHERE asn IN ({marks}) "
                "GROUP BY asn, kind "
                "UNION ALL SELECT DISTINCT 'waiting', asn, CAST(NULL AS TEXT), CAST(NULL AS INTEGER) FROM held_money "
                f"WHERE asn IN ({marks}) AND status = 'waiting'",
                chunk * 3,
            ).fetchall()
            waiting = set()
            for what, asn, text, number in rows:
                if what == "card":
                    batch[asn] = _Purse(text, number)
                elif what == "waiting":
                    waiting.add(asn)
            for what, asn, kind, last in rows:
                if what == "last" and asn in batch and kind in mr.COUNTER:
                    stream = mr.COUNTER[kind]
                    known = batch[asn].last.get(stream)
                    batch[asn].last[stream] = last if known is None else max(known, last)
            for asn in waiting:  # a waiting record may now continue: the record-at-a-time path releases it
                batch.pop(asn, None)
        self._purse_batch = batch

    def _book_continuing(self, terminal_id: str, e: p.WireEvent, d: dict, tac_status: str) -> bool:
        """Book the record from the batch's copy if it simply continues its card's history (True); else write the
        copy out, drop the card from it and answer False (the caller checks the record against the database)."""
        batch = getattr(self, "_purse_batch", None)
        purse = batch.get(e.asn) if batch else None
        if purse is None:
            self._flush_purse_batch()
            return False
        stream = mr.COUNTER[e.kind]
        last = purse.last.get(stream)
        if (last is not None and d["counter"] != last + 1) or mr.balance_before(e.kind, d) != purse.balance:
            self._flush_purse_batch()
            del batch[e.asn]
            return False
        self._purse_rows.append(
            (terminal_id, e.seq, e.asn, e.kind, d["counter"], d["amount"], d["balance_after"], d["tac"], tac_status)
        )
        purse.last[stream] = d["counter"]
        purse.balance += mr.MONEY_SIGN[e.kind] * d["amount"]
        purse.delta += mr.MONEY_SIGN[e.kind] * d["amount"]
        if d.get("action_id"):
            self._action_done(e.asn, d["action_id"])
        return True

    def _flush_purse_batch(self) -> None:
        """Write the records booked from the batch's copy and its cards' balance changes."""
        rows = getattr(self, "_purse_rows", None)
        if not rows:
            return
        insert_rows(self.conn, "purse_transactions", rows)
        add_to_balances(self.conn, [(purse.delta, asn) for asn, purse in self._purse_batch.items() if purse.delta])
        for purse in self._purse_batch.values():
            purse.delta = 0
        self._purse_rows = []

    def _close_purse_batch(self) -> None:
        self._flush_purse_batch()
        self._purse_batch = None
        self._purse_rows = []

    def _placement(self, asn: str, kind: str, d: dict, exclude_id: int | None = None) -> tuple | None:
        """None if the record continues the card's history now, else (status, reason_code, reason)."""
        stream = [k for k, s in mr.COUNTER.items() if s == mr.COUNTER[kind]]
        marks = ",".join("?" * len(stream))
        same = self.conn.execute(
            f"SELECT kind, amount_cents, balance_after_cents, tac FROM purse_transactions WHERE asn = ? "
            f"AND counter = ? AND kind IN ({marks}) "
            "UNION ALL SELECT kind, amount_cents, balance_after_cents, tac FROM held_money "
            f"WHERE asn = ? AND counter = ? AND kind IN ({marks}) AND status = 'waiting' AND id IS DISTINCT FROM ?",
            (asn, d["counter"], *stream, asn, d["counter"], *stream, exclude_id),
        ).fetchall()
        if same:
            if (kind, d["amount"], d["balance_after"], d["tac"]) in same:
                return (
                    HELD,
                    "replayed",
                    (
                        f"{mr.COUNTER[kind]} counter {d['counter']} of this card was already "
                        "uploaded with the same content: a replay"
                    ),
                )
            return (
                HELD,
                "conflicting",
                (f"{mr.COUNTER[kind]} counter {d['counter']} of this card was already used by a different record"),
            )
        last = self.conn.execute(
            f"SELECT max(counter) FROM purse_transactions WHERE asn = ? AND kind IN ({marks})", (asn, *stream)
        ).fetchone()[0]
        if last is not None and d["counter"] <= last:
            return (
                HELD,
                "counter_behind",
                (f"{mr.COUNTER[kind]} counter {d['counter']} is behind the card's history (last accounted {last})"),
            )
        if last is not None and d["counter"] > last + 1:
            return (
                WAITING,
                "counter_gap",
                (f"{mr.COUNTER[kind]} counter {d['counter']} skips {d['counter'] - last - 1} record(s) after {last}"),
            )
        balance = self.conn.execute("SELECT balance_cents FROM cards WHERE asn = ?", (asn,)).fetchone()[0]
        before = mr.balance_before(kind, d)
        if before != balance:
            return (
                WAITING,
                "balance_gap",
                (
                    f"balance before {_yuan(before)} (after {_yuan(d['balance_after'])} "
                    f"{'+' if mr.MONEY_SIGN[kind] < 0 else '-'} {_yuan(d['amount'])}) does "
                    f"not continue the platform's balance {_yuan(balance)}"
                ),
            )
        return None

    def _book(self, terminal_id: str, seq: int, asn: str, kind: str, d: dict, tac_status: str) -> None:
        self.conn.execute(
            "INSERT INTO purse_transactions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (terminal_id, seq, asn, kind, d["counter"], d["amount"], d["balance_after"], d["tac"], tac_status),
        )
        self.conn.execute(
            "UPDATE cards SET balance_cents = balance_cents + ? WHERE asn = ?", (mr.MONEY_SIGN[kind] * d["amount"], asn)
        )
        if d.get("action_id"):
            self._action_done(asn, d["action_id"])

    def _action_done(self, asn: str, action_id: str) -> None:
        """The card action a booked record carried out is done (a late cancellation is noted, not undone)."""
        row = self.conn.execute(
            "SELECT status FROM card_actions WHERE action_id = ? AND asn = ?", (action_id, asn)
        ).fetchone()
        if row is not None:
            note = "applied on the card before the cancellation reached the terminal" if row[0] == "cancelled" else None
            self.conn.execute(
                "UPDATE card_actions SET status = 'done', status_note = coalesce(?, status_note) WHERE action_id = ?",
                (note, action_id),
            )

    def _release_waiting(self, asn: str) -> None:
        """Account the waiting records of this card that now continue its history, as long as one does."""
        progress = True
        while progress:
            progress = False
            for row_id, terminal_id, seq, kind, detail, tac_status in self.conn.execute(
                "SELECT id, terminal_id, seq, kind, detail, tac_status FROM held_money WHERE asn = ? AND "
                "status = 'waiting' ORDER BY counter, id",
                (asn,),
            ).fetchall():
                d = json.loads(detail)
                verdict = self._placement(asn, kind, d, exclude_id=row_id)
                if verdict is None:
                    self._book(terminal_id, seq, asn, kind, d, tac_status)
                    self.conn.execute(
                        "UPDATE held_money SET status = ?, resolved_at = ?, resolution = ? WHERE id = ?",
                        (ACCOUNTED, self._now(), "accounted automatically: the records before it arrived", row_id),
                    )
                    log_event(
                        log,
                        "platform.money_released",
                        held=row_id,
                        terminal=terminal_id,
                        seq=seq,
                        asn=asn,
                        kind=kind,
                        text="waiting money record now continues the card's history; accounted",
                    )
                    progress = True
                    break
                if verdict[0] == HELD:  # what was a gap is now a contradiction
                    self.conn.execute(
                        "UPDATE held_money SET status = ?, reason_code = ?, reason = ? WHERE id = ?", (*verdict, row_id)
                    )
                    log_event(
                        log,
                        "platform.money_held",
                        logging.ERROR,
                        held=row_id,
                        terminal=terminal_id,
                        seq=seq,
                        asn=asn,
                        kind=kind,
                        reason_code=verdict[1],
                        text=verdict[2],
                    )

    def _hold(
        self, terminal_id: str, e: p.WireEvent, d: dict | None, tac_status: str, status: str, code: str, reason: str
    ) -> None:
        d = d or {}

        def num(key):
            v = d.get(key)
            return v if isinstance(v, int) and not isinstance(v, bool) else None

        (held_id,) = self.conn.execute(
            "INSERT INTO held_money (terminal_id, seq, asn, kind, counter, amount_cents, balance_after_cents, tac, "
            "tac_status, detail, reason_code, reason, status, held_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "?) RETURNING id",
            (
                terminal_id,
                e.seq,
                e.asn,
                e.kind,
                num("counter"),
                num("amount"),
                num("balance_after"),
                d.get("tac") if isinstance(d.get("tac"), str) else None,
                tac_status,
                e.detail,
                code,
                reason,
                status,
                self._now(),
            ),
        ).fetchone()
        log_event(
            log,
            "platform.money_held",
            logging.ERROR if status == HELD else logging.WARNING,
            held=held_id,
            terminal=terminal_id,
            seq=e.seq,
            asn=e.asn,
            kind=e.kind,
            status=status,
            reason_code=code,
            text=f"money record not accounted: {reason}; `onecard platform held` lists it",
        )

    def _check_tac(self, terminal_id: str, e: p.WireEvent, d: dict) -> str:
        if self.tac_sam is None:
            return "unchecked" if self.unverified_money else "no_keys"
        from sam.interface import Algorithm, CardIdentity, SamError

        enterprise = self._terminal_facts(terminal_id)[0]
        card = CardIdentity(
            bytes.fromhex(e.asn), bytes.fromhex(enterprise), d["key_version"], Algorithm[d["algorithm"]]
        )
        try:
            tx_type = tx.PURCHASE if e.kind == mr.PURCHASE else tx.LOAD
            if e.kind == mr.PURCHASE and d.get("pin_verified") is True:
                tx_type = tx.PURCHASE_WITH_PIN_TAC  # the card's TAC covers the spending-password flag
            self.tac_sam.verify_tac(
                card,
                amount=d["amount"],
                tx_type=tx_type,
                terminal_id=bytes.fromhex(terminal_id),
                tsn=d["tsn"] if e.kind == mr.PURCHASE else 0,
                date=bytes.fromhex(d["date"]),
                time=bytes.fromhex(d["time"]),
                counter=d["counter"],
                balance_after=d["balance_after"],
                tac=bytes.fromhex(d["tac"]),
            )
        except SamError:
            return "bad"
        return "ok"

    def purse_transactions(self, asn: str) -> list[dict]:
        rows = self.conn.execute(
            "SELECT terminal_id, seq, kind, counter, amount_cents, balance_after_cents, "
            "tac_status FROM purse_transactions WHERE asn = ? ORDER BY kind, counter",
            (asn,),
        ).fetchall()
        keys = ("terminal_id", "seq", "kind", "counter", "amount_cents", "balance_after_cents", "tac_status")
        return [dict(zip(keys, r)) for r in rows]

    def held_money(self, *, include_resolved: bool = False) -> list[dict]:
        rows = self.conn.execute(
            f"SELECT {', '.join(_HELD_KEYS)} FROM held_money WHERE ?1 OR status IN ('waiting', 'held') ORDER BY id",
            (include_resolved,),
        ).fetchall()
        return [dict(zip(_HELD_KEYS, r)) for r in rows]

    def resolve_held(self, held_id: int, decision: str, note: str) -> str:
        """An administrator's decision on a held money record after investigation: 'account' moves the balance
        (the record is booked as uploaded, its TAC status kept), 'reject' does not. The row stays as evidence."""
        if decision not in ("account", "reject"):
            raise PlatformError("decide --account or --reject")
        if not note.strip():
            raise PlatformError("say what the investigation found: --note 'TEXT' is kept with the record")
        with self._txn():
            row = self.conn.execute(
                "SELECT terminal_id, seq, asn, kind, detail, tac_status, status, reason_code "
                "FROM held_money WHERE id = ?",
                (held_id,),
            ).fetchone()
            if row is None:
                raise PlatformError(f"no held money record {held_id}; `onecard platform held` lists them")
            terminal_id, seq, asn, kind, detail, tac_status, status, code = row
            if status not in (WAITING, HELD):
                raise PlatformError(f"held money record {held_id} is already {status}; nothing changed")
            if decision == "account":
                if code == "malformed":
                    raise PlatformError(
                        f"held money record {held_id} is malformed ({kind}): it cannot be accounted; "
                        "reject it and correct the balance with the card office's refund flow"
                    )
                if self.conn.execute("SELECT 1 FROM cards WHERE asn = ?", (asn,)).fetchone() is None:
                    raise PlatformError(f"card {asn} is not registered: register it first, or reject the record")
                self._book(terminal_id, seq, asn, kind, json.loads(detail), tac_status)
            new = ACCOUNTED if decision == "account" else REJECTED
            self.conn.execute(
                "UPDATE held_money SET status = ?, resolved_at = ?, resolution = ? WHERE id = ?",
                (new, self._now(), f"by administrator: {note.strip()}", held_id),
            )
            if asn:
                self._history(
                    asn,
                    "money_" + new,
                    f"held money record {held_id} ({kind} from terminal {terminal_id} seq {seq}) {new}: {note.strip()}",
                )
            if decision == "account":
                self._release_waiting(asn)
        log_event(
            log,
            "platform.money_resolved",
            held=held_id,
            decision=new,
            asn=asn,
            text=f"held money record {held_id} {new} by an administrator",
        )
        return new
