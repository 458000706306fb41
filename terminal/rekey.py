"""Card washing (洗卡: transport keys -> enterprise keys) and key rotation (version N -> N+1) at the issuing terminal.

Both are the same tear-proof exchange (docs/card-application.md section 8.5): one PUT KEY per key into the card's
shadow slot, then COMMIT KEYS, which switches the card's key version in one atomic write. Until the commit the card
answers with its old version and old keys, after it with the new ones, so a card pulled out at any APDU is never
bricked and the next tap simply starts the PUT KEYs again (they are idempotent) and commits.

Like the purse flows, the terminal logs an intent before it changes the card and the outcome after; a torn run
leaves the intent open and the card's next tap here settles it from what SELECT announces (the key version).
No I/O of its own: `transmit`, the SAM, the event log and the time are passed in.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from common import journal as jn
from common.logs import log_event
from sam.interface import KeyPurpose, MacVerificationError, Sam, SamError
from terminal import card_protocol as cp
from terminal.authenticate import select_application
from terminal.decision import Refusal
from terminal.reader import CardRemoved

log = logging.getLogger("onecard.rekey")

KEYS_INTENT, KEYS_CHANGED = jn.KEYS.kinds  # the journal's table (common/journal.py)
KEY_KINDS = jn.KEYS.kinds
APP_PURPOSES = (KeyPurpose.ACCESS, KeyPurpose.UPDATE)
PURSE_PURPOSES = (KeyPurpose.PURCHASE, KeyPurpose.LOAD, KeyPurpose.TAC)
WASH, ROTATE = "wash", "rotate"
VERBS = {WASH: "washing", ROTATE: "re-keying"}


def admin_purpose(key_version: int) -> KeyPurpose:
    """Secured commands are MACed under TRANSPORT while the card is at key version 0, under UPDATE after."""
    return KeyPurpose.TRANSPORT if key_version == 0 else KeyPurpose.UPDATE


def select_for_admin(transmit, enterprise_id: bytes) -> cp.CardInfo:
    """SELECT for the issuing terminal: every status is acceptable here, other enterprises' cards are not."""
    try:
        info = select_application(transmit, enterprise_id)
    except cp.NoSubApplication:
        raise Refusal(
            "other_enterprise",
            f"This card has no sub-application of enterprise {enterprise_id.hex()}: add one first "
            "(docs/card-application.md section 9.6), then wash and issue it",
        ) from None
    except cp.NotOneCard:
        raise Refusal("not_supported", "Card not supported: no one-card application on this card or phone") from None
    except cp.CardProtocolError as exc:
        raise Refusal(
            "not_supported", "Card not supported: it does not answer like a one-card", detail={"problem": str(exc)}
        ) from None
    if info.enterprise_id != enterprise_id:
        raise Refusal(
            "other_enterprise",
            f"This card belongs to enterprise {info.enterprise_id.hex()}, not "
            f"{enterprise_id.hex()}: it cannot be washed or issued here; return it to its enterprise",
            info.asn_hex,
            {"card_enterprise": info.enterprise_id.hex()},
        )
    return info


def require_admin_key(sam: Sam, info: cp.CardInfo) -> None:
    purpose = admin_purpose(info.key_version)
    if not sam.has_key(info.enterprise_id, purpose, info.key_version, info.algorithm):
        raise Refusal(
            "unknown_key_version",
            f"Card key version {info.key_version} ({info.algorithm.name}) is unknown to this issuing "
            f"terminal's SAM: load the {purpose.value} key of that version (key master card) and tap again",
            info.asn_hex,
            {"key_version": info.key_version, "algorithm": info.algorithm.name},
        )


