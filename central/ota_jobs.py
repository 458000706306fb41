"""The platform's over-the-air jobs (docs/ota.md 9) and the booking of an OTA purse load in the purse ledger.

A part of `central.store.Platform`. A job's rows live in the platform database, so that what settles it is one
transaction: the load its PoR proved (TAC checked at the platform) is booked in `purse_transactions` (terminal
`ota`, `seq` from `ota_loads`) together with the job's change to `done`, once per job ID; a hand-over to the
next-tap path and its card action are one transaction too, and neither is possible once the other happened.
"""

from __future__ import annotations

import json
import logging

from central.db import PlatformError, _yuan
from common import money_records as mr
from common.logs import log_event

log = logging.getLogger("platform")

#: purse_transactions.terminal_id of a load made over the air: never a terminal's 12 hex digits.
OTA_LEDGER_TERMINAL = "ota"

_JOB_KEYS = (
    "job_id",
    "asn",
    "msisdn",
    "op",
    "status",
    "cntr",
    "message_ids",
    "state",
    "note",
    "path",
    "credit_claimed",
    "card_unloaded",
    "delivery",
    "por",
    "created_at",
    "sent_at",
    "delivered_at",
    "por_at",
)
_UPDATABLE = set(_JOB_KEYS) - {"job_id", "asn", "op", "created_at"}


