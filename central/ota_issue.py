"""Issuing over the air (空中发卡, docs/ota.md 5.4): the platform installs and personalises enterprise B's
sub-application on an employee's SIM through SMS-PP, the issuing station's sequence (docs/card-application.md 9.6
CREATE SUB-APPLICATION, 8.4 washing, 8.5 issuing) as remote-APDU scripts.

The packets travel under the card issuer's OTA keys (enterprise 00000000, ASN = the card serial, TAR
`ota.ISSUER_TAR`: B's sub-application has no keys of its own yet); every command inside stays end-to-end secured by the
card's own keys (CREATE under K_CARD, PUT KEY / COMMIT under B's K_TRANSPORT, personalisation under B's new K_UPDATE),
so the carrier and the SMSC learn nothing and can change nothing.

`OtaIssue` is sans-I/O: `start` gives the first packet's secured data, `on_por` each next one, `on_no_por` what to
send when a PoR never came. Each secured command needs the card's fresh challenge, so each packet carries one secured
command followed by the GET CHALLENGE of the next: one SMS round trip per challenge (14 for a card without B). Every
step is re-runnable from the card's own state (SELECT tells created / washed / active), so a lost PoR, a torn packet
(SIM off) or a killed gateway restarts the job from a probe, and nothing is applied twice. `run_issue` is the
platform's runner over `central.ota_channel.OtaChannel` (jobs in the platform database, registration at the end).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from common import card_apdu as ca
from common import ota
from sam.interface import Algorithm, CardIdentity, KeyPurpose, SamError

# Restarts (from the probe) after a lost PoR or a lost challenge before the job gives up; a run resumes it again.
MAX_RESTARTS = 3
ACTIVATE = bytes([ca.STATUS_ACTIVE])


class Step(enum.Enum):
    PROBE = "probe"  # [SELECT B]: is B's sub-application there, washed, active?
    DIRECTORY = "directory"  # [SELECT directory]: card serial, number of sub-applications, K_CARD's algorithm
    CHALLENGE = "challenge"  # [SELECT directory or B, GET CHALLENGE]
    SECURED = "secured"  # [secured command, (SELECT B,) GET CHALLENGE of the next]
    DONE = "done"
    FAILED = "failed"


class Refused(Exception):
    """The card or the request refuses the issue; `code` names it (card_full, already_issued, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class IssueFiles:
    """What the personalisation writes (docs/card-application.md 2.2, 2.3, 5.1)."""

    holder: bytes  # EF_HOLDER, 48
    access: bytes  # EF_ACCESS, 32
    purse: bytes  # EF_PURSE 0..7: expiry (BCD) || maximum balance

    @classmethod
    def make(cls, employee_no: str, name: str, rights: dict) -> IssueFiles:
        import datetime as dt

        from common import bcd

        emp, nm = employee_no.encode(), name.encode()
        if len(emp) > 16 or len(nm) > 32:
            raise ValueError("employee number over 16 bytes or name over 32 bytes of UTF-8: shorten it")
        day = dt.date.fromisoformat
        access = ca.encode_access_file(
            day(rights["valid_from"]), day(rights["valid_to"]), rights["door_groups"], rights["time_profile"]
        )
        purse = bcd.encode_date(day(rights["purse_expiry"])) + int(rights["max_balance"]).to_bytes(4, "big")
        return cls(emp.ljust(16, b"\x00") + nm.ljust(32, b"\x00"), access, purse)


def _fci(data: bytes, aid: bytes, sizes: dict[int, int]) -> dict[int, bytes]:
    """The FCI's proprietary fields, each of `sizes` present with its size and the algorithm (C4) one we know."""
    try:
        prop = ca.fci_proprietary(data, aid)
        for tag, size in sizes.items():
            if len(prop.get(tag, b"")) != size:
                raise ValueError(f"tag {tag:02X} missing or not {size} byte(s)")
        Algorithm(prop[0xC4][0])
    except ValueError as e:
        raise Refused("card_error", f"the SIM's SELECT answer is not a one-card FCI ({e})") from None
    return prop


class OtaIssue:
    """One sub-application issued over the air, sans-I/O. `sam` is the platform's SAM (sam/interface.py:
    card_mac, encipher_card_data, wrap_sub_application_key, wrap_card_key, has_key) holding B's issuing keys and
    the card issuer's TRANSPORT key; `serial` the card serial; `asn` the new sub-application's ASN (8 bytes, from
    the caller)."""

    def __init__(self, sam, enterprise_id: bytes, serial: bytes, asn: bytes, name: str, version: int, files) -> None:
        if not 1 <= len(name.encode()) <= ca.NAME_MAX or not 1 <= version <= 255:
            raise ValueError(f"the sub-application name is 1..{ca.NAME_MAX} bytes of UTF-8, the key version 1..255")
        self.sam, self.eid, self.serial, self.asn, self.name, self.version = (
            sam,
            enterprise_id,
            serial,
            asn,
            name,
            version,
        )
        self.files: IssueFiles = files
        self.step = Step.PROBE
        self.kv = 0  # the key version the card's K_ADMIN is at
        self.algorithm = 0  # the card's algorithm ID (K_CARD's; B's sub-application takes it)
        self.plan: list[list] = []  # secured commands still to send: ["put", purpose] ["commit"] ["write", sfi, hex]
        self.sent: list = []  # the secured command of the last packet, and how many commands that packet had
        self.sent_count = 0
        self.challenge = b""
        self.activating = False  # the activation was sent: an active sub-application found later is this job's
        self.restarts = 0
        self.reason, self.code = "", ""
        self.outcome = ""  # "issued" once the activation is on the card

    # --- the packets ------------------------------------------------------------------------------------------

    def start(self) -> bytes:
        self.step = Step.PROBE
        return ota.pack_apdus([ca.select_command(self.aid)])

    @property
    def aid(self) -> bytes:
        return ca.sub_application_aid(self.eid)

    def on_no_por(self) -> bytes | None:
        """No PoR came (the phone stayed off, the SIM was torn, the gateway died): start again from the probe."""
        if self.step in (Step.DONE, Step.FAILED):
            return None
        return self._restart("no PoR came")

    def _restart(self, why: str) -> bytes | None:
        self.restarts += 1
        if self.restarts > MAX_RESTARTS:
            return self._fail("gave_up", f"{why}, {MAX_RESTARTS} restarts: resume the job later")
        return self.start()

    def _fail(self, code: str, reason: str) -> None:
        self.step, self.code, self.reason = Step.FAILED, code, reason
        return None

    def on_por(self, por: ota.Por) -> bytes | None:
        try:
            return self._on_por(por)
        except Refused as e:
            return self._fail(e.code, str(e))
        except SamError as e:  # a SAM refusal (missing key or usage): nothing is guessed
            return self._fail("sam_refused", f"{type(e).__name__}: {e}")
        except ota.OtaError as e:  # a PoR whose additional data is not a compact response
            return self._fail("card_error", f"the PoR is unreadable ({e})")

    def _on_por(self, por: ota.Por) -> bytes | None:
        if por.status is not ota.PorStatus.OK:
            raise Refused("por_error", f"the SIM refused the packet ({por.status.name})")
        n, sw, data = ota.parse_compact_response(por.data)
        if self.step is Step.PROBE:
            return self._probed(sw, data)
        if self.step is Step.DIRECTORY:
            return self._directory(sw, data)
        want = 2 if self.step is Step.CHALLENGE else self.sent_count
        if n != want or sw != b"\x90\x00":
            return self._refused_command(n, sw)
        if self.step is Step.SECURED:
            self._applied(self.sent)
            if not self.plan:
                self.step, self.outcome = Step.DONE, "issued"
                return None
        if len(data) != ca.CHALLENGE_LEN:
            raise Refused("card_error", f"GET CHALLENGE answered {len(data)} bytes, expected 8")
        self.challenge = data
        return self._next_secured()

    def _probed(self, sw: bytes, data: bytes) -> bytes | None:
        if sw == b"\x6a\x88":
            self.step = Step.DIRECTORY
            return ota.pack_apdus([ca.select_command(ca.AID_V2)])
        if sw != b"\x90\x00":
            raise Refused("not_supported", f"the SIM is not a version 2 one-card (SELECT answered {sw.hex()})")
        prop = _fci(data, self.aid, {0xC0: 8, 0xC2: 1, 0xC3: 1, 0xC4: 1})
        asn, status, kv = prop[0xC0], prop[0xC2][0], prop[0xC3][0]
        self.asn, self.kv, self.algorithm = asn, kv, prop[0xC4][0]
        if status == ca.STATUS_ACTIVE:
            if self.activating:  # this job's activation reached the card; its PoR did not reach us
                self.step, self.outcome = Step.DONE, "issued"
                return None
            raise Refused("already_issued", f"the SIM's sub-application {asn.hex().upper()} is already issued")
        if status != ca.STATUS_TRANSPORT:
            raise Refused("not_issuable", f"the SIM's sub-application {asn.hex().upper()} has status {status:02X}")
        if kv == 0:
            wash = self._wash_plan(has_purse=0xC7 in prop)
            self.plan = wash + self._write_plan(["put", "purchase"] in wash)
        elif kv == self.version:
            self.plan = self._write_plan(0xC7 in prop)
        else:
            raise Refused("wrong_version", f"the SIM's sub-application is at key version {kv}, not {self.version}")
        self.step = Step.CHALLENGE
        return ota.pack_apdus([ca.select_command(self.aid, le=False), ca.get_challenge_command()])

    def _directory(self, sw: bytes, data: bytes) -> bytes | None:
        if sw != b"\x90\x00":
            raise Refused("not_supported", f"the SIM has no one-card directory (SELECT answered {sw.hex()})")
        prop = _fci(data, ca.AID_V2, {0xC0: 8, 0xC4: 1, 0xC8: 1})
        if prop[0xC0] != self.serial:
            raise Refused("wrong_card", "the SIM's card serial is not the one the job was started for")
        if prop[0xC8][0] >= ca.MAX_SUB_APPLICATIONS:
            raise Refused("card_full", f"the card already carries {ca.MAX_SUB_APPLICATIONS} sub-applications")
        self.algorithm = prop[0xC4][0]
        wash = self._wash_plan(has_purse=False)  # CREATE makes it at transport state, without purse
        self.plan = [["create"], *wash, *self._write_plan(["put", "purchase"] in wash)]
        self.step = Step.CHALLENGE
        return ota.pack_apdus([ca.select_command(ca.AID_V2, le=False), ca.get_challenge_command()])

    def _refused_command(self, n: int, sw: bytes) -> bytes | None:
        failed = n - 1  # index of the command that stopped the script
        if sw in (b"\x69\x82", b"\x69\x88", b"\x69\x86"):
            # The card lost its challenge or its selection (the SIM was reset between two packets): start again.
            return self._restart(f"the card lost its challenge ({sw.hex()})")
        if self.step is Step.SECURED and self.sent[0] == "create" and failed == 0:
            if sw == b"\x6a\x84":
                raise Refused("card_full", f"the card already carries {ca.MAX_SUB_APPLICATIONS} sub-applications")
            if sw == b"\x6a\x89":  # created meanwhile (a PoR lost): the probe finds it
                return self._restart("the sub-application exists already")
        raise Refused("card_error", f"command {n} of the packet answered {sw.hex()}")

    # --- the secured commands ---------------------------------------------------------------------------------

    def _wash_plan(self, has_purse: bool) -> list[list]:
        purse = (KeyPurpose.PURCHASE, KeyPurpose.LOAD, KeyPurpose.TAC)
        alg = Algorithm(self.algorithm)
        give_purse = has_purse or all(self.sam.has_key(self.eid, p, self.version, alg) for p in purse)
        purposes = [KeyPurpose.ACCESS, KeyPurpose.UPDATE, *(purse if give_purse else ())]
        # B's OTA key set (docs/ota.md 2) goes in with the other keys, enciphered the same way: from the commit
        # on, B's own operations travel under B's KIc/KID.
        return [["put", p.value] for p in purposes] + [["put-ota", w] for w in ca.OTA_KEY_IDS] + [["commit"]]

    def _write_plan(self, has_purse: bool) -> list[list]:
        writes = [[ca.SFI_HOLDER, self.files.holder], [ca.SFI_ACCESS, self.files.access]]
        if has_purse:
            writes.append([ca.SFI_PURSE, self.files.purse])
        return [["write", sfi, 0, data.hex()] for sfi, data in writes] + [["write", ca.SFI_APP, 12, ACTIVATE.hex()]]

    def _identity(self) -> CardIdentity:
        return CardIdentity(self.asn, self.eid, self.kv, Algorithm(self.algorithm))

    def _next_secured(self) -> bytes:
        item, last = self.plan[0], len(self.plan) == 1
        c = self.challenge
        if item[0] == "create":
            alg = Algorithm(self.algorithm)
            manager = CardIdentity(self.serial, ca.ISSUER_ENTERPRISE, 0, alg)
            application = CardIdentity(self.asn, self.eid, 0, alg)
            cryptogram, _kcv = self.sam.wrap_sub_application_key(manager, c, application)
            name = self.name.encode()
            plain = self.eid + self.asn + bytes([self.algorithm, len(name)]) + name + cryptogram
            mac = self.sam.card_mac(KeyPurpose.TRANSPORT, manager, ca.secured_mac_input(c, ca.INS_CREATE, 0, 0, plain))
            cmds = [ca.secured_command(ca.INS_CREATE, 0, 0, plain, mac), ca.select_command(self.aid, le=False)]
        else:
            ins, p1, p2, plain = self._command(item, c)
            purpose = KeyPurpose.TRANSPORT if self.kv == 0 else KeyPurpose.UPDATE
            mac = self.sam.card_mac(purpose, self._identity(), ca.secured_mac_input(c, ins, p1, p2, plain))
            cmds = [ca.secured_command(ins, p1, p2, plain, mac)]
        if not last:
            cmds.append(ca.get_challenge_command())
        elif item[0] == "write":
            self.activating = True
        self.sent, self.sent_count = item, len(cmds)
        self.step = Step.SECURED
        return ota.pack_apdus(cmds)

    def _command(self, item: list, challenge: bytes) -> tuple[int, int, int, bytes]:
        if item[0] == "put":
            purpose = KeyPurpose(item[1])
            cryptogram, _kcv = self.sam.wrap_card_key(self._identity(), challenge, purpose, self.version)
            return ca.INS_PUT_KEY, self.version, ca.KEY_IDS[purpose.value], cryptogram
        if item[0] == "put-ota":
            cryptogram, _kcv = self.sam.wrap_ota_key(self._identity(), challenge, item[1], self.version)
            return ca.INS_PUT_KEY, self.version, ca.OTA_KEY_IDS[item[1]], cryptogram
        if item[0] == "commit":
            return ca.INS_COMMIT_KEYS, 0, self.version, b""
        _, sfi, offset, data = item
        plain = bytes.fromhex(data)
        if sfi != ca.SFI_APP:
            # A version 2 sub-application takes holder, access, purse and subsidy data enciphered under SK_WRITE,
            # MAC'd over the ciphertext (docs/card-application.md 8.2, 9.11): nothing private in clear over the air.
            purpose = KeyPurpose.TRANSPORT if self.kv == 0 else KeyPurpose.UPDATE
            plain = self.sam.encipher_card_data(purpose, self._identity(), challenge + bytes(4), plain)
        return ca.INS_UPDATE_BINARY, 0x80 | sfi, offset, plain

    def _applied(self, item: list) -> None:
        self.plan.pop(0)
        if item[0] == "commit":
            self.kv = self.version  # K_ADMIN is now B's K_UPDATE of the new version
        if item[0] == "create":
            self.kv = 0

    # --- durable state ----------------------------------------------------------------------------------------

    def dump(self) -> str:
        return json.dumps(
            {
                "step": self.step.value,
                "asn": self.asn.hex(),
                "kv": self.kv,
                "algorithm": self.algorithm,
                "activating": self.activating,
                "restarts": self.restarts,
                "reason": self.reason,
                "code": self.code,
                "outcome": self.outcome,
            }
        )

    def load(self, doc: dict) -> None:
        """The state a run stored; what was in flight is not trusted: `on_no_por` starts from the probe."""
        self.step = Step(doc["step"])
        self.asn, self.kv, self.algorithm = bytes.fromhex(doc["asn"]), doc["kv"], doc["algorithm"]
        self.activating, self.restarts = doc["activating"], doc["restarts"]
        self.reason, self.code, self.outcome = doc["reason"], doc["code"], doc["outcome"]


# --- the platform's runner ------------------------------------------------------------------------------------


class IssueRefused(Exception):
    """Refused before anything was sent; one line naming why and what to do."""


def check_request(platform, enterprise_id: str, employee_no: str) -> dict:
    """The holder (name, phone) of B's employee, when the platform lets a sub-application be issued to them:
    registered, with a phone number, and no active or lost card of B on that phone (one phone, one one-card per
    enterprise, as `Platform.issue_card` checks again when it registers)."""
    from central.db import PlatformError

    try:
        holder = platform.holder_contact(enterprise_id, employee_no)
    except PlatformError as e:
        raise IssueRefused(str(e)) from None
    if not holder["phone"]:
        raise IssueRefused(
            f"employee {employee_no} has no phone number on the platform: issuing over the air goes to the "
            "holder's SIM; register it with `onecard platform add-holder --phone`"
        )
    row = platform.conn.execute(
        "SELECT c.asn FROM cards c JOIN holders h USING (holder_id) WHERE h.phone = ? AND c.enterprise_id = ? "
        "AND c.status IN ('ACTIVE', 'LOST') LIMIT 1",
        (holder["phone"], enterprise_id),
    ).fetchone()
    if row is not None:
        raise IssueRefused(
            f"already issued: phone {holder['phone']} already holds enterprise {enterprise_id}'s card {row[0]}; "
            "cancel or replace that card instead"
        )
    return holder


def run_issue(channel, job_id: str, op: OtaIssue, msisdn: str, employee_no: str, rights: dict) -> OtaIssue:
    """Run (or resume) an issue job to its end, or until a PoR does not come (phone off: run again later). At the
    end the new sub-application is registered with the platform, once: the job's `done` is written after it, and a
    resumed job finds the card registered and only marks the job done."""
    store = channel.store
    issuer = channel.otasam.issuer(op.serial)
    try:
        job = store.job(job_id)
    except KeyError:
        store.create(job_id, op.asn.hex(), msisdn, "issue")
        data: bytes | None = op.start()
    else:
        if job["status"] in ("done", "failed"):
            op.load(job["state"])
            return op
        if job["state"]:
            op.load(job["state"])
            op.restarts = 0
            data = op.on_no_por()  # what was in flight is unknown: probe the card again
        else:
            data = op.start()
    while data is not None:
        store.update(job_id, state=op.dump())
        cntr = channel.send(job_id, issuer, msisdn, data, tar=ota.ISSUER_TAR)
        if store.job(job_id)["status"] == "expired":
            store.update(job_id, state=op.dump(), note="the phone stayed unreachable past the validity")
            return op
        por = channel.await_por(job_id, issuer, msisdn, cntr)
        if por is None:
            store.update(job_id, state=op.dump())
            return op  # not yet (or expired): a later run with the same job ID resumes from the probe
        data = op.on_por(por)
    if op.step is Step.DONE:
        asn = op.asn.hex().upper()
        platform = store.platform
        if not platform.is_registered(asn):
            platform.issue_card(
                op.eid.hex(),
                employee_no,
                asn,
                rights,
                max_balance_cents=rights["max_balance"],
                key_version=op.version,
                card_serial=op.serial.hex(),
            )
        store.update(job_id, state=op.dump(), status="done", note=f"issued {asn} key version {op.version}")
        return op
    store.update(job_id, state=op.dump(), status="failed", note=op.reason)
    return op


@dataclass(frozen=True)
class IssueRequest:
    """What `onecard platform ota-issue` asks for, checked (ValueError naming the option otherwise)."""

    enterprise_id: bytes
    employee_no: str
    serial: bytes
    name: str
    version: int
    asn: bytes | None
    rights: dict

    @classmethod
    def from_options(cls, enterprise: str, employee: str, serial: str, name: str, version: int, asn, opts):
        import datetime as dt

        from common.money import parse_yuan

        def hex_bytes(value: str, n: int, option: str) -> bytes:
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                raw = b""
            if len(raw) != n:
                raise ValueError(f"{option} {value!r} is not {2 * n} hex digits")
            return raw

        def day(value, option: str, default: dt.date) -> dt.date:
            if value is None:
                return default
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{option} {value!r} is not a date YYYY-MM-DD") from None

        eid = hex_bytes(enterprise, 4, "--enterprise")
        if not 1 <= len(name.encode()) <= ca.NAME_MAX:
            raise ValueError(f"--name must be 1..{ca.NAME_MAX} bytes of UTF-8")
        if not 1 <= version <= 255:
            raise ValueError(f"--to-version {version} is not 1..255")
        try:
            groups = sorted({int(g) for g in opts.groups.split(",") if g.strip()})
        except ValueError:
            raise ValueError(f"--groups {opts.groups!r} is not a list of numbers, e.g. 1,2,5") from None
        today = dt.date.today()
        valid_from = day(opts.valid_from, "--valid-from", today)
        valid_to = day(opts.valid_to, "--valid-to", valid_from.replace(year=valid_from.year + 3))
        rights = {
            "door_groups": groups,
            "time_profile": opts.time_profile,
            "valid_from": valid_from.isoformat(),
            "valid_to": valid_to.isoformat(),
            "purse_expiry": day(opts.purse_expiry, "--purse-expiry", valid_to).isoformat(),
            "max_balance": parse_yuan(opts.max_balance, "--max-balance"),
        }
        ca.encode_access_file(valid_from, valid_to, groups, opts.time_profile)  # ValueError for what EF_ACCESS can't
        new_asn = None if asn is None else hex_bytes(asn, 8, "--asn")
        return cls(eid, employee, hex_bytes(serial, 8, "--card-serial"), name, version, new_asn, rights)


def cli_run(store, job_id: str, req: IssueRequest, keystore, gateway, validity: int, wait: float) -> str:
    """`onecard platform ota-issue`: the job run (or resumed) to its end or to a missing PoR; the line to print
    (`failed: ...` and `the phone stayed ...` are refusals). IssueRefused before anything is sent."""
    import os

    from central.ota_channel import OtaChannel
    from sam.ota_keys import OtaSam
    from sam.software import SoftwareSam

    pf = store.platform
    eid = req.enterprise_id.hex()
    params = {"enterprise": eid, "employee": req.employee_no, "serial": req.serial.hex(), "name": req.name}
    asked = store.params(job_id)
    try:
        job: dict | None = store.job(job_id)
    except KeyError:
        job = None
    if asked is not None and {k: asked.get(k) for k in params} != params:
        raise IssueRefused(f"job {job_id} issues {asked.get('name')} to {asked.get('employee')}; give a new --job")
    if job is None:
        holder = check_request(pf, eid, req.employee_no)
        msisdn = holder["phone"]
        asn = req.asn or os.urandom(8)
        name = holder["name"]
        store.set_params(job_id, {**params, "asn": asn.hex(), "rights": req.rights, "holder": name, "phone": msisdn})
        asked = store.params(job_id)
    assert asked is not None
    if job is not None and job["op"] != "issue":
        raise IssueRefused(f"job {job_id} is not an issue job")
    files = IssueFiles.make(req.employee_no, asked["holder"], asked["rights"])
    sam = SoftwareSam(keystore)
    op = OtaIssue(sam, req.enterprise_id, req.serial, bytes.fromhex(asked["asn"]), req.name, req.version, files)
    gateway.connect()
    channel = OtaChannel(gateway, OtaSam(keystore), store, validity_seconds=validity, por_wait_seconds=wait)
    op = run_issue(channel, job_id, op, asked["phone"], req.employee_no, asked["rights"])
    job = store.job(job_id)
    asn = op.asn.hex().upper()
    if job["status"] == "done":
        return f"done: sub-application {asn} ({req.name}) issued to employee {req.employee_no}, registered"
    if job["status"] == "failed":
        return f"failed: {job['note'] or op.reason}"
    if job["status"] == "expired":
        return (
            "the phone stayed unreachable past the validity; nothing is half-applied (each step is re-run from "
            f"the card's state): run the same command with --job {job_id} when the phone is on"
        )
    return f"{job['status']}, no PoR yet: run the same command with --job {job_id} to wait again"