class AdminChannel:
    """Secured commands to one selected card: each one gets a fresh challenge and a SAM MAC under the admin key."""

    def __init__(self, transmit: Callable[[bytes], bytes], sam: Sam, info: cp.CardInfo):
        self.transmit, self.sam, self.info = transmit, sam, info
        self.identity = info.identity()
        self.purpose = admin_purpose(info.key_version)
        self.block_challenge = b""  # the challenge of the last APPLICATION BLOCK's verified answer

    def challenge(self) -> bytes:
        return cp.parse_challenge(self.transmit(cp.get_challenge_command()))

    def send(
        self, ins: int, p1: int, p2: int, plain: bytes = b"", le: int | None = None, challenge: bytes | None = None
    ) -> tuple[bytes, bytes]:
        """(challenge used, the card's answer). The challenge must be the card's answer to the APDU just before."""
        challenge = challenge if challenge is not None else self.challenge()
        mac = self.sam.card_mac(self.purpose, self.identity, cp.secured_mac_input(challenge, ins, p1, p2, plain))
        return challenge, self.transmit(cp.secured_command(ins, p1, p2, plain, mac, le))

    def update_binary(self, sfi: int, offset: int, data: bytes, what: str) -> None:
        """Secured UPDATE BINARY; on a version 2 card the holder, access and purse data go enciphered under SK_WRITE
        by the SAM, MAC'd over the ciphertext (card-application.md 8.2, 9.11); the status byte (EF_APP) in clear."""
        challenge = None
        if self.info.private and sfi != cp.SFI_APP:
            challenge = self.challenge()
            data = self.sam.encipher_card_data(self.purpose, self.identity, challenge + bytes(4), data)
        _, rapdu = self.send(cp.INS_UPDATE_BINARY, 0x80 | sfi, offset, data, challenge=challenge)
        cp.check_secured(rapdu, f"UPDATE BINARY of {what}")

    def block(self, with_subsidy: bool = False) -> cp.FrozenPurse:
        """APPLICATION BLOCK: void the application; the card proves the balance it froze (verified here).
        `with_subsidy` (P1 01, a version 2 sub-application with a subsidy purse): the subsidy purse too."""
        challenge, rapdu = self.send(cp.INS_BLOCK, 1 if with_subsidy else 0, 0, le=28 if with_subsidy else 16)
        frozen = cp.parse_frozen_purse(rapdu, with_subsidy)
        self.block_challenge = challenge  # the platform re-checks the MAC with it (the registry's `voided`)
        try:
            self.sam.verify_card_mac(
                self.purpose, self.identity, cp.block_response_mac_input(challenge, frozen), frozen.mac
            )
        except MacVerificationError:
            raise cp.CardProtocolError("the card's proof of its frozen balance does not verify") from None
        return frozen

    def set_spending_pin(self, pin) -> None:
        """CHANGE REFERENCE DATA (card-application.md 5.5): the PIN enciphered under SK_PIN by the SAM, counter to 3.
        `pin` is a terminal.spending_pin.Pin; it is wiped here."""
        from terminal import spending_pin as sp

        challenge = self.challenge()
        block = pin.block()
        pin.wipe()
        plain = sp.pin_cryptogram_input(block)
        sp.wipe(block)
        try:
            cryptogram = self.sam.wrap_spending_pin(self.identity, challenge, plain)
        finally:
            sp.wipe(plain)
        _, rapdu = self.send(sp.INS_CHANGE_PIN, 0x00, sp.P2_SPENDING_PIN, cryptogram, challenge=challenge)
        cp.check_secured(rapdu, "CHANGE REFERENCE DATA (spending password)")

    def unblock_spending_pin(self) -> None:
        """RESET RETRY COUNTER (card-application.md 5.5): the try counter back to 3, the PIN unchanged."""
        from terminal import spending_pin as sp

        _, rapdu = self.send(sp.INS_RESET_RETRY, sp.P1_RESET_ONLY, sp.P2_SPENDING_PIN)
        cp.check_secured(rapdu, "RESET RETRY COUNTER (spending password)")

    def erase(self) -> None:
        _, rapdu = self.send(cp.INS_ERASE, 0, 0)
        cp.check_secured(rapdu, "ERASE")

    # --- version 2: private data under secure messaging, deletion (docs/card-application.md 9.4, 9.7) ----

    def secured_read(self, ins: int, p1: int, p2: int, length: int, what: str) -> bytes | None:
        """A secured read: the card's MAC checked by the SAM, then the data deciphered by it. None: 6A 83."""
        challenge, rapdu = self.send(ins, p1, p2, le=0)
        if cp.status_word(rapdu) == 0x6A83:
            return None
        answer = cp.parse_secured_read(rapdu, what, length)
        try:
            self.sam.verify_card_mac(self.purpose, self.identity, answer.mac_input(challenge, ins), answer.mac)
        except MacVerificationError:
            raise cp.CardProtocolError(f"the card's MAC over {what} does not verify") from None
        return self.sam.decipher_card_data(
            self.purpose, self.identity, cp.SecuredReadAnswer.context(challenge), answer.ciphertext
        )

    def read_file(self, sfi: int, length: int, what: str) -> bytes:
        data = self.secured_read(cp.INS_READ_BINARY, 0x80 | sfi, 0, length, f"READ BINARY of {what}")
        if data is None:
            raise cp.CardProtocolError(f"the card has no {what}")
        return data

    def read_record(self, number: int) -> cp.TransactionRecord | None:
        data = self.secured_read(cp.INS_READ_RECORD, number, 0x2C, cp.RECORD_LEN, "READ RECORD")
        return None if data is None else cp.parse_record(data + b"\x90\x00")

    def balance(self) -> int:
        """Balance (then offline and online counters) of a version 2 sub-application, MAC-verified."""
        data = self.secured_read(cp.INS_GET_BALANCE, 0x00, 0x02, 8, "GET BALANCE")
        if data is None:
            raise cp.CardProtocolError("the card has no balance")
        return int.from_bytes(data[:4], "big")

    def delete(self) -> None:
        """DELETE SUB-APPLICATION (voided version 2 sub-application): frees its slot on the card."""
        _, rapdu = self.send(cp.INS_DELETE, 0, 0)
        cp.check_secured(rapdu, "DELETE SUB-APPLICATION")

    def put_key(self, purpose: KeyPurpose, new_version: int) -> None:
        challenge = self.challenge()
        cryptogram, kcv = self.sam.wrap_card_key(self.identity, challenge, purpose, new_version)
        _, rapdu = self.send(
            cp.INS_PUT_KEY, new_version, cp.KEY_IDS[purpose.value], cryptogram, le=3, challenge=challenge
        )
        answered = cp.check_secured(rapdu, f"PUT KEY {purpose.value}", 3)
        if not hmac.compare_digest(answered, kcv):
            # The card holds something else than the SAM sent: do not commit, a second tap writes it again.
            raise cp.CardProtocolError(f"the card's check value for the new {purpose.value} key is wrong")

    def put_ota_key(self, which: str, new_version: int) -> None:
        """PUT KEY of a version 2 sub-application's OTA key ("kic" / "kid", docs/ota.md 2), enciphered as the others."""
        challenge = self.challenge()
        cryptogram, kcv = self.sam.wrap_ota_key(self.identity, challenge, which, new_version)
        _, rapdu = self.send(cp.INS_PUT_KEY, new_version, cp.OTA_KEY_IDS[which], cryptogram, le=3, challenge=challenge)
        answered = cp.check_secured(rapdu, f"PUT KEY {which}", 3)
        if not hmac.compare_digest(answered, kcv):
            raise cp.CardProtocolError(f"the card's check value for the new {which} key is wrong")

    def commit(self, new_version: int) -> None:
        _, rapdu = self.send(cp.INS_COMMIT_KEYS, 0, new_version)
        cp.check_secured(rapdu, "COMMIT KEYS")


