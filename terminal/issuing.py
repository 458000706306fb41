"""The issuing terminal (发卡): issue a washed card to an employee, replace a card (补换卡), cancel (注销) or delete
the application, all through the secured commands of docs/card-application.md section 8 and registered with the
platform.

Every flow follows the purse flows' discipline: log an intent (with everything needed to finish) before changing the
card, log the outcome after; every step is idempotent, so a card pulled out anywhere is finished by tapping it again
(the card's status and the log say how far it got). Money moves only through purse transactions or the card's own
authenticated freeze (APPLICATION BLOCK), and every amount is logged. No I/O of its own: `transmit`, the SAM, the
registry (the platform), the event log and the time are passed in.
"""

from __future__ import annotations

import datetime as dt
import hmac
import zoneinfo
from dataclasses import dataclass, field

from common import bcd
from common import journal as jn
from common import transactions as tx
from common.money import format_yuan
from common.registry import Registry, RegistryError
from sam.interface import CardIdentity, KeyPurpose, KeyUsage, LoadSession, MacVerificationError, Sam, SamError
from terminal import card_protocol as cp
from terminal import purse_protocol as pp
from terminal import subsidy_protocol as sp
from terminal.decision import Refusal
from terminal.rekey import AdminChannel, admin_purpose, require_admin_key, select_for_admin

# The journaled flows of this terminal and their event kinds (the one table: common/journal.py).
ISSUE_INTENT, ISSUED = jn.ISSUE.intent_kind, jn.ISSUE.kind(jn.State.DONE)
VOID_INTENT, VOIDED = jn.VOID.intent_kind, jn.VOID.kind(jn.State.DONE)
RESTORE_INTENT, RESTORED, RESTORE_ABANDONED = jn.RESTORE.kinds
REPLACED, CANCELLED, DELETED = (f.kind(jn.State.DONE) for f in (jn.REPLACE, jn.CANCEL, jn.DELETE))
RESTORE_KINDS = jn.RESTORE.kinds
SUBSIDY_RESTORED = jn.RESTORE_SUBSIDY.kind(jn.State.DONE)
SUB_APPLICATION_ADDED = "issue.subapp"  # not journaled: CREATE is one atomic write (card-application.md 9.6)


@dataclass(frozen=True)
class IssueRequest:
    enterprise_id: bytes
    employee_no: str
    door_groups: frozenset[int]
    valid_from: dt.date
    valid_to: dt.date
    time_profile: int = 0
    purse_expiry: dt.date | None = None  # default: valid_to
    max_balance: int = 200_000  # fen

    def holder_file(self, name: str) -> bytes:
        if len(self.employee_no.encode()) > 16 or len(name.encode()) > 32:
            raise Refusal("bad_request", "Employee number over 16 bytes or name over 32 bytes of UTF-8: shorten it")
        return self.employee_no.encode().ljust(16, b"\x00") + name.encode().ljust(32, b"\x00")

    def access_file(self) -> bytes:
        try:
            return cp.encode_access_file(self.valid_from, self.valid_to, self.door_groups, self.time_profile)
        except ValueError as exc:
            raise Refusal("bad_request", f"{exc}: correct the request") from None

    def purse_file(self) -> bytes:
        return bcd.encode_date(self.purse_expiry or self.valid_to) + self.max_balance.to_bytes(4, "big")

    def rights(self) -> dict:
        return {
            "door_groups": sorted(self.door_groups),
            "time_profile": self.time_profile,
            "valid_from": self.valid_from.isoformat(),
            "valid_to": self.valid_to.isoformat(),
            "purse_expiry": (self.purse_expiry or self.valid_to).isoformat(),
            "max_balance": self.max_balance,
        }


@dataclass(frozen=True)
class Backup:
    """What replacement carries from the old card (or from the platform's records) to the new one."""

    old_asn: str
    employee_no: str
    holder: bytes  # EF_HOLDER, 48 bytes
    access: bytes  # EF_ACCESS, 32 bytes
    purse: bytes  # EF_PURSE's first 8 bytes: expiry || maximum balance
    balance: int  # fen: proven by the old card's APPLICATION BLOCK, or the platform's figure
    source: str  # "card" or "platform"
    records: list[dict] = field(default_factory=list)
    # The subsidy purse (card-application.md 5.6, 8.5): proven by APPLICATION BLOCK P1 01, or the platform's subsidy
    # ledger; carried by a subsidy load with this expiry unless it has expired (then it lapses, logged).
    subsidy_balance: int = 0
    subsidy_expiry: dt.date | None = None
    # The old card's last allowance number (FCI tag CA, 5.6), carried by the restore load (its allowance number) so
    # that no allowance the old card loaded can be loaded again on the new one; 0 when not known (from the platform).
    last_allowance: int = 0


