"""Purse accounting: each completed purse transaction moves a card's balance once, with its TAC checked.

A part of `central.store.Platform`: it works on the platform database through `self.conn` and `self._txn()`.
"""
from __future__ import annotations

import json

from central.db import PURSE_SIGN
from common import sync_protocol as p


class PurseAccounts:
    def _account(self, terminal_id: str, e: p.WireEvent) -> None:
        """A completed purse transaction, seen exactly once (this runs only for a new record of the chain):
        check its TAC, then move the card's balance; a TAC that does not verify moves nothing."""
        d = json.loads(e.detail)
        status = self._check_tac(terminal_id, e, d)
        self.conn.execute("INSERT INTO purse_transactions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          (terminal_id, e.seq, e.asn, e.kind, d["counter"], d["amount"], d["balance_after"], d["tac"],
                           status))
        if status != "bad":
            self.conn.execute("UPDATE cards SET balance_cents = balance_cents + ? WHERE asn = ?",
                              (PURSE_SIGN[e.kind] * d["amount"], e.asn))
        if d.get("action_id"):
            self.conn.execute("UPDATE card_actions SET status = 'done' WHERE action_id = ?", (d["action_id"],))

    def _check_tac(self, terminal_id: str, e: p.WireEvent, d: dict) -> str:
        if self.tac_sam is None:
            return "unchecked"
        from sam.interface import Algorithm, CardIdentity, SamError

        enterprise = self.conn.execute("SELECT enterprise_id FROM terminals WHERE terminal_id = ?",
                                       (terminal_id,)).fetchone()[0]
        card = CardIdentity(bytes.fromhex(e.asn), bytes.fromhex(enterprise), d["key_version"],
                            Algorithm[d["algorithm"]])
        try:
            self.tac_sam.verify_tac(card, amount=d["amount"], tx_type=0x06 if e.kind == "pos.purchase" else 0x02,
                                    terminal_id=bytes.fromhex(terminal_id), tsn=d.get("tsn", 0) if e.kind ==
                                    "pos.purchase" else 0, date=bytes.fromhex(d["date"]),
                                    time=bytes.fromhex(d["time"]), counter=d["counter"],
                                    balance_after=d["balance_after"], tac=bytes.fromhex(d["tac"]))
        except SamError:
            return "bad"
        return "ok"

    def purse_transactions(self, asn: str) -> list[dict]:
        rows = self.conn.execute("SELECT terminal_id, seq, kind, counter, amount_cents, balance_after_cents, "
                                 "tac_status FROM purse_transactions WHERE asn = ? ORDER BY kind, counter",
                                 (asn,)).fetchall()
        keys = ("terminal_id", "seq", "kind", "counter", "amount_cents", "balance_after_cents", "tac_status")
        return [dict(zip(keys, r)) for r in rows]