@dataclass(frozen=True)
class RekeyResult:
    asn: str
    from_version: int
    to_version: int
    outcome: str  # "washed", "rekeyed", "already" (nothing to do: a second tap after a tear at the commit)


def _purse_purposes(sam: Sam, info: cp.CardInfo, version: int) -> tuple[KeyPurpose, ...]:
    # A card with a purse must get all three purse keys (COMMIT refuses otherwise); a transport card gets a
    # purse when this SAM can give it one.
    if info.purse_expiry is not None:
        return PURSE_PURPOSES
    if all(sam.has_key(info.enterprise_id, p, version, info.algorithm) for p in PURSE_PURPOSES):
        return PURSE_PURPOSES
    return ()


def rekey_card(
    transmit, sam: Sam, enterprise_id: bytes, target_version: int, event_log, now: dt.datetime, mode: str
) -> RekeyResult:
    """Wash (mode WASH: key version 0 -> target) or rotate (ROTATE: N -> target) the card in the field.

    Raises Refusal (nothing changed), or CardRemoved (the card still works with its old or its new keys; tap again).
    """
    if not 1 <= target_version <= 255:
        raise ValueError("enterprise key versions are 1..255")
    info = select_for_admin(transmit, enterprise_id)
    asn = info.asn_hex
    journal = jn.Journal(event_log)
    open_intent = journal.unfinished(asn, jn.KEYS)
    if info.key_version == target_version:
        if open_intent is not None:
            # The commit of an interrupted run reached the card: log the outcome now, once.
            _log_changed(journal, now, open_intent, open_intent.detail, resolved_later=True)
        return RekeyResult(asn, info.key_version, target_version, "already")
    if info.status == cp.STATUS_VOIDED:
        raise Refusal("voided", "This card has been voided: its keys are not changed any more", asn)
    if mode == WASH and info.key_version != 0:
        raise Refusal(
            "already_washed",
            f"Card already carries enterprise keys (version {info.key_version}): "
            f"use key rotation to move it to version {target_version}",
            asn,
        )
    if mode == ROTATE and info.key_version == 0:
        raise Refusal("not_washed", "Card still has its transport keys: wash it first", asn)
    require_admin_key(sam, info)
    purposes = APP_PURPOSES + _purse_purposes(sam, info, target_version)
    for p in purposes:
        if not sam.has_key(enterprise_id, p, target_version, info.algorithm):
            raise Refusal(
                "missing_new_key",
                f"This SAM has no {p.value} key version {target_version} "
                f"({info.algorithm.name}): load the new key set before {VERBS[mode]} cards",
                asn,
            )
    detail = {
        "op": mode,
        "from_version": info.key_version,
        "to_version": target_version,
        "key_version": info.key_version,
        "algorithm": info.algorithm.name,
        "purposes": [p.value for p in purposes],
    }
    if open_intent is None or open_intent.detail.get("to_version") != target_version:
        open_intent = journal.open(jn.KEYS, now, asn, f"Changing keys {info.key_version} -> {target_version}", detail)
    channel = AdminChannel(transmit, sam, info)
    try:
        for p in purposes:
            channel.put_key(p, target_version)
        if info.app_version >= 2:
            # A sub-application of a SIM gets its own OTA key set with its keys (docs/ota.md 2).
            for which in cp.OTA_KEY_IDS:
                channel.put_ota_key(which, target_version)
        channel.commit(target_version)
    except SamError as exc:
        raise Refusal("sam_refused", f"This SAM refuses {VERBS[mode]} the card: {exc}", asn) from None
    except cp.CardProtocolError as exc:
        raise Refusal("card_error", f"Card refused the key change ({exc}): tap it again", asn) from None
    _log_changed(journal, now, open_intent, detail, resolved_later=False)
    return RekeyResult(asn, info.key_version, target_version, "washed" if mode == WASH else "rekeyed")


