"""The subsidy purse at the till and the top-up terminal (docs/canteen.md "Subsidy wallet"; card side:
docs/card-application.md 5.6): withdraw an expired subsidy, collect announced allowances, sell from both purses.

A mixin of terminal/purse_flow.PurseTerminal: every step is journaled as the money flows are (intent before the
card changes, one outcome with the card's proof and TAC, or abandoned), so a card pulled anywhere is settled at its
next tap, exactly once per purse (settle_pending). The decisions are in terminal/subsidy_protocol.py (sans-I/O).
"""

from __future__ import annotations

import datetime as dt
import logging

from common import bcd
from common import transactions as tx
from common.logs import log_event
from common.money import format_yuan
from sam.interface import Algorithm, BalanceTooLow, KeyUsageError, LoadSession, PurchaseSession, SamError
from terminal import card_protocol as cp
from terminal import purse_protocol as pp
from terminal import subsidy_protocol as sp
from terminal.decision import Decision, Refusal

log = logging.getLogger("onecard.subsidy")


class _NothingToTake(Exception):
    """The SAM opened the card's sealed purse fields (card-application.md 5.2a): they do not cover the debit."""


class SubsidySteps:
    """Needs of the host (PurseTerminal): config, sam, event_log, pending_allowances, _open, _finish, _record,
    _sam_refusal, _load, sale_intent_seq, logged_tsn."""

    # --- sessions and proofs ---------------------------------------------------------------------------------

    def _subsidy_purchase_session(self, info: cp.CardInfo, d: dict) -> PurchaseSession:
        two_purse = d["op"] != "subsidy.withdraw"
        return PurchaseSession(
            card=info.identity(d["key_version"], Algorithm[d["algorithm"]]),
            card_random=bytes.fromhex(d["random"]),
            counter=d["counter"],
            amount=d["amount"],
            terminal_id=self.config.terminal.id_bytes,
            date=bytes.fromhex(d["date"]),
            time=bytes.fromhex(d["time"]),
            tx_type=tx.SUBSIDY_PURCHASE if two_purse else tx.SUBSIDY_WITHDRAW,
            subsidy_part=d["subsidy_part"] if two_purse else 0,
        )

    def _subsidy_load_session(self, info: cp.CardInfo, d: dict) -> LoadSession:
        return LoadSession(
            card=info.identity(d["key_version"], Algorithm[d["algorithm"]]),
            card_random=bytes.fromhex(d["random"]),
            counter=d["counter"],
            balance_before=d["balance_before"],
            amount=d["amount"],
            terminal_id=self.config.terminal.id_bytes,
            date=bytes.fromhex(d["date"]),
            time=bytes.fromhex(d["time"]),
            tx_type=tx.SUBSIDY_LOAD,
            expiry=bytes.fromhex(d["expiry"]),
            allowance=d.get("allowance_no", 0),  # a refund (subsidy.refund) loads with number 0
        )

    @staticmethod
    def _prove_args(op: str, d: dict) -> tuple[int, int]:
        """GET TRANSACTION PROVE's (type, counter) for an open intent: a two-purse sale is proven by its cash record
        when it has a cash part (its subsidy record exists with it: one atomic write), else by its subsidy record."""
        if op == "pos.purchase" and "subsidy_part" in d:
            return (tx.PURCHASE, d["counter"]) if d["cash_part"] else (tx.SUBSIDY_PURCHASE, d["subsidy_counter"])
        types = {
            "pos.purchase": tx.PURCHASE,
            "pos.undo": tx.LOAD,
            "topup.load": tx.LOAD,
            "subsidy.load": tx.SUBSIDY_LOAD,
            "subsidy.withdraw": tx.SUBSIDY_WITHDRAW,
            "subsidy.refund": tx.SUBSIDY_LOAD,
        }
        return types[op], d["counter"]

    def _two_purse_proofs(self, transmit, d: dict, proof: pp.Proof) -> tuple[pp.Proof, bytes | None]:
        """The cash proof and the subsidy TAC of a two-purse sale proven at the next tap (the proof verified)."""
        if not d["cash_part"]:
            return pp.Proof(mac=proof.mac, tac=bytes(8)), proof.tac
        if not d["subsidy_part"]:
            return proof, None
        other = pp.parse_prove(transmit(pp.prove_command(tx.SUBSIDY_PURCHASE, d["subsidy_counter"])))
        if other is None or other.mac != proof.mac:
            # Both records are written together; only 10 are kept, so an old one may be gone: the cash proof stands
            # and the subsidy TAC is logged as unknown (zeros), which the platform holds for review.
            return proof, None
        return proof, other.tac

    # --- before a tap's own operation: withdraw, collect ----------------------------------------------------

    def subsidy_before(self, transmit, info: cp.CardInfo, now: dt.datetime) -> list[str]:
        """Withdraw an expired subsidy, then collect the allowances announced for this card. Returns screen notes.
        Raises Incomplete / Unrecorded / Refusal(log_unavailable) as the money flows do (the tap then ends)."""
        self.verified_subsidy: tuple[str, int] | None = None  # (asn, balance) a MAC3 of this tap verified
        # The card's subsidy expiry as this tap leaves it (a sale's undo gives its subsidy share back with it)
        self.subsidy_expiry_now: dt.date | None = info.subsidy_expiry
        if not info.has_subsidy:
            return []
        today = now.astimezone(self.config.terminal.timezone).date()
        notes: list[str] = []
        if sp.subsidy_expired(info.subsidy_expiry, today):
            amount = self._withdraw(transmit, info, now)
            if amount:
                notes.append(f"expired subsidy of {format_yuan(amount)} withdrawn")
            self.subsidy_expiry_now = None
        allowances = self._allowances(info.asn_hex)
        collected = {
            a.allowance_id
            for a in allowances
            if self.event_log.has_detail("subsidy.load", "allowance_id", a.allowance_id)
        }
        for a in sp.allowances_to_collect(allowances, collected, today, info.last_allowance):
            extra = {
                "allowance_id": a.allowance_id,
                "allowance_no": a.number,
                "expiry": bcd.encode_date(a.expiry).hex(),
                "policy": a.policy,
            }
            try:
                detail = self._load(
                    transmit,
                    info,
                    "subsidy.load",
                    a.amount,
                    now,
                    self._load_mac2,
                    extra,
                    command=sp.subsidy_load_command(a.amount, self.config.terminal.id_bytes, a.expiry, a.number),
                    parse=sp.parse_subsidy_load,
                )
            except Refusal as r:
                if r.reason_code == "allowance_loaded":
                    # The card already holds this allowance or a later one (another till loaded it offline):
                    # nothing changed on the card; the tap goes on (card-application.md 5.6, 94 07).
                    log_event(
                        log,
                        "subsidy.allowance_refused",
                        logging.WARNING,
                        asn=info.asn_hex,
                        allowance_id=a.allowance_id,
                        allowance_no=a.number,
                        last_allowance=info.last_allowance,
                        msg="the card refused the allowance: already loaded (elsewhere) or a later one is",
                    )
                    continue
                if r.reason_code != "sam_refused":
                    raise
                notes.append("allowance to collect at the top-up terminal")
                log_event(log, "subsidy.collect_skipped", logging.WARNING, asn=info.asn_hex, error=r.message)
                break
            self.verified_subsidy = (info.asn_hex, detail["balance_after"])
            self.subsidy_expiry_now = max(self.subsidy_expiry_now or a.expiry, a.expiry)
            notes.append(
                f"subsidy of {format_yuan(a.amount)} collected - subsidy balance {format_yuan(detail['balance_after'])}"
            )
        return notes

    def _allowances(self, asn: str) -> list[sp.Allowance]:
        return [] if self.pending_allowances is None else list(self.pending_allowances(asn))

    def _withdraw(self, transmit, info: cp.CardInfo, now: dt.datetime) -> int:
        local = now.astimezone(self.config.terminal.timezone)
        try:
            init = sp.parse_withdraw_init(transmit(sp.withdraw_command(self.config.terminal.id_bytes)))
        except pp.InsufficientBalance:
            return 0  # nothing left in the expired subsidy purse
        except cp.CardProtocolError as exc:
            raise Refusal(
                "card_error",
                "Card could not withdraw its expired subsidy: tap again",
                info.asn_hex,
                {"problem": str(exc)},
            ) from None
        date, time_ = bcd.encode_date_time(local)
        d = {
            "op": "subsidy.withdraw",
            "amount": 0,  # the whole balance, which the SAM deciphers (5.2a)
            "counter": init.counter,
            "random": init.random.hex(),
            "date": date.hex(),
            "time": time_.hex(),
            "key_version": init.key_version,
            "algorithm": init.algorithm.name,
        }
        try:
            mac1, clear = self._take_tsn(
                d, self._subsidy_purchase_session(info, d), info.asn_hex, "subsidy.withdraw", init.sealed
            )
        except _NothingToTake:
            return 0
        d["amount"] = d["balance_before"] = balance = int.from_bytes(clear, "big")
        session = self._subsidy_purchase_session(info, d)
        intent = self._open(now, "subsidy.withdraw", info.asn_hex, f"Withdrawing {format_yuan(balance)}", d)
        self.logged_tsn = d["tsn"]
        self._finish(
            transmit,
            "subsidy.withdraw",
            info,
            d,
            intent,
            pp.debit_command(d["tsn"], date, time_, mac1),
            sp.parse_withdraw_debit,
            lambda proof: self.sam.verify_purchase_mac2(session, d["tsn"], proof.mac),
            now,
        )
        return balance

    def _take_tsn(self, d: dict, session: PurchaseSession, asn: str, op: str, sealed: bytes) -> tuple[bytes, bytes]:
        """(MAC1, the purse fields the SAM deciphered from `sealed`): the SAM checks they cover the debit (5.2a)."""
        try:
            d["tsn"], mac1, clear = self.sam.purchase_mac1_sealed(session, sealed)
        except BalanceTooLow as exc:
            raise _NothingToTake(str(exc)) from None
        except SamError as exc:
            raise self._sam_refusal(exc, op, asn, "sam_refused", f"Terminal cannot debit this card ({exc})") from None
        if d["tsn"] <= self.logged_tsn:
            raise Refusal(
                "sam_sequence",
                "Terminal fault: SAM transaction numbers behind the log, nothing charged. Call maintenance",
                asn,
                {"tsn": d["tsn"], "last_logged_tsn": self.logged_tsn},
            )
        return mac1, clear

    # --- the two-purse sale ---------------------------------------------------------------------------------

    def two_purse_purchase(self, transmit, info: cp.CardInfo, amount: int, now: dt.datetime, sale: dict, notes):
        t = self.config.terminal
        asn = info.asn_hex
        policy = sp.policy_for(self._allowances(asn))
        try:
            sealed = sp.parse_two_purse(transmit(sp.two_purse_command(amount, t.id_bytes, policy)))
        except pp.InsufficientBalance:
            raise Refusal(
                "insufficient_balance",
                f"Insufficient balance for {format_yuan(amount)} (subsidy and cash together): top up first",
                asn,
                {"amount": amount},
            ) from None
        except cp.CardProtocolError as exc:
            raise Refusal(
                "card_error", "Card could not start the payment: tap again", asn, {"problem": str(exc)}
            ) from None
        date, time_ = bcd.encode_date_time(now.astimezone(t.timezone))
        d = {
            "op": "pos.purchase",
            "amount": amount,
            "counter": sealed.cash_counter,
            "random": sealed.random.hex(),
            "date": date.hex(),
            "time": time_.hex(),
            "key_version": sealed.key_version,
            "algorithm": sealed.algorithm.name,  # type: ignore[attr-defined]
            "subsidy_part": 0,  # from the split the SAM deciphers (5.2a, 5.6)
        }
        insufficient = Refusal(
            "insufficient_balance",
            f"Insufficient balance for {format_yuan(amount)} (subsidy and cash together): top up first",
            asn,
            {"amount": amount},
        )
        try:
            mac1, clear = self._take_tsn(d, self._subsidy_purchase_session(info, d), asn, "pos.purchase", sealed.sealed)
            init = sp.open_two_purse(sealed, clear, amount)
        except (_NothingToTake, pp.InsufficientBalance):
            raise insufficient from None
        except cp.CardProtocolError as exc:
            raise Refusal(
                "card_error", "Card could not start the payment: tap again", asn, {"problem": str(exc)}
            ) from None
        d.update(
            {
                "balance_before": init.cash_balance,
                "subsidy_part": init.subsidy_part,
                "cash_part": init.cash_part,
                "subsidy_counter": init.subsidy_counter,
                "subsidy_balance_before": init.subsidy_balance,
                # the intent only: the expiry an undo's refund of the subsidy share keeps (card-application 5.6)
                "subsidy_expiry": None
                if getattr(self, "subsidy_expiry_now", None) is None
                else bcd.encode_date(self.subsidy_expiry_now).hex(),
                "policy": policy,
                **sale,
            }
        )
        session = self._subsidy_purchase_session(info, d)
        intent = self._open(now, "pos.purchase", asn, f"Charging {format_yuan(amount)}", d)
        self.logged_tsn = d["tsn"]
        self.sale_intent_seq = intent.seq
        detail = self._finish(
            transmit,
            "pos.purchase",
            info,
            d,
            intent,
            pp.debit_command(d["tsn"], date, time_, mac1, bool(sale.get("pin_verified"))),
            sp.parse_two_purse_debit,
            lambda proof: self.sam.verify_purchase_mac2(session, d["tsn"], proof.mac),
            now,
        )
        self.sale_intent_seq = None
        if getattr(self, "verified_subsidy", None) == (asn, init.subsidy_balance):
            # The balance a load's MAC3 verified on this tap, less the share MAC2 verified: a receipt may print it
            # (added after the outcome was logged; not part of the record).
            detail["subsidy_balance_verified"] = init.subsidy_balance - init.subsidy_part
        split = f" (subsidy {format_yuan(init.subsidy_part)}, cash {format_yuan(init.cash_part)})"
        extra = "".join(f" ({n})" for n in notes)
        return Decision(
            True,
            "pos.purchase",
            "paid",
            f"Paid {format_yuan(amount)}{split}{extra}",
            asn=asn,
            logged=False,
            detail=detail,
        )


__all__ = ["SubsidySteps", "KeyUsageError"]
