"""The platform's OTA channel: secured packets to a SIM through the SMPP gateway, PoRs back, jobs kept durably.

Every OTA operation is a job in the platform database (central/ota_jobs.py): the card's counter is taken and stored
before a packet leaves (so no two packets ever share one), the operation's state is stored after each PoR, and a job
whose gateway died between a submit and its PoR resumes from that state. A top-up's load, once its PoR proves it
(MAC3 and TAC checked by the platform's SAM), is booked in the purse ledger in the same transaction as the job's
change to `done`, once per job ID. Job status: `sent` (the SMSC took it), `expired` (receipt EXPIRED: the phone
stayed off past the validity period and never will get it), `done` (settled by its PoR), `failed`; beside it the
last receipt (`delivery`: DELIVRD, the phone has it) and the last PoR's status (`por`: OK or the SIM's refusal).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Callable

from central import ota_ops
from central.ota_gateway import DCS_8BIT_CLASS2, PID_SIM_DATA_DOWNLOAD, SmppGateway
from common import ota

# What `onecard platform ota-jobs` shows for a job once the next-tap path owns it.
SHOWN_FALLEN_BACK = "fell back to tap"


def shown(job: dict) -> str:
    """Where a job stands for the administrator: `fell back to tap`, `expired` (never reached the phone), `PoR ok`,
    `PoR error STATUS`, `delivered` (the phone has it, no PoR yet), `sent` (the SMSC took it), `new`."""
    if job["path"] == "tap":
        return SHOWN_FALLEN_BACK
    if job["status"] == "expired":
        return "expired"
    if job["por"]:
        return "PoR ok" if job["por"] == "OK" else f"PoR error {job['por']}"
    if job["delivery"] == "DELIVRD":
        return "delivered"
    return job["status"]


class OtaStore:
    """The OTA jobs of one platform database (central/ota_jobs.py): a job's rows are in the platform database, so
    that its settlement and its booking in the purse ledger are one transaction. `close()` leaves the platform
    open: its owner closes it."""

    def __init__(self, platform) -> None:
        self.platform = platform

    def close(self) -> None:
        pass

    def next_counter(self, asn: str) -> int:
        return self.platform.ota_next_counter(asn)

    def create(self, job_id: str, asn: str, msisdn: str, op: str) -> None:
        self.platform.ota_create(job_id, asn, msisdn, op)

    def update(self, job_id: str, **fields) -> None:
        self.platform.ota_update(job_id, **fields)

    def claim_credit(self, job_id: str) -> bool:
        return self.platform.ota_claim_credit(job_id)

    def hand_over(self, job_id: str, action: str | None = None, params: dict | None = None) -> bool:
        return self.platform.ota_hand_over(job_id, action, params)

    def set_params(self, job_id: str, params: dict) -> None:
        self.platform.ota_set_params(job_id, params)

    def params(self, job_id: str) -> dict | None:
        return self.platform.ota_params(job_id)

    def job(self, job_id: str) -> dict:
        return self.platform.ota_job(job_id)

    def jobs(self) -> list[dict]:
        """Every job, oldest first, with its `params` and `shown` (see `shown`)."""
        out = []
        for d in self.platform.ota_jobs():
            d["params"] = self.params(d["job_id"]) or {}
            d["shown"] = shown(d)
            out.append(d)
        return out


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
            "aid_index": top.aid_index,
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
    top.aid_index = min(doc.get("aid_index", 0), len(top.aids) - 1)


@dataclass
class OtaChannel:
    gateway: SmppGateway
    otasam: object  # sam.ota_keys.OtaSam
    store: OtaStore
    validity_seconds: int = 3600
    por_wait_seconds: float = 5.0
    clock: Callable[[], tuple[bytes, bytes]] = lambda: (b"\x20\x26\x01\x01", b"\x00\x00\x00")  # BCD date, time

    def send(self, job_id: str, card, msisdn: str, data: bytes, tar: bytes = ota.ONECARD_TAR) -> int:
        """Secure `data` under a fresh counter (stored first) and submit it to `tar`; the counter used."""
        asn = card.asn.hex()
        cntr = self.store.next_counter(asn)
        pkt = self.otasam.secure_command(card, tar, cntr, data)
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
        self.store.update(
            job_id, status="sent", cntr=cntr, message_ids=json.dumps(mids), delivery="", por="", sent_at=_now(self)
        )
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
                    if r.state == "DELIVRD":
                        self.store.update(job_id, delivery="DELIVRD", delivered_at=_now(self))
            for m in list(self.gateway.incoming):
                if m.source != msisdn or m.pid != PID_SIM_DATA_DOWNLOAD or not m.udhi:
                    continue
                try:
                    por = self.otasam.open_por(card, m.user_data)
                except ota.OtaError:
                    continue  # not a PoR under this card's keys: never settles anything
                self.gateway.incoming.remove(m)
                if por.cntr == cntr:
                    self.store.update(job_id, por=por.status.name, por_at=_now(self))
                    return por
            if waited >= limit:
                return None
            self.gateway.sleep(step)
            waited += step

    def top_up(
        self,
        job_id: str,
        card,
        purse_card,
        msisdn: str,
        amount: int,
        terminal_id: bytes,
        purse_sam,
        aid: bytes = ota_ops.AID,
        aids: tuple[bytes, ...] | None = None,
    ) -> ota_ops.OtaTopUp:
        """Run (or resume) a top-up job to its end or until a PoR does not come; the OtaTopUp tells which. `aid`:
        ota_ops.sub_application_aid(enterprise) for a sub-application of a SIM (its own OTA key set secures it)."""
        top = ota_ops.OtaTopUp(purse_sam, purse_card, amount, terminal_id, aid=aid, aids=aids)
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
            was = top.step
            data = top.on_por(por, *self.clock())
            if was is ota_ops.Step.PROVE and top.step is ota_ops.Step.FAILED and _proves_no_load(por):
                self.store.update(job_id, card_unloaded=1)  # the card proved it: the next tap may load it
        if top.step is ota_ops.Step.DONE and top.proof is not None:
            # The card proved the load and the platform's SAM checked its MAC3 and TAC: booked in the purse ledger
            # in the same transaction as the job's change to done, once per job ID.
            self.store.platform.ota_settle_load(
                job_id,
                top.proof,
                terminal_id,
                purse_card.key_version,
                purse_card.algorithm.name,
                _dump_topup(top),
                top.reason,
            )
            return top
        self.store.update(job_id, state=_dump_topup(top), status=top.step.value, note=top.reason)
        return top

    def secured(self, job_id: str, card, msisdn: str, op_name: str, op) -> object:
        """Run (or resume) a status change (`lock`, `unlock`: ota_ops.status_change) or a deletion (`delete`:
        ota_ops.OtaDeletion) job to its end or until a PoR does not come. A deletion's frozen balance, once the
        card proved it, is settled by the platform (`ota_settle_deletion`: void, refund, cancel, and the job's
        `settled`, in one transaction) before the next packet leaves."""
        try:
            job = self.store.job(job_id)
        except KeyError:
            self.store.create(job_id, card.asn.hex(), msisdn, op_name)
            data: bytes | None = op.start()
        else:
            if job["state"]:
                _load_secured(op, job["state"])
            if job["status"] in ("done", "failed"):
                return op
            if job["state"] and job["status"] == "sent" and job["cntr"]:
                # The last packet may still reach the phone (it was off) or its PoR be on its way: wait for it
                # first; only when none comes is the phase run again (its PoR went to a gateway that died).
                por = self.await_por(job_id, card, msisdn, job["cntr"])
                if self.store.job(job_id)["status"] == "expired":
                    return op
                data = op.on_no_por() if por is None else op.on_por(por)
            else:
                data = op.on_no_por() if job["state"] else op.start()
        while True:
            if data is None and isinstance(op, ota_ops.OtaDeletion) and op.settle_due:
                op.settled = True
                op.settlement = self.store.platform.ota_settle_deletion(job_id, op.frozen, _dump_secured(op))
                data = op.resume_after_settlement()
            if data is None:
                break
            self.store.update(job_id, state=_dump_secured(op))
            cntr = self.send(job_id, card, msisdn, data)
            if self.store.job(job_id)["status"] == "expired":
                return op
            por = self.await_por(job_id, card, msisdn, cntr)
            if por is None:
                self.store.update(job_id, state=_dump_secured(op))
                return op
            data = op.on_por(por)
        self.store.update(job_id, state=_dump_secured(op), status=op.step.value, note=op.reason)
        return op


def _dump_secured(op) -> str:
    if isinstance(op, ota_ops.OtaDeletion):
        return json.dumps(op.dump())
    return json.dumps({"step": op.step.value, "aid_index": op.aid_index, "reason": op.reason})


def _load_secured(op, doc: dict) -> None:
    if isinstance(op, ota_ops.OtaDeletion):
        op.load(doc)
        return
    op.step, op.aid_index, op.reason = ota_ops.Step(doc["step"]), doc["aid_index"], doc.get("reason", "")


def _now(channel: OtaChannel) -> str:
    return channel.store.platform._now()


def _proves_no_load(por: ota.Por) -> bool:
    try:
        return ota_ops.parse_prove(por) is None
    except ota_ops.OtaOpError:
        return False


def fall_back_to_tap(store: OtaStore, platform, job_id: str, amount_cents_params: dict) -> bool:
    """Hand an OTA top-up that has not touched the card (or proved it never did) to the next-tap path: queued as the
    platform's card action with the job's ID, in the same transaction as the hand-over, so even a repeated
    hand-over queues it once. False: the OTA path owns it (it may have loaded the card); settle it over the air."""
    return store.hand_over(job_id, "topup", amount_cents_params)