class OtaJobs:
    def ota_next_counter(self, asn: str) -> int:
        with self._txn():
            row = self.conn.execute("SELECT cntr FROM ota_counters WHERE asn = ?", (asn,)).fetchone()
            cntr = (row[0] if row else 0) + 1
            self.conn.execute(
                "INSERT INTO ota_counters (asn, cntr) VALUES (?, ?) "
                "ON CONFLICT (asn) DO UPDATE SET cntr = excluded.cntr",
                (asn, cntr),
            )
        return cntr

    def ota_create(self, job_id: str, asn: str, msisdn: str, op: str) -> None:
        with self._txn():
            (n,) = self.conn.execute("SELECT coalesce(max(n), 0) + 1 FROM ota_jobs").fetchone()
            self.conn.execute(
                "INSERT INTO ota_jobs (job_id, n, asn, msisdn, op, status, created_at) "
                "VALUES (?, ?, ?, ?, ?, 'new', ?)",
                (job_id, n, asn, msisdn, op, self._now()),
            )

    def ota_update(self, job_id: str, **fields) -> None:
        bad = set(fields) - _UPDATABLE
        if bad:
            raise ValueError(f"ota_jobs has no updatable column {sorted(bad)[0]!r}")
        cols = ", ".join(f"{k} = ?" for k in fields)
        self.conn.execute(f"UPDATE ota_jobs SET {cols} WHERE job_id = ?", (*fields.values(), job_id))

    def ota_claim_credit(self, job_id: str) -> bool:
        """The OTA path takes the right to change the card (before it sends CREDIT); False: handed to the tap."""
        with self._txn():
            cur = self.conn.execute(
                "UPDATE ota_jobs SET credit_claimed = 1 WHERE job_id = ? AND path = 'ota'", (job_id,)
            )
            return cur.rowcount == 1

    def ota_hand_over(self, job_id: str, action: str | None = None, params: dict | None = None) -> bool:
        """Give the job to the next-tap path, and (with `action`) queue its card action under the job's ID, in one
        transaction: only while the OTA path has not claimed the card, or after the card proved the OTA credit never
        happened (GET TRANSACTION PROVE: no load at the counter), and never once an OTA load of the job is booked.
        Exactly one of `ota_claim_credit` and `ota_hand_over` wins a race (serialised by the database). True also
        when the job was already handed over (its card action is then queued once)."""
        with self._txn():
            booked = self.conn.execute("SELECT 1 FROM ota_loads WHERE job_id = ?", (job_id,)).fetchone()
            cur = self.conn.execute(
                "UPDATE ota_jobs SET path = 'tap', note = 'handed to the next-tap path' WHERE job_id = ? "
                "AND path = 'ota' AND (credit_claimed = 0 OR card_unloaded = 1) AND NOT ?",
                (job_id, booked is not None),
            )
            if cur.rowcount != 1:
                row = self.conn.execute("SELECT path, asn FROM ota_jobs WHERE job_id = ?", (job_id,)).fetchone()
                if row is None or row[0] != "tap":
                    return False
            if action is not None:
                (asn,) = self.conn.execute("SELECT asn FROM ota_jobs WHERE job_id = ?", (job_id,)).fetchone()
                if self.conn.execute("SELECT 1 FROM card_actions WHERE action_id = ?", (job_id,)).fetchone() is None:
                    self.add_card_action(asn.upper(), action, params or {}, action_id=job_id)
            return True

    def ota_set_params(self, job_id: str, params: dict) -> None:
        """Record what the job was asked to do (once: a second call for the same job keeps the first)."""
        self.conn.execute(
            "INSERT INTO ota_job_params (job_id, params) VALUES (?, ?) ON CONFLICT (job_id) DO NOTHING",
            (job_id, json.dumps(params)),
        )

    def ota_params(self, job_id: str) -> dict | None:
        row = self.conn.execute("SELECT params FROM ota_job_params WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def ota_job(self, job_id: str) -> dict:
        row = self.conn.execute(f"SELECT {', '.join(_JOB_KEYS)} FROM ota_jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        d = dict(zip(_JOB_KEYS, row))
        d["message_ids"], d["state"] = json.loads(d["message_ids"]), json.loads(d["state"])
        return d

    def ota_jobs(self) -> list[dict]:
        ids = [r[0] for r in self.conn.execute("SELECT job_id FROM ota_jobs ORDER BY n")]
        return [self.ota_job(i) for i in ids]

    def ota_load(self, job_id: str) -> dict | None:
        keys = (
            "job_id",
            "seq",
            "asn",
            "terminal_id",
            "counter",
            "amount_cents",
            "balance_after_cents",
            "tac",
            "ledger",
        )
        row = self.conn.execute(f"SELECT {', '.join(keys)} FROM ota_loads WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else dict(zip(keys, row))

    def ota_settle_load(
        self, job_id: str, proof, terminal_id: bytes, key_version: int, algorithm: str, state: str, note: str
    ) -> str:
        """Book the load `proof` (ota_ops.LoadProof, its MAC3 and TAC verified by the platform's SAM) of job
        `job_id` in the purse ledger and mark the job done, in one transaction, once per job ID: a second call
        (a replayed PoR, a resumed job) books nothing more. Returns how the ledger took it: 'accounted', or
        'waiting' / 'held' (held_money, with its reason: `onecard platform held`)."""
        with self._txn():
            job = self.ota_job(job_id)
            done = self.ota_load(job_id)
            if done is not None:
                if (done["counter"], done["amount_cents"], done["tac"]) != (
                    proof.counter,
                    proof.amount,
                    proof.tac.hex(),
                ):
                    raise PlatformError(f"OTA job {job_id} already booked a different load; nothing changed")
                return done["ledger"]
            if (
                job["path"] != "ota"
                or self.conn.execute("SELECT 1 FROM card_actions WHERE action_id = ?", (job_id,)).fetchone()
            ):
                raise PlatformError(f"OTA job {job_id} was handed to the next-tap path; its load is booked there")
            asn = job["asn"].upper()
            (seq,) = self.conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM ota_loads").fetchone()
            d = {
                "amount": proof.amount,
                "counter": proof.counter,
                "date": proof.date.hex(),
                "time": proof.time.hex(),
                "key_version": key_version,
                "algorithm": algorithm,
                "intent_seq": seq,
                "tac": proof.tac.hex(),
                "proof": proof.mac3.hex()[:16],
                "balance_after": proof.balance_after,
                "resolved_at_next_tap": False,
                "action_id": job_id,
            }
            mr.check_money_detail(mr.LOAD, d)
            verdict = self._placement(asn, mr.LOAD, d)
            if verdict is None:
                self._book(OTA_LEDGER_TERMINAL, seq, asn, mr.LOAD, d, "ok")
                ledger = "accounted"
            else:
                status, code, reason = verdict
                self.conn.execute(
                    "INSERT INTO held_money (terminal_id, seq, asn, kind, counter, amount_cents, balance_after_cents, "
                    "tac, tac_status, detail, reason_code, reason, status, held_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'ok', ?, ?, ?, ?, ?)",
                    (
                        OTA_LEDGER_TERMINAL,
                        seq,
                        asn,
                        mr.LOAD,
                        proof.counter,
                        proof.amount,
                        proof.balance_after,
                        d["tac"],
                        json.dumps(d),
                        code,
                        reason,
                        status,
                        self._now(),
                    ),
                )
                ledger = status
                log_event(
                    log,
                    "platform.money_held",
                    logging.WARNING,
                    terminal=OTA_LEDGER_TERMINAL,
                    seq=seq,
                    asn=asn,
                    kind=mr.LOAD,
                    status=status,
                    reason_code=code,
                    text=f"OTA load of job {job_id} not accounted: {reason}; `onecard platform held` lists it",
                )
            self.conn.execute(
                "INSERT INTO ota_loads VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    seq,
                    asn,
                    terminal_id.hex(),
                    proof.counter,
                    proof.amount,
                    proof.balance_after,
                    d["tac"],
                    d["date"],
                    d["time"],
                    self._now(),
                    ledger,
                ),
            )
            self.ota_update(job_id, state=state, status="done", note=note)
            if ledger == "accounted":
                self._release_waiting(asn)
            self._history(
                asn,
                "ota_load",
                f"over-the-air top-up {job_id} of {_yuan(proof.amount)} yuan proven by the card (TAC checked), "
                f"{ledger}",
            )
        return ledger

    def ota_settle_deletion(self, job_id: str, frozen, state: str) -> dict:
        """The card proved the balance it froze (APPLICATION BLOCK over the air, its MAC checked by the platform's
        SAM): the card is VOIDED with that proof and cancelled as `cancel --settle` does (the platform's balance
        refunded, blacklisted, every terminal of the enterprise told), and the job's state (`settled`) stored, in one
        transaction, once per job: a second call changes nothing. Returns {"frozen_cents", "refunded_cents",
        "blacklist_version"} (refunded 0 and version None when the card was already cancelled)."""
        from central.db import CANCELLED, REPLACED

        with self._txn():
            job = self.ota_job(job_id)
            if job["state"].get("settled"):
                return dict(job["state"].get("settlement") or {})
            asn = job["asn"].upper()
            c = self.card(asn)
            if c["status"] == REPLACED:
                raise PlatformError(f"card {asn} was replaced; its deletion is not settled here; nothing changed")
            refund, version = 0, None
            if c["status"] != CANCELLED:
                self.record_void(asn, frozen.balance, frozen.proof.hex(), OTA_LEDGER_TERMINAL)
                if frozen.challenge:
                    # what the card proved besides (the subsidy purse of P1 01), its MAC checked by this SAM
                    self._store_void_purse(asn, frozen.purse(), "ok")
                refund = self.card(asn)["balance_cents"]
                version = self.cancel(asn, settle=True)
                self._history(
                    asn,
                    "deleted_over_the_air",
                    f"application deleted over the air by job {job_id}; {_yuan(refund)} yuan refunded "
                    f"(the card froze {_yuan(frozen.balance)} yuan)",
                )
            out = {"frozen_cents": frozen.balance, "refunded_cents": refund, "blacklist_version": version}
            doc = json.loads(state)
            doc["settlement"] = out
            self.ota_update(job_id, state=json.dumps(doc))
        return out