def _log_changed(journal: jn.Journal, now, opened: jn.Intent, intent, resolved_later: bool) -> None:
    """Record the key change of `opened` (its detail, or this run's `intent` detail when it reuses an open one)."""
    asn, intent_seq = opened.asn, opened.seq
    detail = {
        "op": intent["op"],
        "from_version": intent["from_version"],
        "to_version": intent["to_version"],
        "key_version": intent["to_version"],
        "algorithm": intent["algorithm"],
        "intent_seq": intent_seq,
        "resolved_at_next_tap": resolved_later,
    }
    journal.record(
        opened,
        jn.State.DONE,
        now,
        f"Keys changed {intent['from_version']} -> {intent['to_version']}",
        detail,
        "completed",
    )
    log_event(log, "keys.changed", asn=asn, to_version=intent["to_version"], resolved_later=resolved_later)


def batch(
    reader,
    sam: Sam,
    enterprise_id: bytes,
    target_version: int,
    event_log,
    clock: Callable[[], dt.datetime],
    out: Callable[[str], None],
    mode: str = WASH,
    count: int | None = None,
    stop: threading.Event | None = None,
    poll: float = 0.5,
) -> dict[str, int]:
    """Wash (or rotate) cards tapped one after another; one progress line per card: card N, ASN, result."""
    stop = stop or threading.Event()
    totals = {"done": 0, "already": 0, "refused": 0, "torn": 0}
    n = 0
    while not stop.is_set() and (count is None or n < count):
        conn = reader.wait_for_card(poll)
        if conn is None:
            continue
        n += 1
        seen: list[bytes] = []

        def transmit(apdu: bytes, _conn=conn) -> bytes:
            r = _conn.transmit(apdu)
            if not seen and apdu[:2] == b"\x00\xa4" and r[-2:] == b"\x90\x00":
                seen.append(r)
            return r

        try:
            result = rekey_card(transmit, sam, enterprise_id, target_version, event_log, clock(), mode)
            if result.outcome == "already":
                totals["already"] += 1
                line = f"card {n}: {result.asn} already at key version {target_version}"
            else:
                totals["done"] += 1
                line = f"card {n}: {result.asn} {result.outcome} to key version {target_version}"
        except Refusal as r:
            totals["refused"] += 1
            line = f"card {n}: {r.asn or '-'} refused: {r.message}"
        except CardRemoved:
            totals["torn"] += 1
            asn = _asn_of(seen)
            line = (
                f"card {n}: {asn} removed too soon: tap it again to finish (it keeps working with its old "
                "keys until the change completes)"
            )
        finally:
            conn.close()
        out(line)
        while not stop.is_set() and not reader.wait_for_removal(poll):
            pass
    out(
        f"{n} card(s): {totals['done']} {'washed' if mode == WASH else 'rekeyed'}, {totals['already']} already done, "
        f"{totals['refused']} refused, {totals['torn']} to tap again"
    )
    return totals


def _asn_of(selects: list[bytes]) -> str:
    try:
        return cp.parse_select(selects[0]).asn_hex if selects else "-"
    except cp.CardProtocolError:
        return "-"
