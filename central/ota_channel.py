"""The platform's OTA channel: secured packets to a SIM through the SMPP gateway, PoRs back, jobs kept durably.

Every OTA operation is a job in its own SQLite file (`ota.db` beside the platform database): the card's counter is
taken and stored before a packet leaves (so no two packets ever share one), the operation's state is stored after
each PoR, and a job whose gateway died between a submit and its PoR resumes from that state. What the platform shows
for a job: `sent` (the SMSC took it), `delivered` (receipt DELIVRD: the phone has it), `expired` (receipt EXPIRED:
the phone stayed off past the validity period and never will get it), `done` (settled by its PoR), `failed`.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from central import ota_ops
from central.ota_gateway import DCS_8BIT_CLASS2, PID_SIM_DATA_DOWNLOAD, SmppGateway
from common import ota

SCHEMA = """
CREATE TABLE IF NOT EXISTS ota_counters (asn TEXT PRIMARY KEY, cntr INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ota_jobs (
    job_id TEXT PRIMARY KEY, asn TEXT NOT NULL, msisdn TEXT NOT NULL, op TEXT NOT NULL, status TEXT NOT NULL,
    cntr INTEGER, message_ids TEXT NOT NULL DEFAULT '[]', state TEXT NOT NULL DEFAULT '{}',
    note TEXT NOT NULL DEFAULT '',
    path TEXT NOT NULL DEFAULT 'ota',            -- 'ota', or 'tap' once handed to the next-tap path
    credit_claimed INTEGER NOT NULL DEFAULT 0    -- 1 from the moment the OTA path may change the card
);
-- What the administrator asked for (e.g. {"amount": 2500}), so a job can be resumed by its ID alone.
CREATE TABLE IF NOT EXISTS ota_job_params (job_id TEXT PRIMARY KEY, params TEXT NOT NULL);
"""

# What `onecard platform ota-jobs` shows for a job: its status, or `fallen back` once handed to the next tap.
SHOWN_FALLEN_BACK = "fallen back"


class OtaStore:
    def __init__(self, path: str | Path) -> None:
        self.conn = sqlite3.connect(str(path), isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def next_counter(self, asn: str) -> int:
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            row = self.conn.execute("SELECT cntr FROM ota_counters WHERE asn = ?", (asn,)).fetchone()
            cntr = (row[0] if row else 0) + 1
            self.conn.execute(
                "INSERT INTO ota_counters (asn, cntr) VALUES (?, ?) "
                "ON CONFLICT(asn) DO UPDATE SET cntr = excluded.cntr",
                (asn, cntr),
            )
        return cntr

    def create(self, job_id: str, asn: str, msisdn: str, op: str) -> None:
        self.conn.execute(
            "INSERT INTO ota_jobs (job_id, asn, msisdn, op, status) VALUES (?, ?, ?, ?, 'new')",
            (job_id, asn, msisdn, op),
        )

    def update(self, job_id: str, **fields) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        self.conn.execute(f"UPDATE ota_jobs SET {cols} WHERE job_id = ?", (*fields.values(), job_id))

    def claim_credit(self, job_id: str) -> bool:
        """The OTA path takes the right to change the card (before it sends CREDIT); False: handed to the tap."""
        cur = self.conn.execute("UPDATE ota_jobs SET credit_claimed = 1 WHERE job_id = ? AND path = 'ota'", (job_id,))
        return cur.rowcount == 1

    def hand_over(self, job_id: str) -> bool:
        """Give the job to the next-tap path: only while the OTA path has not claimed the card, or after the card
        proved the OTA credit never happened. Exactly one of `claim_credit` and `hand_over` wins a race (one
        SQLite write each, serialised by the database)."""
        cur = self.conn.execute(
            "UPDATE ota_jobs SET path = 'tap', note = 'handed to the next-tap path' WHERE job_id = ? AND path = 'ota' "
            "AND (credit_claimed = 0 OR status = 'failed')",
            (job_id,),
        )
        return cur.rowcount == 1

    def set_params(self, job_id: str, params: dict) -> None:
        """Record what the job was asked to do (once: a second call for the same job keeps the first)."""
        self.conn.execute(
            "INSERT OR IGNORE INTO ota_job_params (job_id, params) VALUES (?, ?)", (job_id, json.dumps(params))
        )

    def params(self, job_id: str) -> dict | None:
        row = self.conn.execute("SELECT params FROM ota_job_params WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def jobs(self) -> list[dict]:
        """Every job, oldest first, with `shown`: its status, or `fallen back` once the next tap owns it."""
        ids = [r[0] for r in self.conn.execute("SELECT job_id FROM ota_jobs ORDER BY rowid")]
        out = []
        for job_id in ids:
            d = self.job(job_id)
            d["params"] = self.params(job_id) or {}
            d["shown"] = SHOWN_FALLEN_BACK if d["path"] == "tap" else d["status"]
            out.append(d)
        return out

    def job(self, job_id: str) -> dict:
        row = self.conn.execute(
            "SELECT job_id, asn, msisdn, op, status, cntr, message_ids, state, note, path, credit_claimed "
            "FROM ota_jobs WHERE job_id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            raise KeyError(job_id)
        keys = (
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
        )
        d = dict(zip(keys, row))
        d["message_ids"], d["state"] = json.loads(d["message_ids"]), json.loads(d["state"])
        return d


def _dump_topup(top: ota_ops.OtaTopUp) -> str:
    return json.dumps(
        {
            "step": top.step.value,
            "init": None
            if top.init is None
            else {
                **dataclasses.asdict(top.init),
                "card_random": top.init.card_random.hex(),
                "mac1": top.init.mac1.hex(),
            },
            "when": None if top.when is None else [top.when[0].hex(), top.when[1].hex()],
            "reason": top.reason,
        }
    )


def _load_topup(top: ota_ops.OtaTopUp, doc: dict) -> None:
    top.step = ota_ops.Step(doc["step"])
    if doc.get("init"):
        i = doc["init"]
        top.init = ota_ops.LoadInit(
            i["balance"],
            i["counter"],
            i["key_version"],
            i["algorithm"],
            bytes.fromhex(i["card_random"]),
            bytes.fromhex(i["mac1"]),
        )
    if doc.get("when"):
        top.when = (bytes.fromhex(doc["when"][0]), bytes.fromhex(doc["when"][1]))
    top.reason = doc.get("reason", "")


@dataclass
class OtaChannel:
    gateway: SmppGateway
    otasam: object  # sam.ota_keys.OtaSam
    store: OtaStore
    validity_seconds: int = 3600
    por_wait_seconds: float = 5.0
    clock: Callable[[], tuple[bytes, bytes]] = lambda: (b"\x20\x26\x01\x01", b"\x00\x00\x00")  # BCD date, time

    def send(self, job_id: str, card, msisdn: str, data: bytes) -> int:
        """Secure `data` under a fresh counter (stored first) and submit it; the counter used."""
        asn = card.asn.hex()
        cntr = self.store.next_counter(asn)
        pkt = self.otasam.secure_command(card, ota.ONECARD_TAR, cntr, data)
        mids = []
        for ud in ota.split_sms(bytes([ota.IEI_CPI, 0]), pkt, cntr & 0xFFFF):
            mid = self.gateway.submit(
                msisdn,
                ud,
                pid=PID_SIM_DATA_DOWNLOAD,
                dcs=DCS_8BIT_CLASS2,
                udhi=True,
                validity_seconds=self.validity_seconds,
            )
            if mid is None:
                self.store.update(job_id, status="expired", cntr=cntr, note="the SMSC did not take it within validity")
                return cntr
            mids.append(mid)
        self.store.update(job_id, status="sent", cntr=cntr, message_ids=json.dumps(mids))
        return cntr

    def await_por(self, job_id: str, card, msisdn: str, cntr: int, seconds: float | None = None) -> ota.Por | None:
        """The PoR of packet `cntr`, or None when none came in time (or the SMS expired)."""
        job = self.store.job(job_id)
        mids = set(job["message_ids"])
        waited, step = 0.0, 0.05
        limit = self.por_wait_seconds if seconds is None else seconds
        while True:
            self.gateway.poll()
            for r in list(self.gateway.receipts):
                if r.message_id in mids:
                    self.gateway.receipts.remove(r)
                    if r.state == "EXPIRED":
                        self.store.update(
                            job_id, status="expired", note="the phone stayed off past the validity period"
                        )
                        return None
                    if r.state == "DELIVRD" and self.store.job(job_id)["status"] == "sent":
                        self.store.update(job_id, status="delivered")
            for m in list(self.gateway.incoming):
                if m.source != msisdn or m.pid != PID_SIM_DATA_DOWNLOAD or not m.udhi:
                    continue
                try:
                    por = self.otasam.open_por(card, m.user_data)
                except ota.OtaError:
                    continue  # not a PoR under this card's keys: never settles anything
                self.gateway.incoming.remove(m)
                if por.cntr == cntr:
                    return por
            if waited >= limit:
                return None
            self.gateway.sleep(step)
            waited += step

    def top_up(
        self, job_id: str, card, purse_card, msisdn: str, amount: int, terminal_id: bytes, purse_sam
    ) -> ota_ops.OtaTopUp:
        """Run (or resume) a top-up job to its end or until a PoR does not come; the OtaTopUp tells which."""
        top = ota_ops.OtaTopUp(purse_sam, purse_card, amount, terminal_id)
        try:
            job = self.store.job(job_id)
        except KeyError:
            self.store.create(job_id, card.asn.hex(), msisdn, "topup")
            data: bytes | None = top.start()
        else:
            if job["status"] in ("done", "failed") or job["path"] != "ota":
                _load_topup(top, job["state"])
                return top
            _load_topup(top, job["state"]) if job["state"] else None
            data = top.on_no_por() if job["state"] else top.start()  # resumed: the last PoR never reached us
        while data is not None:
            if top.step is ota_ops.Step.CREDIT and not self.store.claim_credit(job_id):
                top.step, top.reason = ota_ops.Step.FAILED, "handed to the next-tap path before the OTA credit"
                self.store.update(job_id, state=_dump_topup(top), status="failed", note=top.reason)
                return top
            self.store.update(job_id, state=_dump_topup(top))
            cntr = self.send(job_id, card, msisdn, data)
            if self.store.job(job_id)["status"] == "expired":
                return top
            por = self.await_por(job_id, card, msisdn, cntr)
            if por is None:
                self.store.update(job_id, state=_dump_topup(top))
                return top  # expired or not yet: a later `top_up` with the same job resumes
            data = top.on_por(por, *self.clock())
        self.store.update(job_id, state=_dump_topup(top), status=top.step.value, note=top.reason)
        return top


def fall_back_to_tap(store: OtaStore, platform, job_id: str, amount_cents_params: dict) -> bool:
    """Hand an OTA top-up that has not touched the card (or proved it never did) to the next-tap path: queued as the
    platform's card action with the job's ID, so even a repeated hand-over queues it once. False: the OTA path owns
    it (it may have loaded the card); settle it over the air instead."""
    if not store.hand_over(job_id) and store.job(job_id)["path"] != "tap":
        return False
    job = store.job(job_id)
    if not any(a["action_id"] == job_id for a in platform.card_actions(job["asn"])):
        platform.add_card_action(job["asn"], "topup", amount_cents_params, action_id=job_id)
    return True