@dataclass(frozen=True)
class IssuingTerminal:
    sam: Sam
    registry: Registry
    event_log: object
    enterprise_id: bytes
    terminal_id: bytes  # 6 bytes BCD
    timezone: zoneinfo.ZoneInfo = zoneinfo.ZoneInfo("Asia/Shanghai")
    # the last cancellation's figures besides its return value: {"subsidy_returned": fen} (the command line says it)
    outcome: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def eid(self) -> str:
        return self.enterprise_id.hex()

    def _select(self, transmit) -> cp.CardInfo:
        info = select_for_admin(transmit, self.enterprise_id)
        require_admin_key(self.sam, info)
        return info

    @property
    def journal(self) -> jn.Journal:
        return jn.Journal(self.event_log)  # type: ignore[arg-type]

    def _require(
        self, info: cp.CardInfo, needs: dict[KeyPurpose, frozenset[KeyUsage]], version: int | None, flow: str
    ) -> None:
        """Refuse before the first irreversible step unless this SAM holds each key with each usage the whole flow
        needs (at the card's key version; `version` None: at any version, for the card not tapped yet)."""
        held: dict[KeyPurpose, set[KeyUsage]] = {}
        for k in self.sam.key_infos():
            if (
                k.enterprise_id == info.enterprise_id
                and k.algorithm == info.algorithm
                and (version is None or k.version == version)
            ):
                held.setdefault(k.purpose, set()).update(k.usages)
        for purpose, usages in needs.items():
            missing = sorted(u.value for u in usages - held.get(purpose, set()))
            if missing:
                at = "" if version is None else f" version {version}"
                raise Refusal(
                    "sam_cannot_finish",
                    f"This SAM cannot finish the {flow}: its {purpose.value} key{at} "
                    f"lacks usage {', '.join(missing)}; nothing was changed. Load the issuing role "
                    "(onecard keys load --role issuing, or sam restrict --role issuing) and tap again",
                    info.asn_hex,
                    {"purpose": purpose.value, "missing": missing},
                )

    def _platform_card(self, asn: str, allowed: tuple[str, ...], flow: str) -> dict:
        """The platform's record of the card, before anything changes: reachable, registered, in a status the flow
        can finish from."""
        c = self._registry(self.registry.card, asn)
        if c["status"] not in allowed:
            raise Refusal(
                "platform_refused",
                f"The platform lists card {asn} as {c['status']}: the {flow} needs it "
                f"{' or '.join(allowed)}; nothing was changed",
                asn,
                {"status": c["status"]},
            )
        return c

    def _registry(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RegistryError as exc:
            raise Refusal("platform_refused", f"Platform refused: {exc}") from None

    # --- issuing ----------------------------------------------------------------------------------

    def _write_card(
        self, transmit, info: cp.CardInfo, holder: bytes, access: bytes, purse: bytes, spending_pin=None
    ) -> None:
        channel = AdminChannel(transmit, self.sam, info)
        try:
            if spending_pin is not None:  # (card-application.md 5.5) before activation: a torn issue sets it again
                channel.set_spending_pin(spending_pin)
            channel.update_binary(cp.SFI_HOLDER, 0, holder, "EF_HOLDER")
            channel.update_binary(cp.SFI_ACCESS, 0, access, "EF_ACCESS")
            if info.purse_expiry is not None:
                channel.update_binary(cp.SFI_PURSE, 0, purse, "EF_PURSE")
                if info.app_version >= 2:
                    # The subsidy purse (card-application.md 5.6), with the cash purse's maximum; written again by a
                    # re-tap of a torn issue, which changes nothing.
                    channel.update_binary(cp.SFI_SUBSIDY, 0, purse[4:8], "EF_SUBSIDY")
            # Activation last: a card torn before it is still "not issued" and the next tap writes it all again.
            channel.update_binary(cp.SFI_APP, 12, bytes([cp.STATUS_ACTIVE]), "application status")
        except SamError as exc:
            raise Refusal("sam_refused", f"This SAM cannot write the card: {exc}", info.asn_hex) from None
        except cp.CardProtocolError as exc:
            raise Refusal(
                "card_error", f"Card refused the personalisation ({exc}): tap it again", info.asn_hex
            ) from None

    def _blank_card(self, transmit) -> cp.CardInfo:
        info = self._select(transmit)
        if info.status == cp.STATUS_VOIDED:
            raise Refusal("voided", "This card has been voided: issue a washed blank card", info.asn_hex)
        if info.key_version == 0:
            raise Refusal("not_washed", "Card still has its transport keys: wash it first", info.asn_hex)
        return info

    def _check_phone(self, holder: dict, info: cp.CardInfo, employee_no: str, except_asn: str | None = None):
        if info.card_type != 0x01:
            return  # a plain 13.56 MHz IC card is not tied to a phone number
        phone = holder["phone"]
        if not phone:
            raise Refusal(
                "no_phone",
                f"Employee {employee_no} has no phone number on the platform: an RFID-SIM "
                "one-card is issued to a phone number; register it first",
                info.asn_hex,
            )
        other = self.registry.card_of_phone(phone)
        if other is not None and info.private and self.registry.card(other)["enterprise_id"] != self.eid:
            # Version 2: one phone, one card, one sub-application per enterprise; another enterprise's sub-application
            # is the same card's neighbour (9.6), not a second one-card.
            other = None
        if other is not None and other != except_asn:
            raise Refusal(
                "phone_has_card",
                f"Phone number {phone} already holds one-card {other}: one phone number "
                "holds one one-card; cancel or replace that card instead",
                info.asn_hex,
            )

    def issue(self, transmit, req: IssueRequest, now: dt.datetime, spending_pin=None) -> str:
        """Personalise a washed card for an employee and register it; returns its ASN. Raises Refusal."""
        info = self._blank_card(transmit)
        asn = info.asn_hex
        if info.status == cp.STATUS_ACTIVE:
            if self.registry.is_registered(asn):
                raise Refusal("already_issued", "This card is already issued: use replacement or cancellation", asn)
            return self._finish_issue(info, now)  # written and activated by a torn earlier tap: register it
        holder = self._registry(self.registry.holder, self.eid, req.employee_no)
        self._check_phone(holder, info, req.employee_no)
        self._require(info, {admin_purpose(info.key_version): frozenset({KeyUsage.MAC})}, info.key_version, "issuing")
        detail = {"employee_no": req.employee_no, "rights": req.rights(), "key_version": info.key_version}
        self.journal.open(jn.ISSUE, now, asn, f"Issuing to employee {req.employee_no}", detail)
        self._write_card(
            transmit, info, req.holder_file(holder["name"]), req.access_file(), req.purse_file(), spending_pin
        )
        return self._finish_issue(info, now)

    def _finish_issue(self, info: cp.CardInfo, now: dt.datetime) -> str:
        asn = info.asn_hex
        intent = self.journal.last_intent(asn, jn.ISSUE)
        if intent is None:
            raise Refusal(
                "unknown_card", "This active card was not issued by this terminal: see the administrator", asn
            )
        d = intent.detail
        self._registry(self.registry.register, self.eid, d["employee_no"], asn, d["rights"], info.key_version)
        self.journal.record(
            intent,
            jn.State.DONE,
            now,
            f"Issued to employee {d['employee_no']}",
            {"employee_no": d["employee_no"], "key_version": info.key_version, "intent_seq": intent.seq},
            "issued",
        )
        return asn

    # --- version 2: add this enterprise's sub-application to a card (docs/card-application.md 9.6) -------

    def add_sub_application(self, transmit, name: str, asn: bytes, now: dt.datetime) -> str:
        """Create this enterprise's sub-application (transport state) on a version 2 card; wash and issue it next.

        Needs none of the other enterprises' keys: CREATE is secured by the card issuer's K_CARD, and the new
        sub-application's K_TRANSPORT travels enciphered under it. `asn` is the new sub-application's number
        (random, from the caller). Re-tap safe: CREATE is one atomic write, and a card that already has the
        sub-application is simply reported. Returns the sub-application's ASN (hex)."""
        aid = cp.sub_application_aid(self.enterprise_id)
        try:
            info = cp.parse_select(transmit(cp.select_command(aid)), aid)
            return info.asn_hex  # already there (a re-tap after a tear, or added before): wash / issue it next
        except cp.NoSubApplication:
            pass
        except cp.NotOneCard:
            raise Refusal(
                "not_supported",
                "This card is not a version 2 one-card: it carries one enterprise only; migrate it first "
                "(docs/card-application.md 9.8)",
            ) from None
        except cp.CardProtocolError as exc:
            raise Refusal("card_error", f"Card could not be read ({exc}): tap it again") from None
        try:
            serial = cp.parse_directory_select(transmit(cp.select_command(cp.AID_V2)))
        except cp.CardProtocolError as exc:
            raise Refusal("card_error", f"Card directory could not be read ({exc}): tap it again") from None
        if serial.count >= cp.MAX_SUB_APPLICATIONS:
            raise Refusal(
                "card_full",
                f"This card already carries {cp.MAX_SUB_APPLICATIONS} sub-applications: the holder must delete one "
                "first",
            )
        encoded = name.encode()
        if not 1 <= len(encoded) <= cp.NAME_MAX:
            raise ValueError(f"sub-application name must be 1..{cp.NAME_MAX} bytes of UTF-8")
        # Algorithm of the new sub-application: the card's (K_CARD's), announced by the directory's FCI.
        manager = CardIdentity(
            asn=serial.serial, enterprise_id=cp.ISSUER_ENTERPRISE, key_version=0, algorithm=serial.algorithm
        )
        application = CardIdentity(asn=asn, enterprise_id=self.enterprise_id, key_version=0, algorithm=serial.algorithm)
        try:
            challenge = cp.parse_challenge(transmit(cp.get_challenge_command()))
            cryptogram, kcv = self.sam.wrap_sub_application_key(manager, challenge, application)
            plain = self.enterprise_id + asn + bytes([int(serial.algorithm), len(encoded)]) + encoded + cryptogram
            mac = self.sam.card_mac(
                KeyPurpose.TRANSPORT, manager, cp.secured_mac_input(challenge, cp.INS_CREATE, 0, 0, plain)
            )
            answered = cp.check_secured(
                transmit(cp.secured_command(cp.INS_CREATE, 0, 0, plain, mac, le=3)), "CREATE SUB-APPLICATION", 3
            )
        except SamError as exc:
            raise Refusal("sam_refused", f"This SAM cannot add a sub-application: {exc}") from None
        except cp.CardProtocolError as exc:
            raise Refusal("card_error", f"Card refused the new sub-application ({exc}): tap it again") from None
        if not hmac.compare_digest(answered, kcv):
            raise Refusal("card_error", "The card's check value for the new transport key is wrong: tap it again")
        asn_hex = asn.hex().upper()
        self.event_log.append(
            now,
            SUB_APPLICATION_ADDED,
            asn=asn_hex,
            reason_code="added",
            message=f"Sub-application '{name}' added",
            detail={"name": name, "card_serial": serial.serial.hex().upper()},
        )
        return asn_hex

    # --- replacement ------------------------------------------------------------------------------

    def _read_backup(self, transmit, info: cp.CardInfo) -> tuple[bytes, bytes, bytes, list[dict]]:
        """EF_HOLDER, EF_ACCESS, EF_PURSE (8) and the records: by READ BINARY / READ RECORD from a version 1 card,
        under secure messaging (MAC-verified, deciphered by the SAM) from a version 2 sub-application."""
        purse, records = bytes(8), []
        if info.private:
            channel = AdminChannel(transmit, self.sam, info)
            holder = channel.read_file(cp.SFI_HOLDER, 48, "EF_HOLDER")
            access = channel.read_file(cp.SFI_ACCESS, 32, "EF_ACCESS")
            if info.purse_expiry is not None:
                purse = channel.read_file(cp.SFI_PURSE, 12, "EF_PURSE")[:8]
                for n in range(1, 11):
                    record = channel.read_record(n)
                    if record is None:
                        break
                    records.append(record.to_json())
            return holder, access, purse, records
        holder = cp.parse_read_binary(transmit(cp.read_binary_command(cp.SFI_HOLDER, 0, 48)), "EF_HOLDER", 48)
        access = cp.parse_read_binary(transmit(cp.read_binary_command(cp.SFI_ACCESS, 0, 32)), "EF_ACCESS", 32)
        if info.purse_expiry is not None:
            purse = cp.parse_read_binary(transmit(cp.read_binary_command(cp.SFI_PURSE, 0, 12)), "EF_PURSE", 12)[:8]
            for n in range(1, 11):
                record = cp.parse_record(transmit(cp.read_record_command(n)))
                if record is None:
                    break
                records.append(record.to_json())
        return holder, access, purse, records

    def backup_and_void(self, transmit, now: dt.datetime) -> Backup:
        """The old card: back up its data into the log, then void it; the card proves the balance it froze."""
        info = self._select(transmit)
        asn = info.asn_hex
        if info.status == cp.STATUS_TRANSPORT:
            raise Refusal("not_issued", "This card was never issued: nothing to back up", asn)
        try:
            holder, access, purse, records = self._read_backup(transmit, info)
        except SamError as exc:
            raise Refusal("sam_refused", f"This SAM cannot read the old card: {exc}", asn) from None
        except cp.CardProtocolError as exc:
            raise Refusal(
                "card_error",
                f"Old card could not be read ({exc}): tap it again, or replace it from the platform's records",
                asn,
            ) from None
        employee_no = holder[:16].rstrip(b"\x00").decode("utf-8", "replace")
        if info.status != cp.STATUS_VOIDED:
            self.check_replacement(info)
        backup = {
            "holder": holder.hex(),
            "access": access.hex(),
            "purse": purse.hex(),
            "records": records,
            "employee_no": employee_no,
        }
        # The backup reaches the log before the card is voided: whatever happens next, nothing is lost.
        intent = self.journal.open(jn.VOID, now, asn, "Backing up and voiding the old card", backup)
        try:
            # A subsidy purse is frozen and proven with the cash purse (APPLICATION BLOCK P1 01, 8.2).
            channel = AdminChannel(transmit, self.sam, info)
            frozen = channel.block(with_subsidy=info.has_subsidy)
        except SamError as exc:
            raise Refusal("sam_refused", f"This SAM cannot void the card: {exc}", asn) from None
        except cp.CardProtocolError as exc:
            raise Refusal("card_error", f"Old card did not confirm the void ({exc}): tap it again", asn) from None
        if not self.journal.has(asn, jn.VOID, jn.State.DONE):
            self.journal.record(
                intent,
                jn.State.DONE,
                now,
                f"Old card voided with balance {format_yuan(frozen.balance)}",
                {
                    "balance": frozen.balance,
                    "offline_counter": frozen.offline_counter,
                    "online_counter": frozen.online_counter,
                    "proof": frozen.mac.hex(),
                    "key_version": info.key_version,
                    **_frozen_subsidy_detail(frozen),
                },
                "voided",
            )
        self._tell_voided(asn, frozen, channel.block_challenge, info.key_version)
        sub = frozen.subsidy
        return Backup(
            asn,
            employee_no,
            holder,
            access,
            purse,
            frozen.balance,
            "card",
            records,
            subsidy_balance=0 if sub is None else sub.balance,
            subsidy_expiry=None if sub is None else sub.expiry,
            last_allowance=info.last_allowance,
        )

    def check_replacement(self, info: cp.CardInfo) -> None:
        """Everything a replacement needs, checked before the old card is voided: the keys to void it (UPDATE mac +
        verify of its version), to write and load the new card (UPDATE mac, LOAD mac), and the platform's record
        of the old card (registered, active or lost, so `replace` will be accepted)."""
        self._require(
            info, {KeyPurpose.UPDATE: frozenset({KeyUsage.MAC, KeyUsage.VERIFY})}, info.key_version, "replacement"
        )
        self._require(
            info,
            {
                KeyPurpose.UPDATE: frozenset({KeyUsage.MAC, KeyUsage.PERSONALISE}),
                KeyPurpose.LOAD: frozenset({KeyUsage.MAC}),
            },
            None,
            "replacement",
        )
        self._platform_card(info.asn_hex, ("ACTIVE", "LOST", "VOIDED"), "replacement")

    def _tell_voided(self, asn: str, frozen: cp.FrozenPurse, challenge: bytes, key_version: int) -> None:
        try:
            self.registry.voided(
                asn,
                frozen.balance,
                frozen.mac.hex(),
                self.terminal_id.hex(),
                void_purse(frozen, challenge, key_version),
            )
        except RegistryError as exc:
            raise Refusal(
                "platform_refused",
                f"Card voided with balance {format_yuan(frozen.balance)}, but the "
                f"platform could not record it ({exc}): tap the same card again to finish",
                asn,
            ) from None

    def backup_from_platform(self, old_asn: str, req: IssueRequest) -> Backup:
        """No readable old card: the new card is written from the platform's records (rights and balance)."""
        c = self._registry(self.registry.card, old_asn)
        holder = self._registry(self.registry.holder, c["enterprise_id"], c["employee_no"])
        expiry = c.get("subsidy_expiry")
        return Backup(
            c["asn"],
            c["employee_no"],
            req.holder_file(holder["name"]),
            req.access_file(),
            req.purse_file(),
            c["balance_cents"],
            "platform",
            # The platform's subsidy ledger (what it confirmed) and the latest expiry of what it holds.
            subsidy_balance=int(c.get("subsidy_cents") or 0),
            subsidy_expiry=None if not expiry else dt.date.fromisoformat(expiry),
        )

    def replace(self, transmit, backup: Backup, now: dt.datetime) -> str:
        """Write the backup onto a washed card, load the carried balance, register the replacement. Re-tap safe."""
        info = self._select(transmit)
        if info.asn_hex == backup.old_asn.upper():
            raise Refusal(
                "old_card", "This is the old card (now voided): take it away and tap the NEW washed card", info.asn_hex
            )
        info = self._blank_card(transmit)
        asn = info.asn_hex
        if self.journal.has(asn, jn.REPLACE, jn.State.DONE):
            raise Refusal("already_issued", "This card already replaced another: nothing to do", asn)
        if backup.subsidy_balance and info.app_version < 2:
            raise Refusal(
                "no_subsidy_purse",
                f"The old card carries a subsidy balance of {format_yuan(backup.subsidy_balance)} and this new card "
                "is a version 1 card, without a subsidy purse: tap a washed version 2 card; nothing was changed",
                asn,
            )
        if info.status == cp.STATUS_TRANSPORT:
            holder = self._registry(self.registry.holder, self.eid, backup.employee_no)
            self._check_phone(holder, info, backup.employee_no, except_asn=backup.old_asn)
            self.journal.open(
                jn.REPLACE,
                now,
                asn,
                f"Replacing card {backup.old_asn}",
                {
                    "employee_no": backup.employee_no,
                    "replaces": backup.old_asn,
                    "key_version": info.key_version,
                    "rights": {},
                },
            )
            self._write_card(transmit, info, backup.holder, backup.access, backup.purse)
        loaded = self._restore_balance(transmit, info, backup, now)
        subsidy_loaded, lapsed = self._restore_subsidy(transmit, info, backup, now)
        self._registry(self.registry.replace, backup.old_asn, asn, info.key_version)
        # A re-tap finishes a replacement whose intent an earlier tap logged: the outcome is recorded for the card.
        self.journal.record_for(
            jn.REPLACE,
            jn.State.DONE,
            now,
            asn,
            f"Replaces {backup.old_asn}; balance {format_yuan(loaded)} carried"
            + (f", subsidy {format_yuan(subsidy_loaded)} carried" if subsidy_loaded else "")
            + (f", expired subsidy {format_yuan(lapsed)} lapsed" if lapsed else ""),
            {
                "old_asn": backup.old_asn,
                "balance_carried": backup.balance,
                "balance_loaded": loaded,
                "subsidy_carried": backup.subsidy_balance,
                "subsidy_loaded": subsidy_loaded,
                "subsidy_lapsed": lapsed,
                "subsidy_expiry": None if backup.subsidy_expiry is None else backup.subsidy_expiry.isoformat(),
                "source": backup.source,
                "key_version": info.key_version,
                "employee_no": backup.employee_no,
            },
            "replaced",
        )
        return asn

    def _restore_balance(self, transmit, info: cp.CardInfo, backup: Backup, now: dt.datetime) -> int:
        """Load the carried balance once: a torn load is settled by GET TRANSACTION PROVE before anything else."""
        asn = info.asn_hex
        last = self.journal.last(asn, jn.RESTORE)
        if last is not None and last.kind == RESTORED:
            return last.detail["amount"]
        torn = self.journal.unfinished(asn, jn.RESTORE)
        if torn is not None:
            d = torn.detail
            proof = pp.parse_prove(transmit(pp.prove_command(tx.LOAD, d["counter"])))
            if proof is not None:
                try:
                    self.sam.verify_load_mac3(self._load_session(info, d), proof.mac)
                    self.journal.record(
                        torn,
                        jn.State.DONE,
                        now,
                        f"Balance {format_yuan(d['amount'])} restored",
                        {**d, "tac": proof.tac.hex(), "intent_seq": torn.seq, "resolved_at_next_tap": True},
                        "completed",
                    )
                    return d["amount"]
                except MacVerificationError:
                    pass
            self.journal.record(
                torn,
                jn.State.ABANDONED,
                now,
                "Interrupted balance restore did not happen",
                {"intent_seq": torn.seq, "amount": d["amount"]},
                "not_on_card",
            )
        if backup.balance == 0:
            return 0
        local = now.astimezone(self.timezone)
        try:
            init = pp.parse_init_load(transmit(pp.init_load_command(backup.balance, self.terminal_id)), info.private)
        except cp.CardProtocolError as exc:
            raise Refusal(
                "card_error", f"New card refused the balance load ({exc}): check its maximum balance", asn
            ) from None
        d = {
            "amount": backup.balance,
            "counter": init.counter,
            "random": init.random.hex(),
            "date": local.strftime("%Y%m%d"),
            "time": local.strftime("%H%M%S"),
            "key_version": init.key_version,
            "algorithm": init.algorithm.name,
            "balance_before": 0 if init.balance is None else init.balance,
            "old_asn": backup.old_asn,
        }
        try:
            if init.balance is None:  # version 2: the SAM opens the sealed balance (card-application.md 5.2a)
                mac2, d["balance_before"] = self.sam.load_mac2_sealed(
                    self._load_session(info, d), init.mac1, init.sealed
                )
            else:
                mac2 = self.sam.load_mac2(self._load_session(info, d), init.mac1)
        except SamError as exc:
            raise Refusal("sam_refused", f"This SAM cannot load the carried balance: {exc}", asn) from None
        session = self._load_session(info, d)
        intent = self.journal.open(jn.RESTORE, now, asn, f"Restoring balance {format_yuan(backup.balance)}", d)
        try:
            proof = pp.parse_credit(transmit(pp.credit_command(session.date, session.time, mac2)))
            self.sam.verify_load_mac3(session, proof.mac)
        except pp.OverMaximum:  # a version 2 card checks its maximum at CREDIT: nothing loaded
            self.journal.record(
                intent,
                jn.State.ABANDONED,
                now,
                "Balance restore refused by the card",
                {"intent_seq": intent.seq, "amount": d["amount"]},
                "card_refused",
            )
            raise Refusal(
                "card_error", "New card refused the balance load (over its maximum balance): nothing loaded", asn
            ) from None
        except (cp.CardProtocolError, MacVerificationError) as exc:
            # Maybe loaded, maybe not: the intent is logged, and the next tap asks the card (GET TRANSACTION PROVE).
            raise Refusal(
                "unconfirmed",
                f"Balance load not confirmed ({exc}): tap the NEW card again; the station "
                "asks the card whether it arrived and never loads it twice",
                asn,
            ) from None
        self.journal.record(
            intent,
            jn.State.DONE,
            now,
            f"Balance {format_yuan(backup.balance)} restored",
            {**d, "tac": proof.tac.hex(), "intent_seq": intent.seq, "resolved_at_next_tap": False},
            "completed",
        )
        return backup.balance

    def _load_session(self, info: cp.CardInfo, d: dict) -> LoadSession:
        from sam.interface import Algorithm

        card = info.identity(d["key_version"], Algorithm[d["algorithm"]])
        subsidy = (
            {}
            if "expiry" not in d
            else {
                "tx_type": tx.SUBSIDY_LOAD,
                "expiry": bytes.fromhex(d["expiry"]),
                "allowance": d.get("allowance_no", 0),
            }
        )
        return LoadSession(
            card=card,
            card_random=bytes.fromhex(d["random"]),
            counter=d["counter"],
            balance_before=d["balance_before"],
            amount=d["amount"],
            terminal_id=self.terminal_id,
            date=bytes.fromhex(d["date"]),
            time=bytes.fromhex(d["time"]),
            **subsidy,
        )

    def _restore_subsidy(self, transmit, info: cp.CardInfo, backup: Backup, now: dt.datetime) -> tuple[int, int]:
        """(loaded, lapsed): the carried subsidy balance, loaded once onto the new card's subsidy purse by a subsidy
        load with the old expiry (card-application.md 5.6, 8.5); an expired one is not loaded but lapses (the
        replacement's outcome logs it). A torn load is settled by GET TRANSACTION PROVE (01) before anything else."""
        asn = info.asn_hex
        last = self.journal.last(asn, jn.RESTORE_SUBSIDY)
        if last is not None and last.kind == SUBSIDY_RESTORED:
            return last.detail["amount"], 0
        torn = self.journal.unfinished(asn, jn.RESTORE_SUBSIDY)
        if torn is not None:
            d = dict(torn.detail)
            proof = pp.parse_prove(transmit(pp.prove_command(tx.SUBSIDY_LOAD, d["counter"])))
            if proof is not None:
                try:
                    self.sam.verify_load_mac3(self._load_session(info, d), proof.mac)
                    self.journal.record(
                        torn,
                        jn.State.DONE,
                        now,
                        f"Subsidy {format_yuan(d['amount'])} restored",
                        {**d, "tac": proof.tac.hex(), "intent_seq": torn.seq, "resolved_at_next_tap": True},
                        "completed",
                    )
                    return d["amount"], 0
                except MacVerificationError:
                    pass
            self.journal.record(
                torn,
                jn.State.ABANDONED,
                now,
                "Interrupted subsidy restore did not happen",
                {"intent_seq": torn.seq, "amount": d["amount"]},
                "not_on_card",
            )
        amount, expiry = backup.subsidy_balance, backup.subsidy_expiry
        if amount == 0:
            return 0, 0
        local = now.astimezone(self.timezone)
        if expiry is None or expiry < local.date():
            return 0, amount  # expired (the last day it could be spent is past): withdrawn, never loaded
        try:
            number = backup.last_allowance  # the old card's: the new one then refuses what the old one loaded
            init = sp.parse_subsidy_load(transmit(sp.subsidy_load_command(amount, self.terminal_id, expiry, number)))
        except cp.CardProtocolError as exc:
            raise Refusal("card_error", f"New card refused the subsidy load ({exc}): tap it again", asn) from None
        d = {
            "amount": amount,
            "counter": init.counter,
            "random": init.random.hex(),
            "date": local.strftime("%Y%m%d"),
            "time": local.strftime("%H%M%S"),
            "key_version": init.key_version,
            "algorithm": init.algorithm.name,
            "balance_before": 0,
            "expiry": bcd.encode_date(expiry).hex(),
            "allowance_no": number,
            "old_asn": backup.old_asn,
        }
        try:  # the subsidy purse's balance is always sealed (5.2a): the SAM opens it
            mac2, d["balance_before"] = self.sam.load_mac2_sealed(self._load_session(info, d), init.mac1, init.sealed)
        except SamError as exc:
            raise Refusal("sam_refused", f"This SAM cannot load the carried subsidy: {exc}", asn) from None
        session = self._load_session(info, d)
        intent = self.journal.open(jn.RESTORE_SUBSIDY, now, asn, f"Restoring subsidy {format_yuan(amount)}", d)
        try:
            proof = pp.parse_credit(transmit(pp.credit_command(session.date, session.time, mac2)))
            self.sam.verify_load_mac3(session, proof.mac)
        except pp.OverMaximum:
            self.journal.record(
                intent,
                jn.State.ABANDONED,
                now,
                "Subsidy restore refused by the card",
                {"intent_seq": intent.seq, "amount": amount},
                "card_refused",
            )
            raise Refusal(
                "card_error",
                "New card refused the subsidy load (over its maximum subsidy balance): nothing loaded",
                asn,
            ) from None
        except (cp.CardProtocolError, MacVerificationError) as exc:
            raise Refusal(
                "unconfirmed",
                f"Subsidy load not confirmed ({exc}): tap the NEW card again; the station "
                "asks the card whether it arrived and never loads it twice",
                asn,
            ) from None
        self.journal.record(
            intent,
            jn.State.DONE,
            now,
            f"Subsidy {format_yuan(amount)} restored",
            {**d, "tac": proof.tac.hex(), "intent_seq": intent.seq, "resolved_at_next_tap": False},
            "completed",
        )
        return amount, 0

    # --- cancellation and application deletion ----------------------------------------------------

    def cancel(self, transmit, now: dt.datetime, settle: bool = False, deletion: bool = False) -> int:
        """Void the application (the card proves its final balance), erase its personalisation, tell the platform.

        A balance left on the card is refused unless `settle` (the holder is refunded that amount, which is
        logged). A subsidy purse is frozen and proven with it (P1 01): its balance is never refunded but returned
        to the enterprise (the platform's `cancel`), and refused without `settle` like cash. Returns the settled
        cash amount in fen. Re-tap safe: a voided card is voided and erased again.
        """
        info = self._select(transmit)
        asn = info.asn_hex
        flow = jn.DELETE if deletion else jn.CANCEL
        if info.status == cp.STATUS_TRANSPORT:
            raise Refusal("not_issued", "This card was never issued: nothing to cancel", asn)
        what = "application deletion" if deletion else "cancellation"
        self._require(info, {KeyPurpose.UPDATE: frozenset({KeyUsage.MAC, KeyUsage.VERIFY})}, info.key_version, what)
        registered = self._registry(self.registry.is_registered, asn)
        # A card the platform already closed (a re-tap after a tear at the very end) needs no void record.
        open_there = (
            registered
            and self._platform_card(asn, ("ACTIVE", "LOST", "VOIDED", "CANCELLED"), what)["status"] != "CANCELLED"
        )
        if not registered and info.status != cp.STATUS_VOIDED:
            raise Refusal(
                "platform_refused",
                f"Card {asn} is not registered with the platform: a card voided here "
                "must be known there with its frozen balance; register it (or check the platform database) "
                "first; nothing was changed",
                asn,
            )
        if info.status == cp.STATUS_ACTIVE and info.purse_expiry is not None:
            try:
                if info.private:
                    balance = AdminChannel(transmit, self.sam, info).balance()
                else:
                    balance = pp.parse_balance(transmit(pp.get_balance_command()))
            except SamError as exc:
                raise Refusal("sam_refused", f"This SAM cannot read the card's balance: {exc}", asn) from None
            except cp.CardProtocolError as exc:
                raise Refusal(
                    "card_error", f"Card did not answer GET BALANCE ({exc}): tap it again; nothing was changed", asn
                ) from None
            if balance and not settle:
                raise Refusal(
                    "balance_remains",
                    f"Card still holds {format_yuan(balance)}: settle it first "
                    "(refund the holder, then confirm the settlement)",
                    asn,
                    {"balance": balance},
                )
            if info.has_subsidy and info.subsidy_expiry is not None and not settle:
                # The card's FCI says its subsidy purse holds a balance (5.6): it goes back to the enterprise.
                raise Refusal(
                    "balance_remains",
                    "Card still holds a subsidy balance: it is returned to the enterprise at cancellation, never "
                    "paid out in cash; confirm the settlement to cancel; nothing was changed",
                    asn,
                )
        intent = self.journal.open(
            flow, now, asn, "Voiding and erasing the application", {"settle": settle, "key_version": info.key_version}
        )
        channel = AdminChannel(transmit, self.sam, info)
        try:
            # A subsidy purse is frozen and proven with the cash purse (APPLICATION BLOCK P1 01, 8.2, 8.5).
            frozen = channel.block(with_subsidy=info.has_subsidy)
            # Told once, before the settlement is logged: a re-tap after the ERASE proves only an empty purse,
            # which must not replace what the platform holds of the card's real frozen purses.
            if open_there and not self.journal.has(asn, flow, jn.State.SETTLED):
                self._tell_voided(asn, frozen, channel.block_challenge, info.key_version)
            subsidy = 0 if frozen.subsidy is None else frozen.subsidy.balance
            if (frozen.balance or subsidy) and not settle:
                raise Refusal(
                    "balance_remains",
                    f"Card still holds {format_yuan(frozen.balance)}"
                    + (f" and a subsidy of {format_yuan(subsidy)} (returned to the enterprise)" if subsidy else "")
                    + ": settle it first",
                    asn,
                    {"balance": frozen.balance, "subsidy_balance": subsidy},
                )
            # The settled amount is in the log, with the card's proof, before the purse is erased; once per card
            # (a re-tap after a tear finds the card voided and gets the same frozen balance again).
            if not self.journal.has(asn, flow, jn.State.SETTLED):
                self.journal.record(
                    intent,
                    jn.State.SETTLED,
                    now,
                    f"Balance {format_yuan(frozen.balance)} settled"
                    + (f"; subsidy {format_yuan(subsidy)} returned to the enterprise" if subsidy else ""),
                    {
                        "balance": frozen.balance,
                        "proof": frozen.mac.hex(),
                        "offline_counter": frozen.offline_counter,
                        "online_counter": frozen.online_counter,
                        # the subsidy purse it froze (P1 01): never refunded to the holder (8.5)
                        **_frozen_subsidy_detail(frozen),
                    },
                    "settled",
                )
            channel.erase()
        except SamError as exc:
            raise Refusal("sam_refused", f"This SAM cannot cancel the card: {exc}", asn) from None
        except cp.CardProtocolError as exc:
            raise Refusal("card_error", f"Card did not confirm ({exc}): tap it again", asn) from None
        if registered and self._registry(self.registry.card, asn)["status"] not in ("CANCELLED", "REPLACED"):
            self._registry(self.registry.cancel, asn, settle)
        self.journal.record(
            intent,
            jn.State.DONE,
            now,
            "Application deleted" if deletion else "Card cancelled",
            {"settled": frozen.balance, **({"subsidy_returned": subsidy} if frozen.subsidy is not None else {})},
            "completed",
        )
        self.outcome["subsidy_returned"] = subsidy  # for the command line's answer (the return stays the cash)
        if deletion and info.private:
            # Version 2: the sub-application leaves the card (its slot is free for another enterprise); last, after
            # the platform knows, so a tear here only leaves an erased voided sub-application the next tap deletes.
            try:
                channel.delete()
            except cp.CardProtocolError as exc:
                raise Refusal("card_error", f"Card did not confirm the deletion ({exc}): tap it again", asn) from None
        return frozen.balance


def void_purse(frozen: cp.FrozenPurse, challenge: bytes, key_version: int) -> dict:
    """The registry `voided` request's arguments besides asn, frozen_cents and proof (docs/sync-protocol.md): what
    the card's MAC covers (counters; the subsidy purse of P1 01, its expiry as the card's 4 BCD bytes) and the
    challenge and key version it was computed with, so the platform can check the MAC itself."""
    out: dict = {
        "offline_counter": frozen.offline_counter,
        "online_counter": frozen.online_counter,
        "challenge": challenge.hex(),
        "key_version": key_version,
    }
    sub = frozen.subsidy
    if sub is not None:
        out.update(
            subsidy_cents=sub.balance,
            subsidy_expiry=frozen.raw[12:16].hex(),
            subsidy_offline_counter=sub.offline_counter,
            subsidy_online_counter=sub.online_counter,
        )
    return out


def _frozen_subsidy_detail(frozen: cp.FrozenPurse) -> dict:
    """The subsidy purse APPLICATION BLOCK P1 01 froze, for the void's log record (nothing without one)."""
    sub = frozen.subsidy
    if sub is None:
        return {}
    return {
        "subsidy_balance": sub.balance,
        "subsidy_expiry": None if sub.expiry is None else sub.expiry.isoformat(),
        "subsidy_offline_counter": sub.offline_counter,
        "subsidy_online_counter": sub.online_counter,
    }
