"""Money on the card: purchase, top-up and cashier undo, each logged as an intent before the card changes.

A flow interrupted anywhere (card pulled, garbled answer, terminal killed) leaves one intent without an
outcome; the card's next tap on this terminal settles it with GET TRANSACTION PROVE before anything else,
so a debit or credit is logged exactly once with its TAC, or logged as abandoned. Nothing here guesses.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

from common import bcd
from common import journal as jn
from common import transactions as tx
from common.config import Config
from common.errors import RecordNotWritten
from common.logs import log_event
from common.money import format_yuan
from common.money_records import SALE_FIELDS as MONEY_SALE_FIELDS
from common.money_records import check_money_detail, check_subsidy_detail
from sam.interface import (
    Algorithm,
    BalanceTooLow,
    LoadSession,
    MacVerificationError,
    PurchaseSession,
    Sam,
    SamError,
    SamSwapped,
)
from sam.sam_state import StateFileError
from terminal import card_protocol as cp
from terminal import purse_protocol as pp
from terminal import spending_pin as spin
from terminal import subsidy_protocol as sp
from terminal.authenticate import select_card
from terminal.canteen import Canteen, OtherTills, no_other_tills
from terminal.decision import Decision, Refusal
from terminal.rules import BLACKLIST_MESSAGES
from terminal.subsidy_flow import SubsidySteps

log = logging.getLogger("onecard.purse")
# The POS refuses new offline sales once the unacknowledged backlog reaches this fraction of the outbox
# capacity ([sync].outbox_capacity): the rest stays for door and attendance records and for the sales already
# made, which are never dropped (compaction only removes records the platform acknowledged).
POS_REFUSE_OFFLINE_SALES_AT = 0.8

# Event kinds: an intent, then exactly one of its outcomes (the journal's table, common/journal.py).
PURCHASE, UNDO, LOAD = jn.PURCHASE.name, jn.UNDO.name, jn.LOAD.name
SUBSIDY_LOAD, SUBSIDY_WITHDRAW = jn.SUBSIDY_LOAD.name, jn.SUBSIDY_WITHDRAW.name
SUBSIDY_REFUND = jn.SUBSIDY_REFUND.name  # the subsidy share of an undone two-purse sale (card-application.md 5.6)
FLOW = {f.name: f for f in jn.MONEY_FLOWS}
RIGHTS = "card.rights"  # an access-rights change from the platform, written onto the card
# A card action the card (or this terminal's limits) refused: uploaded so the platform marks the action failed
# (docs/sync-protocol.md, "Card actions"); the terminal then stops offering it. Detail {action_id, reason_code, sw}.
ACTION_FAILED = "card_action.failed"
OPS = (PURCHASE, UNDO, LOAD, SUBSIDY_LOAD, SUBSIDY_WITHDRAW, SUBSIDY_REFUND)
MONEY_KINDS = tuple(k for f in jn.MONEY_FLOWS for k in f.kinds)
TX_TYPE = {
    PURCHASE: tx.PURCHASE,
    UNDO: tx.LOAD,
    LOAD: tx.LOAD,
    SUBSIDY_LOAD: tx.SUBSIDY_LOAD,
    SUBSIDY_WITHDRAW: tx.SUBSIDY_WITHDRAW,
    SUBSIDY_REFUND: tx.SUBSIDY_LOAD,
}
DEBITS = (PURCHASE, SUBSIDY_WITHDRAW)  # proven by a purchase MAC2; the others by a load MAC3
VERB = {
    PURCHASE: "payment",
    UNDO: "refund",
    LOAD: "top-up",
    SUBSIDY_LOAD: "subsidy load",
    SUBSIDY_WITHDRAW: "subsidy withdrawal",
    SUBSIDY_REFUND: "subsidy refund",
}
# From Canteen.sale_fields, carried from the intent to the outcome (the optional fields of common/money_records.py).
SALE_FIELDS = (*MONEY_SALE_FIELDS, "item")


# The log cannot be written (disk full, I/O error): nothing that needs a record is done, and the screen says so.
LOG_UNAVAILABLE = "log_unavailable"
NOTHING_DONE = {
    PURCHASE: "nothing charged",
    UNDO: "nothing refunded",
    LOAD: "nothing loaded",
    SUBSIDY_LOAD: "no subsidy loaded",
    SUBSIDY_WITHDRAW: "no subsidy withdrawn",
    SUBSIDY_REFUND: "no subsidy refunded",
}


def cannot_record_message(op: str | None) -> str:
    return f"Terminal fault: cannot record, {NOTHING_DONE.get(op, 'nothing changed on the card')}. Call maintenance"


@dataclass(frozen=True)
class Settled:
    """What the next tap found out about an interrupted flow."""

    op: str
    intent_seq: int
    happened: bool
    amount: int
    balance_after: int | None  # the card's balance after it: shown only for a load (done_message)


def done_message(op: str, amount: int, balance_after: int) -> str:
    """What the screen says after money moved. Only a balance covered by a MAC this terminal verified is shown:
    a load's (MAC1 over the balance before, MAC3 over the balance after); never a purchase's (MAC2 covers the
    amount only) nor GET BALANCE's (no MAC at all)."""
    if op == PURCHASE:
        return f"Paid {format_yuan(amount)}"
    if op == SUBSIDY_WITHDRAW:
        return f"Expired subsidy of {format_yuan(amount)} withdrawn - subsidy balance 0.00"
    if op == SUBSIDY_LOAD:
        return f"Subsidy of {format_yuan(amount)} collected - subsidy balance {format_yuan(balance_after)}"
    if op == SUBSIDY_REFUND:
        return f"Refunded {format_yuan(amount)} of subsidy - subsidy balance {format_yuan(balance_after)}"
    verb = "Refunded" if op == UNDO else "Loaded"
    return f"{verb} {format_yuan(amount)} - balance {format_yuan(balance_after)}"


