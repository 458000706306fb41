"""The administrator's card flows: loss report, unlock, cancellation, replacement; configuration documents and card
actions.

A part of `central.store.Platform`: it works on the platform database through `self.conn` and `self._txn()`.
"""

from __future__ import annotations

import datetime as dt
import json

from central.db import ACTIVE, CANCELLED, LOST, REPLACED, VOIDED, PlatformError, _asn, _yuan
from common import sync_protocol as p
from common.config import ConfigError, document_max_load

# What a station's `voided` request carries besides the frozen cash balance and its MAC (table voided_purses).
VOID_PURSE_FIELDS = (
    "offline_counter",
    "online_counter",
    "subsidy_cents",
    "subsidy_expiry",
    "subsidy_offline_counter",
    "subsidy_online_counter",
    "challenge",
    "key_version",
    "mac_status",
)


class CardFlows:
    def _card_for_update(self, asn: str) -> dict:
        return self.card(asn)

    def report_loss(self, asn: str) -> int:
        """LOST, blacklisted, every terminal of the enterprise notified; returns the new blacklist version."""
        with self._txn():
            c = self._card_for_update(asn)
            if c["status"] == LOST:
                raise PlatformError(f"card {c['asn']} is already reported lost; nothing changed")
            if c["status"] == VOIDED:
                raise PlatformError(
                    f"card {c['asn']} is VOIDED: an issuing station voided it, so every terminal "
                    "refuses it already; finish its replacement or cancellation"
                )
            if c["status"] != ACTIVE:
                raise PlatformError(f"card {c['asn']} is {c['status']}, not active; it is already blacklisted")
            self.conn.execute(
                "UPDATE cards SET status = ?, updated_at = ? WHERE asn = ?", (LOST, self._now(), c["asn"])
            )
            v = self._change_blacklist(c["enterprise_id"], {c["asn"]: "lost"}, [])
            self._history(c["asn"], "loss_report", f"reported lost; blacklist version {v}")
        return v

    def unlock(self, asn: str) -> int:
        with self._txn():
            c = self._card_for_update(asn)
            if c["status"] != LOST:
                raise PlatformError(f"card {c['asn']} is {c['status']}, not lost; only a lost card can be unlocked")
            self.conn.execute(
                "UPDATE cards SET status = ?, updated_at = ? WHERE asn = ?", (ACTIVE, self._now(), c["asn"])
            )
            v = self._change_blacklist(c["enterprise_id"], {}, [c["asn"]])
            self._history(c["asn"], "unlock", f"unlocked; blacklist version {v}")
        return v

    def cancel(self, asn: str, *, settle: bool = False) -> int:
        """CANCELLED and blacklisted; a non-zero balance must be settled (refund recorded) first. The subsidy ledger
        balance (`subsidy_ledger`) is returned to the enterprise whatever `settle` says: it is the enterprise's
        money until spent, never refunded to the holder (docs/canteen.md "Subsidy wallet")."""
        with self._txn():
            c = self._card_for_update(asn)
            if c["status"] in (CANCELLED, REPLACED):
                raise PlatformError(f"card {c['asn']} is already {c['status']}; nothing changed")
            if c["balance_cents"] and not settle:
                raise PlatformError(
                    f"card {c['asn']} has a balance of {_yuan(c['balance_cents'])} yuan; settle it "
                    "first: rerun with --settle to record the refund"
                )
            if c["subsidy_cents"] > 0 and not settle:
                raise PlatformError(
                    f"card {c['asn']} has a subsidy balance of {_yuan(c['subsidy_cents'])} yuan, returned to the "
                    "enterprise at cancellation (never paid out in cash); rerun with --settle to record it"
                )
            if c["balance_cents"]:
                self.conn.execute(
                    "INSERT INTO refunds (asn, amount_cents, at, note) VALUES (?, ?, ?, ?)",
                    (c["asn"], c["balance_cents"], self._now(), "settled at cancellation"),
                )
            self.conn.execute(
                "UPDATE cards SET status = ?, balance_cents = 0, updated_at = ? WHERE asn = ?",
                (CANCELLED, self._now(), c["asn"]),
            )
            v = self._change_blacklist(c["enterprise_id"], {c["asn"]: "cancelled"}, [])
            # The subsidy ledger balance goes back to the enterprise, never to the holder (central/subsidy.py).
            returned = self._return_subsidy(c["asn"])
            self._history(
                c["asn"],
                "cancel",
                f"cancelled, {_yuan(c['balance_cents'])} yuan refunded"
                + (f", subsidy {_yuan(returned)} yuan returned to the enterprise" if returned else "")
                + f"; blacklist version {v}",
            )
        return v

    def delete_application(self, raw: bytes) -> dict:
        """A holder deleted a sub-application from the phone menu (docs/phone-menu.md 4): the card verified the
        service password, voided the sub-application and MAC'd what it froze under K_TAC. Verified here, then the
        sub-application is VOIDED with that proof and cancelled as `cancel --settle` does (platform balance refunded,
        blacklisted, every terminal of the enterprise told). The same request again changes nothing and says so.
        Returns {"asn", "enterprise_id", "refunded_cents", "blacklist_version" (None when already deleted)}."""
        from common import deletion_request as dr
        from sam.interface import Algorithm, CardIdentity, SamError

        try:
            req, mac = dr.parse(raw)
            algorithm = Algorithm(req.algorithm)
        except ValueError as exc:
            raise PlatformError(f"deletion request refused: {exc}") from None
        if self.tac_sam is None:
            raise PlatformError("deletion request refused: the platform has no TAC keys (serve with --tac-keystore)")
        asn, eid = req.asn.hex(), req.enterprise_id.hex()
        with self._txn():
            c = self._card_for_update(asn)
            if c["enterprise_id"] != eid:
                raise PlatformError(f"deletion request refused: card {asn} has no application of enterprise {eid}")
            try:
                self.tac_sam.verify_deletion_proof(
                    CardIdentity(req.asn, req.enterprise_id, req.key_version, algorithm), req.signed_part(), mac
                )
            except SamError as exc:
                raise PlatformError(f"deletion request refused: {exc}") from None
            if c["status"] == CANCELLED:
                return {"asn": asn, "enterprise_id": eid, "refunded_cents": 0, "blacklist_version": None}
            if c["status"] == REPLACED:
                raise PlatformError(f"deletion request refused: card {asn} was replaced; nothing changed")
            self.record_void(asn, req.frozen_balance, (req.signed_part() + mac).hex(), "phone")
            refund = self.card(asn)["balance_cents"]
            v = self.cancel(asn, settle=True)
            self._history(
                asn,
                "deleted_by_holder",
                f"application of enterprise {eid} deleted by its holder from the phone menu; "
                f"{_yuan(refund)} yuan refunded (card froze {_yuan(req.frozen_balance)} yuan)",
            )
        return {"asn": asn, "enterprise_id": eid, "refunded_cents": refund, "blacklist_version": v}

    def record_void(self, asn: str, frozen_cents: int, proof: str, terminal_id: str, purse: dict | None = None) -> None:
        """An issuing station voided the card (APPLICATION BLOCK): VOIDED, with the balance the card proved it froze.

        `purse` (a station's `voided` request, docs/sync-protocol.md): the rest of what the card froze and proved
        under the same MAC `proof` (counters; the subsidy purse of P1 01) and the challenge and key version of that
        MAC. The platform checks the MAC itself when its SAM holds the card's UPDATE key (usage verify) and refuses
        a proof that does not verify (nothing recorded); without that key it records the proof 'unchecked' (the
        station verified it). Told before the station goes on (replacement, erase), so a card left voided by a flow
        that stopped halfway is never listed ACTIVE. Idempotent: a re-tap of the voided card reports the same
        frozen balance again.
        """
        with self._txn():
            c = self._card_for_update(asn)
            if c["status"] not in (ACTIVE, LOST, VOIDED):
                raise PlatformError(f"card {c['asn']} is {c['status']}; a voided card must be active, lost or voided")
            if not 0 <= frozen_cents <= 0xFFFFFFFF:
                raise PlatformError(f"frozen balance {frozen_cents} is not 0..4294967295 fen")
            if purse is not None:
                status = self._check_void_proof(c, frozen_cents, proof, purse)
                self._store_void_purse(c["asn"], purse, status)
            self.conn.execute(
                "INSERT INTO voided_cards VALUES (?, ?, ?, ?, ?) ON CONFLICT (asn) DO UPDATE SET "
                "frozen_cents = excluded.frozen_cents, proof = excluded.proof, terminal_id = excluded.terminal_id, "
                "at = excluded.at",
                (c["asn"], frozen_cents, proof, terminal_id, self._now()),
            )
            if c["status"] != VOIDED:
                self.conn.execute(
                    "UPDATE cards SET status = ?, updated_at = ? WHERE asn = ?", (VOIDED, self._now(), c["asn"])
                )
                self._history(
                    c["asn"],
                    "void",
                    f"voided by issuing terminal {terminal_id}; the card froze "
                    f"{_yuan(frozen_cents)} yuan (platform balance "
                    f"{_yuan(c['balance_cents'])} yuan)",
                )

    def _store_void_purse(self, asn: str, purse: dict, status: str) -> None:
        """voided_purses: what the card proved besides its frozen cash balance (a repeat replaces it)."""
        self.conn.execute(
            "INSERT INTO voided_purses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (asn) DO UPDATE SET "
            "offline_counter = excluded.offline_counter, online_counter = excluded.online_counter, "
            "subsidy_cents = excluded.subsidy_cents, subsidy_expiry = excluded.subsidy_expiry, "
            "subsidy_offline_counter = excluded.subsidy_offline_counter, "
            "subsidy_online_counter = excluded.subsidy_online_counter, challenge = excluded.challenge, "
            "key_version = excluded.key_version, mac_status = excluded.mac_status",
            (
                _asn(asn),
                purse["offline_counter"],
                purse["online_counter"],
                purse.get("subsidy_cents"),
                purse.get("subsidy_expiry"),
                purse.get("subsidy_offline_counter"),
                purse.get("subsidy_online_counter"),
                purse["challenge"],
                purse["key_version"],
                status,
            ),
        )

    def voided(self, asn: str) -> dict | None:
        """{"frozen_cents", "proof", "terminal_id", "at"} of a card an issuing station voided, else None; with what
        a station's request carried besides (`record_void`'s `purse`): the counters, "subsidy_cents",
        "subsidy_expiry" (8 BCD digits; both None when voided without the subsidy purse), its counters, "challenge",
        "key_version" and "mac_status" ('ok': verified by the platform, 'unchecked')."""
        row = self.conn.execute(
            "SELECT frozen_cents, proof, terminal_id, at FROM voided_cards WHERE asn = ?", (_asn(asn),)
        ).fetchone()
        if row is None:
            return None
        out = dict(zip(("frozen_cents", "proof", "terminal_id", "at"), row))
        extra = self.conn.execute(
            f"SELECT {', '.join(VOID_PURSE_FIELDS)} FROM voided_purses WHERE asn = ?", (_asn(asn),)
        ).fetchone()
        if extra is not None:
            out.update(zip(VOID_PURSE_FIELDS, extra))
        return out

    def _check_void_proof(self, c: dict, frozen_cents: int, proof: str, purse: dict) -> str:
        """'ok' when the platform's SAM verified the card's MAC over the frozen purse (card-application.md 8.2),
        'unchecked' when it holds no UPDATE key of that version; PlatformError when the MAC does not verify."""
        from sam.interface import Algorithm, CardIdentity, KeyPurpose, MacVerificationError, SamError

        frozen = (
            frozen_cents.to_bytes(4, "big")
            + purse["offline_counter"].to_bytes(2, "big")
            + purse["online_counter"].to_bytes(2, "big")
        )
        if purse.get("subsidy_cents") is not None:
            frozen += (
                purse["subsidy_cents"].to_bytes(4, "big")
                + bytes.fromhex(purse["subsidy_expiry"])
                + purse["subsidy_offline_counter"].to_bytes(2, "big")
                + purse["subsidy_online_counter"].to_bytes(2, "big")
            )
        if self.tac_sam is None:
            return "unchecked"
        eid, version = bytes.fromhex(c["enterprise_id"]), purse["key_version"]
        purpose = KeyPurpose.UPDATE if version else KeyPurpose.TRANSPORT
        message = bytes.fromhex(purse["challenge"]) + b"\x1e" + frozen
        forged = False
        for algorithm in Algorithm:
            if not self.tac_sam.has_key(eid, purpose, version, algorithm):
                continue
            try:
                self.tac_sam.verify_card_mac(
                    purpose,
                    CardIdentity(bytes.fromhex(c["asn"]), eid, version, algorithm),
                    message,
                    bytes.fromhex(proof),
                )
            except MacVerificationError:
                forged = True
                continue
            except SamError:
                continue  # held without usage verify: the platform cannot check it
            return "ok"
        if forged:
            raise PlatformError(
                f"void of card {c['asn']} refused: the card's MAC over the frozen purse does not verify (forged or "
                "altered figures); nothing was recorded: tap the card again at the issuing station"
            )
        return "unchecked"

    def replace(self, old_asn: str, new_asn: str, key_version: int | None = None) -> int:
        """Old card REPLACED and blacklisted; the new card gets the old one's holder, rights, balance and subsidy
        ledger balance (an expired one lapses), its uncollected allowances are announced for the new card, and it is
        counted at `key_version` by `platform key-versions` when the issuing station reports it."""
        new_asn = _asn(new_asn)
        with self._txn():
            c = self._card_for_update(old_asn)
            if c["status"] not in (ACTIVE, LOST, VOIDED):
                raise PlatformError(
                    f"card {c['asn']} is {c['status']}; only an active, lost or voided card can be replaced"
                )
            if self.conn.execute("SELECT 1 FROM cards WHERE asn = ?", (new_asn,)).fetchone():
                raise PlatformError(f"new card {new_asn} is already registered; issue a blank card")
            holder_id = self.conn.execute("SELECT holder_id FROM cards WHERE asn = ?", (c["asn"],)).fetchone()[0]
            self.conn.execute(
                "INSERT INTO cards (asn, enterprise_id, holder_id, status, balance_cents, rights, "
                "updated_at, max_balance_cents) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    new_asn,
                    c["enterprise_id"],
                    holder_id,
                    ACTIVE,
                    c["balance_cents"],
                    json.dumps(c["rights"], sort_keys=True),
                    self._now(),
                    c["max_balance_cents"],
                ),
            )
            self.conn.execute(
                "UPDATE cards SET status = ?, balance_cents = 0, replaced_by = ?, updated_at = ? WHERE asn = ?",
                (REPLACED, new_asn, self._now(), c["asn"]),
            )
            v = self._change_blacklist(c["enterprise_id"], {c["asn"]: "replaced"}, [])
            self._history(c["asn"], "replace", f"replaced by {new_asn}; blacklist version {v}")
            if key_version is not None:
                self.record_key_version(new_asn, key_version)
            # The subsidy ledger moves too, kept apart from cash (central/subsidy.py); uncollected allowances follow.
            subsidy = self._carry_subsidy(c["asn"], new_asn, c["enterprise_id"])
            self._history(
                new_asn, "issued", f"replacement of {c['asn']}, balance {_yuan(c['balance_cents'])} moved{subsidy}"
            )
        return v

    def publish_config(self, enterprise_id: str, document: dict, *, validate: bool = True) -> int:
        """Queue a configuration document for an enterprise's terminals, checked first with the terminals' own
        validators (common/config.py), so a document a terminal would refuse is never queued. validate=False is for
        tests that play an older platform."""
        if validate:
            from common.config import ConfigError, validate_platform_document

            try:
                validate_platform_document(document, "configuration document")
            except ConfigError as exc:
                raise PlatformError(f"{exc} (terminals would refuse it; nothing was queued)") from None
        with self._txn():
            v = self._enterprise(enterprise_id)[2] + 1
            self.conn.execute(
                "UPDATE enterprises SET config_version = ?, config_document = ? WHERE enterprise_id = ?",
                (v, json.dumps(document, sort_keys=True), enterprise_id),
            )
            self._queue(
                p.enterprise_topic(enterprise_id),
                self.seal("config", f"e:{enterprise_id}", self._config_body(enterprise_id)),
            )
        return v

    def _config_body(self, enterprise_id: str) -> dict:
        v, doc = self.conn.execute(
            "SELECT config_version, config_document FROM enterprises WHERE enterprise_id = ?", (enterprise_id,)
        ).fetchone()
        return {"enterprise_id": enterprise_id, "version": v, "document": json.loads(doc) if doc else {}}

    def add_card_action(self, asn: str, action: str, params: dict, action_id: str | None = None) -> str:
        """Queue an action the top-up terminal writes onto the card at its next tap there, after checking that the
        card can take it: a card action the card would refuse blocks nothing, but is refused here."""
        with self._txn():
            c = self.card(asn)
            self._check_card_action(c, action, params)
            action_id = action_id or self.new_message_id()
            self.conn.execute(
                "INSERT INTO card_actions (action_id, enterprise_id, asn, action, params, created_at, "
                "status) VALUES (?, ?, ?, ?, ?, ?, 'pending')",
                (action_id, c["enterprise_id"], c["asn"], action, json.dumps(params), self._now()),
            )
            self._queue(
                p.enterprise_topic(c["enterprise_id"]),
                self.seal("card_action", f"e:{c['enterprise_id']}", self._action_body(action_id)),
            )
        return action_id

    def _check_card_action(self, c: dict, action: str, params: dict) -> None:
        if c["status"] != ACTIVE:
            raise PlatformError(f"card {c['asn']} is {c['status']}; only an active card takes card actions")
        if action == "topup":
            amount = params.get("amount") if isinstance(params, dict) and set(params) == {"amount"} else None
            if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
                raise PlatformError('an over-the-air top-up takes {"amount": fen > 0} and nothing else')
            (doc,) = self.conn.execute(
                "SELECT config_document FROM enterprises WHERE enterprise_id = ?", (c["enterprise_id"],)
            ).fetchone()
            try:
                max_load = document_max_load(json.loads(doc) if doc else None)
            except ConfigError:
                max_load = document_max_load(None)
            if amount > max_load:
                raise PlatformError(
                    f"top-up of {_yuan(amount)} is over the enterprise's top-up limit of "
                    f"{_yuan(max_load)} per load (topup.max_load); queue several smaller top-ups"
                )
            queued = sum(
                json.loads(r[0])["amount"]
                for r in self.conn.execute(
                    "SELECT params FROM card_actions WHERE asn = ? AND action = 'topup' AND status = 'pending'",
                    (c["asn"],),
                )
            )
            room = c["max_balance_cents"] - c["balance_cents"] - queued
            if amount > room:
                raise PlatformError(
                    f"top-up of {_yuan(amount)} would take card {c['asn']} over its maximum balance "
                    f"of {_yuan(c['max_balance_cents'])} (balance {_yuan(c['balance_cents'])}, "
                    f"{_yuan(queued)} already queued): at most {_yuan(max(room, 0))} fits"
                )
        elif action == "rights":
            try:
                ok = (
                    set(params) <= {"door_groups", "valid_from", "valid_to", "time_profile"}
                    and {"door_groups", "valid_from", "valid_to"} <= set(params)
                    and isinstance(params["door_groups"], list)
                    and params["door_groups"]
                    and all(
                        isinstance(g, int) and not isinstance(g, bool) and 1 <= g <= 64 for g in params["door_groups"]
                    )
                    and dt.date.fromisoformat(params["valid_from"]) <= dt.date.fromisoformat(params["valid_to"])
                    and type(params.get("time_profile", 0)) is int
                    and 0 <= params.get("time_profile", 0) <= 255
                )
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise PlatformError(
                    "a rights change takes door_groups (1..64), valid_from <= valid_to (YYYY-MM-DD) "
                    "and an optional time_profile (0..255)"
                )
        else:
            raise PlatformError(f"card action {action!r:.40} is unknown; the top-up terminal runs topup and rights")

    def cancel_action(self, action_id: str) -> str:
        """Cancel a pending card action: no longer offered, and a signed cancellation tells the enterprise's
        terminals to drop it from their inbox (a terminal never applies a cancelled action)."""
        with self._txn():
            row = self.conn.execute(
                "SELECT enterprise_id, asn, action, status FROM card_actions WHERE action_id = ?", (action_id,)
            ).fetchone()
            if row is None:
                raise PlatformError(
                    f"card action {action_id!r:.70} does not exist; the ID is printed when it is "
                    "queued (`onecard platform card ASN` lists a card's actions)"
                )
            eid, asn, action, status = row
            if status == "done":
                raise PlatformError(
                    f"card action {action_id} was already applied on card {asn}; it cannot be "
                    "cancelled (a top-up already on the card is refunded or spent like any other)"
                )
            if status != "pending":
                raise PlatformError(f"card action {action_id} is already {status}; nothing changed")
            self.conn.execute(
                "UPDATE card_actions SET status = 'cancelled', status_note = ? WHERE action_id = ?",
                (f"cancelled by an administrator at {self._now()}", action_id),
            )
            self._history(asn, "card_action_cancelled", f"card action {action_id} ({action}) cancelled")
            self._queue(
                p.enterprise_topic(eid), self.seal("card_action.cancel", f"e:{eid}", self._cancel_body(action_id))
            )
        return asn

    def _cancel_body(self, action_id: str) -> dict:
        asn, action = self.conn.execute(
            "SELECT asn, action FROM card_actions WHERE action_id = ?", (action_id,)
        ).fetchone()
        return {"action_id": action_id, "asn": asn, "action": action}

    def card_actions(self, asn: str) -> list[dict]:
        rows = self.conn.execute(
            "SELECT action_id, action, params, created_at, status, status_note FROM card_actions "
            "WHERE asn = ? ORDER BY created_at, action_id",
            (_asn(asn),),
        ).fetchall()
        return [
            {
                "action_id": r[0],
                "action": r[1],
                "params": json.loads(r[2]),
                "created_at": r[3],
                "status": r[4],
                "note": r[5],
            }
            for r in rows
        ]

    def authorise(self, asn: str, rights: dict, queue: bool = True) -> str:
        """Change a card's access rights: recorded here, and queued as a card action that the card service
        (top-up) terminal writes onto the card at its next tap there (`queue`; False: written over the air,
        central/cli.py, which queues the action only if that fails). Returns the action ID ("" unqueued)."""
        with self._txn():
            c = self.card(asn)
            if c["status"] != ACTIVE:
                raise PlatformError(f"card {c['asn']} is {c['status']}; only an active card gets new rights")
            self.conn.execute(
                "UPDATE cards SET rights = ?, updated_at = ? WHERE asn = ?",
                (json.dumps({**c["rights"], **rights}, sort_keys=True), self._now(), c["asn"]),
            )
            self._history(c["asn"], "authorise", f"rights changed to {json.dumps(rights, sort_keys=True)}")
            return self.add_card_action(c["asn"], "rights", rights) if queue else ""

    def _action_body(self, action_id: str) -> dict:
        asn, action, params = self.conn.execute(
            "SELECT asn, action, params FROM card_actions WHERE action_id = ?", (action_id,)
        ).fetchone()
        return {"action_id": action_id, "asn": asn, "action": action, "params": json.loads(params)}