def _sw_of(rapdu: bytes) -> str | None:
    return rapdu[-2:].hex().upper() if len(rapdu) >= 2 else None


class Unrecorded(Exception):
    """The card changed (its proof verified) but the outcome could not be logged: the intent stays open and this
    card's next tap here, once the log can be written again, records it (settle_pending), exactly as after a kill."""

    def __init__(self, op: str, amount: int, balance_after: int, asn: str, why: str):
        super().__init__(why)
        self.op, self.amount, self.balance_after, self.asn, self.why = op, amount, balance_after, asn, why

    @property
    def message(self) -> str:
        done = {
            PURCHASE: "Paid",
            UNDO: "Refunded",
            LOAD: "Loaded",
            SUBSIDY_LOAD: "Loaded",
            SUBSIDY_WITHDRAW: "Withdrawn",
        }[self.op]
        return (
            f"{done} {format_yuan(self.amount)} - balance {format_yuan(self.balance_after)}. Terminal fault: "
            "not recorded yet, call maintenance (recorded at this card's next tap here)"
        )


class Incomplete(Exception):
    """The card may or may not have changed: the intent stays open and the next tap of this card settles it."""

    def __init__(self, op: str, amount: int, why: str):
        super().__init__(why)
        self.op, self.amount, self.why = op, amount, why


class PurseTerminal(SubsidySteps):
    """The purse applications of a POS (purchase, undo) or a top-up terminal (load), over one card connection."""

    def __init__(
        self,
        config: Config,
        sam: Sam,
        event_log,
        blacklist,
        synced_seq: Callable[[], int] = lambda: 0,
        outbox_pressure: Callable[[], float] = lambda: 0.0,
        pending_actions: Callable[[str], list[dict]] | None = None,
        other_tills: OtherTills = no_other_tills,
        pending_allowances=None,
    ):
        self.config = config
        self.sam = sam
        self.event_log = event_log
        self.journal = jn.Journal(event_log)
        self.blacklist = blacklist
        self.synced_seq = synced_seq  # the sync agent's acknowledged seq: offline limits count what is after it
        self.outbox_pressure = outbox_pressure  # unacknowledged records / outbox capacity
        self.pending_actions = pending_actions  # the inbox's card actions for an ASN (over-the-air top-ups)
        self.sale_intent_seq: int | None = None  # the intent of the sale the cashier is ringing up now
        self.pending_allowances = pending_allowances  # asn -> [subsidy_protocol.Allowance] (terminal/subsidy_flow.py)
        self.canteen = Canteen(event_log, other_tills)  # shifts, meal periods and their limits (terminal/canteen.py)
        # Asks the holder for the spending password on the keypad: (amount, note) -> Pin, or None (cancelled, timed
        # out, no keypad). Set by the terminal's run loop; None: a sale that needs the PIN is refused.
        self.ask_pin: Callable[[int, str], spin.Pin | None] | None = None
        # Every TSN is committed with its purchase intent before it reaches a card, so the log knows the highest
        # one used here. A SAM whose next TSN is not above it (a PSAM swapped for a fresh one with the same keys, a
        # state restored from an old backup) would repeat TSNs: its sales are refused (docs/key-handling.md 8).
        self.logged_tsn = event_log.last_tsn() if config.terminal.kind == "pos" else 0

    # --- shared steps -----------------------------------------------------------------------------

    def _select(self, transmit, local: dt.datetime) -> cp.CardInfo:
        info = select_card(transmit, self.config.terminal.enterprise_id)
        if info.purse_expiry is None:
            raise Refusal("no_purse", "This card has no purse: see the card office", info.asn_hex)
        entry = self.blacklist.lookup(info.asn)
        if entry is not None:
            raise Refusal(
                "blacklisted",
                BLACKLIST_MESSAGES.get(entry.reason, f"Card blocked ({entry.reason})"),
                info.asn_hex,
                {"blacklist_reason": entry.reason},
            )
        return info

    def _append(self, now: dt.datetime, kind: str, asn: str, reason: str, message: str, detail: dict):
        """Append before the card changes (or to settle what it already did): if the log cannot be written, the
        tap is refused before anything else happens (Refusal log_unavailable)."""
        return self._written(
            kind,
            asn,
            lambda: self.event_log.append(now, kind, asn=asn, reason_code=reason, message=message, detail=detail),
        )

    def _open(self, now: dt.datetime, op: str, asn: str, message: str, detail: dict) -> jn.Intent:
        """Journal the intent before the card changes; refused (log_unavailable) if it cannot be written."""
        return self._written(op + ".intent", asn, lambda: self.journal.open(FLOW[op], now, asn, message, detail))

    def _record(self, intent: jn.Intent, state: jn.State, now: dt.datetime, reason: str, message: str, detail: dict):
        """Journal an outcome of `intent` that the card itself settled (refused, not on it, or proven later)."""
        kind = intent.flow.kind(state)
        return self._written(kind, intent.asn, lambda: self.journal.record(intent, state, now, message, detail, reason))

    def _written(self, kind: str, asn: str, write):
        try:
            return write()
        except RecordNotWritten as exc:
            op = next((op for op in OPS if kind.startswith(op)), None)
            log_event(
                log,
                "log.write_failed",
                logging.ERROR,
                kind=kind,
                asn=asn,
                error=str(exc),
                msg="could not write the event log; the transaction is refused before the card changes",
            )
            raise Refusal(LOG_UNAVAILABLE, cannot_record_message(op), asn, {"problem": str(exc)}) from None

    def _sam_refusal(self, exc: SamError, op: str, asn: str, reason: str, message: str) -> Refusal:
        """A SAM that cannot save its own state (a full disk under the software SAM) is a terminal fault, not a
        refusal of the card."""
        if isinstance(exc, SamSwapped):
            log_event(
                log,
                "sam.swapped",
                logging.ERROR,
                asn=asn,
                error=str(exc),
                msg="the SAM in the slot is not the one this terminal started with; the transaction is refused",
            )
            return Refusal(
                "sam_swapped",
                f"Terminal fault: the SAM is not this terminal's, "
                f"{NOTHING_DONE.get(op, 'nothing changed on the card')}. Call maintenance",
                asn,
                {"problem": str(exc)},
            )
        if isinstance(exc, StateFileError):
            log_event(
                log,
                "sam.state_write_failed",
                logging.ERROR,
                asn=asn,
                error=str(exc),
                msg="the SAM could not save its state; the transaction is refused before the card changes",
            )
            return Refusal(LOG_UNAVAILABLE, cannot_record_message(op), asn, {"problem": str(exc)})
        return Refusal(reason, message, asn)

    def _purchase_session(self, info: cp.CardInfo, d: dict) -> PurchaseSession:
        if d["op"] == SUBSIDY_WITHDRAW or "subsidy_part" in d:
            return self._subsidy_purchase_session(info, d)
        return PurchaseSession(
            card=info.identity(d["key_version"], Algorithm[d["algorithm"]]),
            card_random=bytes.fromhex(d["random"]),
            counter=d["counter"],
            amount=d["amount"],
            terminal_id=self.config.terminal.id_bytes,
            date=bytes.fromhex(d["date"]),
            time=bytes.fromhex(d["time"]),
        )

    def _load_session(self, info: cp.CardInfo, d: dict) -> LoadSession:
        if d["op"] in (SUBSIDY_LOAD, SUBSIDY_REFUND):
            return self._subsidy_load_session(info, d)
        return LoadSession(
            card=info.identity(d["key_version"], Algorithm[d["algorithm"]]),
            card_random=bytes.fromhex(d["random"]),
            counter=d["counter"],
            balance_before=d["balance_before"],
            amount=d["amount"],
            terminal_id=self.config.terminal.id_bytes,
            date=bytes.fromhex(d["date"]),
            time=bytes.fromhex(d["time"]),
        )

    def _verify_proof(self, op: str, info: cp.CardInfo, d: dict, proof: pp.Proof) -> None:
        """Raises MacVerificationError unless the proof is this intent's (our session key made it)."""
        try:
            if op in DEBITS:
                self.sam.verify_purchase_mac2(self._purchase_session(info, d), d["tsn"], proof.mac)
            else:
                self.sam.verify_load_mac3(self._load_session(info, d), proof.mac)
        except StateFileError as exc:  # verified; only the SAM's note of it was not saved (a later undo is refused)
            log_event(
                log,
                "sam.state_write_failed",
                logging.ERROR,
                asn=info.asn_hex,
                error=str(exc),
                msg="the SAM verified the card's proof but could not save its state",
            )

    def _outcome_detail(
        self, intent_seq: int, d: dict, proof: pp.Proof, resolved_later: bool, subsidy_tac: bytes | None = None
    ) -> dict:
        sign = -1 if d["op"] in DEBITS else 1
        cash_part = d.get("cash_part", d["amount"])  # a two-purse sale moves the cash purse by its cash part only
        detail = {k: d[k] for k in ("amount", "counter", "date", "time", "key_version", "algorithm")}
        detail.update(
            intent_seq=intent_seq,
            tac=proof.tac.hex(),
            proof=proof.mac.hex(),
            balance_after=d["balance_before"] + sign * cash_part,
            resolved_at_next_tap=resolved_later,
        )
        for k in (
            "tsn",
            "purchase_seq",
            "action_id",
            "pin_verified",
            "allowance_id",
            "allowance_no",
            "expiry",
            *SALE_FIELDS,
        ):
            if k in d:
                detail[k] = d[k]
        if d["op"] in (SUBSIDY_LOAD, SUBSIDY_WITHDRAW, SUBSIDY_REFUND):
            return check_subsidy_detail(d["op"], detail)
        if "subsidy_part" in d:
            detail.update(
                subsidy_amount=d["subsidy_part"],
                subsidy_counter=d["subsidy_counter"],
                subsidy_balance_after=d["subsidy_balance_before"] - d["subsidy_part"],
                subsidy_tac=(subsidy_tac or bytes(8)).hex(),
                policy=d["policy"],
            )
        return check_money_detail(d["op"], detail)  # the platform's schema: what is logged is what it accepts

    def settle_pending(self, transmit, info: cp.CardInfo, now: dt.datetime) -> Settled | None:
        """If this card has an open intent here, find out from the card whether it happened, and log that once."""
        last = self.journal.unfinished(info.asn_hex, *jn.MONEY_FLOWS)
        if last is None:
            return None
        d = dict(last.detail)
        op = last.op
        tx_type, counter = self._prove_args(op, d)
        proof = pp.parse_prove(transmit(pp.prove_command(tx_type, counter)))
        if proof is not None:
            try:
                self._verify_proof(op, info, d, proof)
            except MacVerificationError:
                proof = None  # that counter was used by another terminal's transaction: ours did not happen
        subsidy_tac = None
        if proof is not None and "subsidy_part" in d:
            proof, subsidy_tac = self._two_purse_proofs(transmit, d, proof)
        if proof is None:
            self._record(
                last,
                jn.State.ABANDONED,
                now,
                "not_on_card",
                f"Interrupted {VERB[op]} of {format_yuan(d['amount'])} did not happen",
                {"intent_seq": last.seq, "amount": d["amount"], "counter": d["counter"]},
            )
            log_event(log, "purse.settled", op=op, intent=last.seq, happened=False, asn=info.asn_hex)
            return Settled(op, last.seq, False, d["amount"], None)
        detail = self._outcome_detail(last.seq, d, proof, resolved_later=True, subsidy_tac=subsidy_tac)
        self._record(
            last,
            jn.State.DONE,
            now,
            "completed",
            f"Interrupted {VERB[op]} of {format_yuan(d['amount'])} completed",
            detail,
        )
        log_event(log, "purse.settled", op=op, intent=last.seq, happened=True, asn=info.asn_hex)
        return Settled(op, last.seq, True, d["amount"], detail["balance_after"])

    def _settled_decision(self, settled: Settled, asn: str, requested: str | None) -> Decision:
        """The re-tap found that an interrupted operation did happen: report it as done, like a fresh one.

        The request typed now is not carried out in the same tap (it is most likely the same request, typed again
        after a crash); the screen says so when it differs, without inviting the operator to repeat the money move.
        """
        message = done_message(settled.op, settled.amount, settled.balance_after)
        if requested is not None:
            message += f" (earlier {VERB[settled.op]} confirmed; {requested} not done)"
        return Decision(
            True,
            settled.op,
            "completed",
            message,
            asn=asn,
            logged=False,
            detail={"intent_seq": settled.intent_seq, "settled_at_this_tap": True},
        )

    def _finish(
        self, transmit, op: str, info, d: dict, intent: jn.Intent, command: bytes, parse, verify_session, now
    ) -> dict:
        """Send the command that changes the card, check its proof, log the outcome; Incomplete if unsure."""
        intent_seq = intent.seq
        rapdu = b""
        try:
            rapdu = transmit(command)
            proof = parse(rapdu)
        except (pp.MacRefused, pp.PurseExpired, sp.NotExpired, pp.InsufficientBalance, pp.OverMaximum) as exc:
            # The card said no before changing anything: this intent is settled as not done.
            self._record(
                intent,
                jn.State.ABANDONED,
                now,
                "card_refused",
                str(exc),
                {"intent_seq": intent_seq, "amount": d["amount"], "counter": d["counter"]},
            )
            if isinstance(exc, sp.NotExpired):
                raise Refusal(
                    "subsidy_not_expired", "Subsidy not expired yet: nothing withdrawn", info.asn_hex
                ) from None
            if isinstance(exc, pp.PurseExpired):
                raise Refusal("purse_expired", "Purse expired: balance can no longer be spent", info.asn_hex) from None
            if isinstance(exc, pp.InsufficientBalance):  # a version 2 card checks it at DEBIT (5.2a)
                raise Refusal(
                    "insufficient_balance",
                    f"Insufficient balance for {format_yuan(d['amount'])}: top up first",
                    info.asn_hex,
                    {"amount": d["amount"]},
                ) from None
            if isinstance(exc, pp.OverMaximum):  # a version 2 card checks it at CREDIT (5.2a)
                raise Refusal(
                    "card_error",
                    "Card refused the credit (it would go over its maximum balance): nothing was loaded",
                    info.asn_hex,
                    {"sw": _sw_of(rapdu)},
                ) from None
            nothing = "nothing was charged" if op in DEBITS else "nothing was loaded"
            raise Refusal(
                "card_error", f"Card refused the transaction: {nothing}", info.asn_hex, {"sw": _sw_of(rapdu)}
            ) from None
        except cp.CardProtocolError as exc:
            raise Incomplete(op, d["amount"], f"unclear answer from the card ({exc})") from None
        subsidy_tac = None
        if isinstance(proof, sp.TwoPurseProof):  # a two-purse sale: MAC2 and the two purses' TACs
            subsidy_tac, proof = proof.subsidy_tac, pp.Proof(mac=proof.mac, tac=proof.cash_tac)
        try:
            verify_session(proof)
        except MacVerificationError:
            raise Incomplete(op, d["amount"], "the card's proof did not verify") from None
        except StateFileError as exc:
            # The proof verified; only the SAM's note of it could not be saved (a later undo is then refused).
            log_event(
                log,
                "sam.state_write_failed",
                logging.ERROR,
                asn=info.asn_hex,
                error=str(exc),
                msg="the SAM verified the card's proof but could not save its state",
            )
        detail = self._outcome_detail(intent_seq, d, proof, resolved_later=False, subsidy_tac=subsidy_tac)
        try:
            self.journal.record(
                intent,
                jn.State.DONE,
                now,
                f"{VERB[op].capitalize()} of {format_yuan(d['amount'])}",
                detail,
                "completed",
            )
        except RecordNotWritten as exc:
            log_event(
                log,
                "log.write_failed",
                logging.ERROR,
                kind=op,
                asn=info.asn_hex,
                intent=intent_seq,
                error=str(exc),
                msg="the card changed but its outcome could not be logged; the intent stays "
                "open and the card's next tap here records it",
            )
            raise Unrecorded(op, d["amount"], detail["balance_after"], info.asn_hex, str(exc)) from None
        return detail

    def balance_inquiry(self, transmit, now: dt.datetime) -> Decision:
        """Settle any interrupted transaction of this card here and run its card actions, as every tap does; show
        what moved. GET BALANCE carries no MAC, so its figure is never shown: a balance appears only with a load
        this tap verified (an over-the-air top-up, a settled earlier top-up)."""
        info = self._select(transmit, now.astimezone(self.config.terminal.timezone))
        settled = self.settle_pending(transmit, info, now)
        subsidy_notes = [] if settled is not None and settled.happened else self.subsidy_before(transmit, info, now)
        loads, notes = self._card_actions(transmit, info, now)
        notes = subsidy_notes + notes
        if loads:
            amount = sum(a for a, _ in loads)
            message = f"Loaded {format_yuan(amount)} - balance {format_yuan(loads[-1][1])} (over-the-air top-up)"
        elif settled is not None and settled.happened:
            return self._settled_decision(settled, info.asn_hex, None)
        else:
            message = "Balance not shown: this terminal cannot verify the card's balance; no transaction pending"
            if settled is not None:
                notes.insert(0, f"earlier {VERB[settled.op]} of {format_yuan(settled.amount)} did not happen")
        note = "".join(f" ({n})" for n in notes)
        return Decision(
            True,
            "purse.balance",
            "balance",
            message + note,
            asn=info.asn_hex,
            logged=False,
            detail={"ota_loads": [a for a, _ in loads]},
        )

    # --- purchase ---------------------------------------------------------------------------------

    def purchase(self, transmit, amount: int, now: dt.datetime, item: str = "") -> Decision:
        """Charge `amount` fen. Raises Refusal, Incomplete, or CardRemoved (intent then left open)."""
        t = self.config.terminal
        local = now.astimezone(t.timezone)
        info = self._select(transmit, local)
        asn = info.asn_hex
        settled = self.settle_pending(transmit, info, now)
        if settled and settled.happened:
            # Money already moved: report it as done. Never invite charging again (it may be this very sale,
            # typed again after a restart); a different amount is said not charged.
            same = settled.op == PURCHASE and (settled.intent_seq == self.sale_intent_seq or settled.amount == amount)
            self.sale_intent_seq = None
            return self._settled_decision(settled, asn, None if same else f"payment of {format_yuan(amount)}")
        if local.date() > info.purse_expiry:
            raise Refusal(
                "purse_expired",
                f"Purse expired on {info.purse_expiry.isoformat()}: "
                "balance can no longer be spent, see the administrator",
                asn,
            )
        subsidy_notes = self.subsidy_before(transmit, info, now)
        pos = self.config.pos
        if self.outbox_pressure() >= POS_REFUSE_OFFLINE_SALES_AT:
            raise Refusal(
                "store_full",
                "Offline storage nearly full: sales paused until the terminal syncs; call maintenance if this lasts",
                asn,
            )
        if amount > pos.max_purchase:
            raise Refusal(
                "over_purchase_limit",
                f"{format_yuan(amount)} is over the offline limit of {format_yuan(pos.max_purchase)} per purchase",
                asn,
            )
        spent = self.event_log.sum_amounts(asn, PURCHASE, self.synced_seq())
        if spent + amount > pos.offline_limit:
            raise Refusal(
                "offline_limit",
                f"Offline spending limit reached for this card "
                f"({format_yuan(spent)} of {format_yuan(pos.offline_limit)} since the last sync)",
                asn,
            )
        sale = self.canteen.sale_fields(self.config, asn, amount, now, item)
        if spin.needs_pin(amount, pos.pin_above):
            self._spending_pin(transmit, asn, amount)
            # The DEBIT is flagged (P2 80), a plain or a two-purse one alike: the card's TACs prove the PIN
            # (docs/card-application.md 5.5, 5.6).
            sale["pin_verified"] = True
        if info.has_subsidy:  # the card has a subsidy purse: one sale from both (card-application 5.6)
            return self.two_purse_purchase(transmit, info, amount, now, sale, subsidy_notes)
        try:
            init = pp.parse_init_purchase(transmit(pp.init_purchase_command(amount, t.id_bytes)), info.private)
        except pp.InsufficientBalance:
            # The balance itself is not shown: nothing the card sends a POS proves it (GET BALANCE has no MAC).
            raise Refusal(
                "insufficient_balance",
                f"Insufficient balance for {format_yuan(amount)}: top up first",
                asn,
                {"amount": amount},
            ) from None
        except cp.CardProtocolError as exc:
            raise Refusal(
                "card_error", "Card could not start the payment: tap again", asn, {"problem": str(exc)}
            ) from None
        date, time_ = bcd.encode_date_time(local)
        d = {
            "op": PURCHASE,
            "amount": amount,
            "counter": init.counter,
            "random": init.random.hex(),
            "date": date.hex(),
            "time": time_.hex(),
            "key_version": init.key_version,
            "algorithm": init.algorithm.name,
            "balance_before": init.balance,
            **sale,
        }
        session = self._purchase_session(info, d)
        try:
            if init.balance is None:  # version 2: the SAM opens the sealed balance and checks it (5.2a)
                d["tsn"], mac1, clear = self.sam.purchase_mac1_sealed(session, init.sealed)
                d["balance_before"] = int.from_bytes(clear, "big")
            else:
                d["tsn"], mac1 = self.sam.purchase_mac1(session)
        except BalanceTooLow:
            raise Refusal(
                "insufficient_balance",
                f"Insufficient balance for {format_yuan(amount)}: top up first",
                asn,
                {"amount": amount},
            ) from None
        except SamError as exc:
            raise self._sam_refusal(
                exc, PURCHASE, asn, "sam_refused", f"Terminal cannot take payments from this card ({exc})"
            ) from None
        if d["tsn"] <= self.logged_tsn:
            log_event(
                log,
                "sam.tsn_behind",
                logging.ERROR,
                tsn=d["tsn"],
                last_logged_tsn=self.logged_tsn,
                asn=asn,
                msg="the SAM handed out a TSN this terminal's log already used; sales refused",
            )
            raise Refusal(
                "sam_sequence",
                "Terminal fault: SAM transaction numbers behind the log, nothing charged. Call maintenance",
                asn,
                {"tsn": d["tsn"], "last_logged_tsn": self.logged_tsn},
            )
        intent = self._open(now, PURCHASE, asn, f"Charging {format_yuan(amount)}", d)
        self.logged_tsn = d["tsn"]
        self.sale_intent_seq = intent.seq
        detail = self._finish(
            transmit,
            PURCHASE,
            info,
            d,
            intent,
            pp.debit_command(d["tsn"], date, time_, mac1, bool(sale.get("pin_verified"))),
            pp.parse_debit,
            lambda proof: self.sam.verify_purchase_mac2(session, d["tsn"], proof.mac),
            now,
        )
        self.sale_intent_seq = None
        return Decision(
            True,
            PURCHASE,
            "paid",
            done_message(PURCHASE, amount, detail["balance_after"]),
            asn=asn,
            logged=False,
            detail=detail,
        )

    def _spending_pin(self, transmit, asn: str, amount: int) -> None:
        """The holder types the spending password; the card verifies it (VERIFY, docs/card-application.md 5.5).
        Returns once verified; Refusal otherwise. The PIN is wiped after each VERIFY and never logged or kept."""
        answer = spin.parse_verify(transmit(spin.status_command()))
        if answer.verified:
            return
        asked = False
        while True:
            if answer.state == "blocked" or (answer.state == "wrong" and answer.tries_left == 0):
                message = spin.wrong_pin_message(0) if asked else spin.BLOCKED_MESSAGE
                raise Refusal("pin_blocked", message, asn)
            if answer.state == "not_set":
                raise Refusal("pin_not_set", spin.NOT_SET_MESSAGE, asn)
            if answer.state != "wrong":
                raise Refusal(
                    "card_error", "Card could not check the spending password: tap again", asn, {"sw": answer.sw}
                )
            n = answer.tries_left
            note = f"{'Wrong password: ' if asked else ''}{n} {'try' if n == 1 else 'tries'} left"
            asked = True
            pin = self.ask_pin(amount, note) if self.ask_pin is not None else None
            if pin is None:
                raise Refusal("pin_cancelled", spin.CANCELLED_MESSAGE, asn)
            block = pin.block()
            pin.wipe()
            command = spin.verify_command(block)
            spin.wipe(block)
            try:
                answer = spin.parse_verify(transmit(bytes(command)))
            finally:
                spin.wipe(command)
            if answer.state == "verified":
                return
            if answer.state == "wrong":  # the try, never the password: the card counts it, the log says so
                log_event(
                    log,
                    "pin.wrong",
                    logging.WARNING,
                    asn=asn,
                    tries_left=answer.tries_left,
                    msg=f"the card refused the spending password ({answer.tries_left} tries left)",
                )

    # --- loads: top-up and cashier undo -----------------------------------------------------------

    def _load(
        self,
        transmit,
        info: cp.CardInfo,
        op: str,
        amount: int,
        now: dt.datetime,
        make_mac2,
        extra: dict,
        command: bytes | None = None,
        parse=pp.parse_init_load,
    ) -> dict:
        local = now.astimezone(self.config.terminal.timezone)
        rapdu = transmit(
            command if command is not None else pp.init_load_command(amount, self.config.terminal.id_bytes)
        )
        try:
            init = parse(rapdu, info.private)
        except sp.AllowanceLoaded as exc:
            raise Refusal(
                "allowance_loaded", "Allowance already on the card: nothing loaded", info.asn_hex, {"problem": str(exc)}
            ) from None
        except cp.CardProtocolError as exc:
            raise Refusal(
                "card_error",
                "Card refused the credit (would it go over its maximum balance?): nothing was loaded",
                info.asn_hex,
                {"problem": str(exc), "sw": _sw_of(rapdu)},
            ) from None
        date, time_ = bcd.encode_date_time(local)
        d = {
            "op": op,
            "amount": amount,
            "counter": init.counter,
            "random": init.random.hex(),
            "date": date.hex(),
            "time": time_.hex(),
            "key_version": init.key_version,
            "algorithm": init.algorithm.name,
            "balance_before": init.balance,
            **extra,
        }
        if init.balance is None:  # version 2: sealed; the SAM opens it with the load key (5.2a)
            d["balance_before"] = 0
        try:
            mac2, d["balance_before"] = make_mac2(self._load_session(info, d), init.mac1, init.sealed)
        except SamError as exc:
            raise self._sam_refusal(
                exc, op, info.asn_hex, "sam_refused", f"Credit refused by the terminal's SAM: {exc}"
            ) from None
        session = self._load_session(info, d)
        intent = self._open(now, op, info.asn_hex, f"Crediting {format_yuan(amount)}", d)
        return self._finish(
            transmit,
            op,
            info,
            d,
            intent,
            pp.credit_command(date, time_, mac2),
            pp.parse_credit,
            lambda proof: self.sam.verify_load_mac3(session, proof.mac),
            now,
        )

    def _load_mac2(self, session: LoadSession, mac1: bytes, sealed: bytes) -> tuple[bytes, int]:
        """(load MAC2, balance before): from a version 1 card's clear balance, or opened by the SAM (sealed, v2)."""
        if not sealed:
            return self.sam.load_mac2(session, mac1), session.balance_before
        return self.sam.load_mac2_sealed(session, mac1, sealed)

    def _reversal_mac2(self, purchase_tsn: int):
        def make(session: LoadSession, mac1: bytes, sealed: bytes) -> tuple[bytes, int]:
            if not sealed:
                return self.sam.reversal_mac2(session, mac1, purchase_tsn), session.balance_before
            return self.sam.reversal_mac2_sealed(session, mac1, purchase_tsn, sealed)

        return make

    def _card_actions(self, transmit, info: cp.CardInfo, now: dt.datetime) -> tuple[list[tuple[int, int]], list[str]]:
        """Write what the platform queued for this card: over-the-air top-ups and access-rights changes, each once
        (its action_id is on the logged outcome). Only the top-up terminal, the card service machine, holds the LOAD
        and UPDATE keys. Called after settle_pending, so an interrupted top-up is already known.

        Returns ([(amount, verified balance after)] of the top-ups loaded, notes on anything else). A top-up the card
        (or this terminal's limit) refuses is logged as card_action.failed, which the platform receives with the log and
        which stops this terminal offering it: it never blocks the tap's own operation.
        """
        if self.pending_actions is None or self.config.terminal.kind != "topup":
            return [], []
        loads, notes = [], []
        for action in self.pending_actions(info.asn_hex):
            action_id, params = action["action_id"], action["params"]
            if self.event_log.has_detail(ACTION_FAILED, "action_id", action_id):
                continue
            if action["action"] == "topup" and not self.event_log.has_detail(LOAD, "action_id", action_id):
                try:
                    amount = int(params["amount"])
                    if not 0 < amount <= self.config.topup.max_load:
                        raise Refusal(
                            "over_load_limit",
                            f"over-the-air top-up of {format_yuan(amount)} is over "
                            f"this terminal's limit of {format_yuan(self.config.topup.max_load)}",
                            info.asn_hex,
                            {"sw": None},
                        )
                    detail = self._load(transmit, info, LOAD, amount, now, self._load_mac2, {"action_id": action_id})
                except (KeyError, TypeError, ValueError) as exc:
                    self._action_failed(now, info, action_id, "bad_action", None, f"unreadable parameters ({exc})")
                    continue
                except Refusal as r:
                    if r.reason_code == "sam_refused":  # this terminal's fault, not the card's: stays pending
                        log_event(
                            log,
                            "purse.ota_skipped",
                            logging.WARNING,
                            action=action_id,
                            asn=info.asn_hex,
                            error=r.message,
                            msg="over-the-air top-up not written; it stays pending",
                        )
                        continue
                    self._action_failed(now, info, action_id, r.reason_code, r.detail.get("sw"), r.message)
                    notes.append(f"over-the-air top-up refused by the card: {r.message}")
                    continue
                loads.append((amount, detail["balance_after"]))
                log_event(
                    log,
                    "purse.ota_topup",
                    action=action_id,
                    asn=info.asn_hex,
                    amount=amount,
                    balance_after=detail["balance_after"],
                    msg="over-the-air top-up written onto the card",
                )
            elif action["action"] == "rights" and not self.event_log.has_detail(RIGHTS, "action_id", action_id):
                if self._write_rights(transmit, info, action_id, params, now):
                    notes.append("access rights updated")
        return loads, notes

    def _action_failed(
        self, now: dt.datetime, info: cp.CardInfo, action_id: str, reason: str, sw: str | None, why: str
    ) -> None:
        self._append(
            now,
            ACTION_FAILED,
            info.asn_hex,
            reason,
            f"Card action {action_id} failed: {why}",
            {"action_id": action_id, "reason_code": reason, "sw": sw},
        )
        log_event(
            log,
            "purse.card_action_failed",
            logging.WARNING,
            action=action_id,
            asn=info.asn_hex,
            reason=reason,
            sw=sw,
            msg="card action refused; reported to the platform and no longer offered",
        )

    def _write_rights(self, transmit, info: cp.CardInfo, action_id: str, params: dict, now: dt.datetime) -> bool:
        """Rewrite EF_ACCESS with the platform's rights. The write is idempotent, so a tear before it is logged
        just means the next tap writes the same bytes again."""
        from terminal.rekey import AdminChannel

        try:
            data = cp.encode_access_file(
                dt.date.fromisoformat(params["valid_from"]),
                dt.date.fromisoformat(params["valid_to"]),
                params["door_groups"],
                int(params.get("time_profile", 0)),
            )
            AdminChannel(transmit, self.sam, info).update_binary(cp.SFI_ACCESS, 0, data, "EF_ACCESS")
        except (KeyError, TypeError, ValueError, SamError, cp.CardProtocolError) as exc:
            log_event(
                log,
                "card.rights_failed",
                logging.WARNING,
                action=action_id,
                asn=info.asn_hex,
                error=str(exc),
                msg="access rights from the platform not written; the action stays pending",
            )
            return False
        self._append(
            now,
            RIGHTS,
            info.asn_hex,
            "rights_updated",
            "Access rights updated from the platform",
            {
                "action_id": action_id,
                **{k: params[k] for k in ("door_groups", "valid_from", "valid_to")},
                "time_profile": int(params.get("time_profile", 0)),
            },
        )
        return True

    def top_up(self, transmit, amount: int, now: dt.datetime) -> Decision:
        info = self._select(transmit, now.astimezone(self.config.terminal.timezone))
        settled = self.settle_pending(transmit, info, now)
        if settled and settled.happened:
            # The interrupted load reached the card: it is done. Loading `amount` now could load it twice.
            same = settled.op == LOAD and settled.amount == amount
            return self._settled_decision(settled, info.asn_hex, None if same else f"top-up of {format_yuan(amount)}")
        subsidy_notes = self.subsidy_before(transmit, info, now)
        loads, notes = self._card_actions(transmit, info, now)
        notes = subsidy_notes + notes
        if amount > self.config.topup.max_load:
            raise Refusal(
                "over_load_limit",
                f"{format_yuan(amount)} is over the top-up limit of {format_yuan(self.config.topup.max_load)}",
                info.asn_hex,
            )
        detail = self._load(transmit, info, LOAD, amount, now, self._load_mac2, {})
        notes = [f"over-the-air top-up of {format_yuan(a)} loaded" for a, _ in loads] + notes
        extra = "".join(f" ({note})" for note in notes)
        return Decision(
            True,
            LOAD,
            "loaded",
            done_message(LOAD, amount, detail["balance_after"]) + extra,
            asn=info.asn_hex,
            logged=False,
            detail=detail,
        )

    def undo_last(self, transmit, now: dt.datetime) -> Decision:
        """Reverse this terminal's last purchase: same card, within the window, once."""
        info = self._select(transmit, now.astimezone(self.config.terminal.timezone))
        asn = info.asn_hex
        settled = self.settle_pending(transmit, info, now)
        last = self.event_log.last_event_of((PURCHASE,))
        if last is not None and "subsidy_amount" in last.detail and last.asn == asn:
            # A two-purse sale: each share back into its own purse, each once (an earlier tap may have done one).
            return self._undo_two_purse(transmit, info, last, now, settled)
        if settled and settled.happened and settled.op == UNDO:
            return self._settled_decision(settled, asn, None)
        if last is None:
            raise Refusal("nothing_to_undo", "Nothing to undo: no payment on this terminal yet", asn)
        undone = self.event_log.last_event_of((UNDO,))
        if undone is not None and undone.detail["purchase_seq"] == last.seq:
            raise Refusal("nothing_to_undo", "Nothing to undo: the last payment here was already refunded", asn)
        if last.asn != asn:
            raise Refusal("undo_other_card", f"Undo needs the card that paid (card ending {last.asn[-4:]})", asn)
        self._check_undo_window(last, now, asn)
        p = last.detail
        detail = self._load(
            transmit,
            info,
            UNDO,
            p["amount"],
            now,
            self._reversal_mac2(p["tsn"]),
            {"purchase_seq": last.seq, **self.canteen.undo_fields(self.config, p)},
        )
        return Decision(
            True,
            UNDO,
            "refunded",
            done_message(UNDO, p["amount"], detail["balance_after"]),
            asn=asn,
            logged=False,
            detail=detail,
        )

    def _check_undo_window(self, last, now: dt.datetime, asn: str) -> None:
        age = (now - last.time).total_seconds()
        if age > self.config.pos.undo_window_seconds:
            raise Refusal(
                "undo_too_late",
                f"Too late to undo: the payment was {int(age // 60)} min ago "
                f"(limit {int(self.config.pos.undo_window_seconds // 60)} min)",
                asn,
            )

    def _undo_two_purse(self, transmit, info: cp.CardInfo, last, now: dt.datetime, settled) -> Decision:
        """The cashier's undo of a two-purse sale (card-application.md 5.6): the cash share back as a cash load
        (pos.undo, the reversal the SAM allows once), then the subsidy share as a subsidy load with allowance
        number 0 (subsidy.refund, with the subsidy expiry the purse had at the sale). Each is journaled on its own,
        so a card pulled at any APDU is settled at the next tap and the undo goes on with what is left: each share
        is given back exactly once."""
        asn, p = info.asn_hex, last.detail
        subsidy_part = p["subsidy_amount"]
        cash_part = p["amount"] - subsidy_part
        cash_done = cash_part == 0 or self.event_log.find_detail(UNDO, "purchase_seq", last.seq) is not None
        subsidy_done = subsidy_part == 0 or (
            self.event_log.find_detail(SUBSIDY_REFUND, "purchase_seq", last.seq) is not None
        )
        if cash_done and subsidy_done:
            if settled and settled.happened and settled.op in (UNDO, SUBSIDY_REFUND):
                return self._settled_decision(settled, asn, None)
            raise Refusal("nothing_to_undo", "Nothing to undo: the last payment here was already refunded", asn)
        if not (cash_done or subsidy_done) or settled is None:
            self._check_undo_window(last, now, asn)  # a share left after a tear is finished whatever the time
        expiry = b""
        if not subsidy_done:  # checked before any share moves: the refund keeps the sale's subsidy expiry
            intent = self.event_log.find_detail(jn.PURCHASE.intent_kind, "tsn", p["tsn"])
            stored = None if intent is None else intent.detail.get("subsidy_expiry")
            if stored is None:
                raise Refusal(
                    "undo_two_purse",
                    "Undo not possible: the sale's subsidy expiry is not in this terminal's log; "
                    "refund the subsidy share at the card office",
                    asn,
                )
            expiry = bytes.fromhex(stored)
        extra = {"purchase_seq": last.seq, **self.canteen.undo_fields(self.config, p)}
        parts, refunded = [], 0
        # For the receipt: what this tap gave back, each balance covered by the MAC3 this terminal verified.
        out: dict = {"purchase_seq": last.seq, "cash_refund": 0, "subsidy_refund": 0}
        out.update({k: extra[k] for k in ("operator", "batch", "meal_period") if k in extra})
        if not cash_done:
            cash = self._load(transmit, info, UNDO, cash_part, now, self._reversal_mac2(p["tsn"]), extra)
            parts.append(f"cash {format_yuan(cash_part)} - balance {format_yuan(cash['balance_after'])}")
            refunded += cash_part
            out.update(cash_refund=cash_part, balance_after=cash["balance_after"], tac=cash["tac"])
        if not subsidy_done:
            sub = self._load(
                transmit,
                info,
                SUBSIDY_REFUND,
                subsidy_part,
                now,
                self._reversal_mac2(p["tsn"]),
                {**extra, "expiry": expiry.hex()},
                command=sp.subsidy_load_command(
                    subsidy_part, self.config.terminal.id_bytes, bcd.decode_date(expiry), 0
                ),
                parse=sp.parse_subsidy_load,
            )
            parts.append(f"subsidy {format_yuan(subsidy_part)} - subsidy balance {format_yuan(sub['balance_after'])}")
            refunded += subsidy_part
            out.update(subsidy_refund=subsidy_part, subsidy_balance_after=sub["balance_after"], subsidy_tac=sub["tac"])
        return Decision(
            True,
            UNDO,
            "refunded",
            f"Refunded {format_yuan(refunded)} ({'; '.join(parts)})",
            asn=asn,
            logged=False,
            detail={"amount": refunded, **out},
        )
