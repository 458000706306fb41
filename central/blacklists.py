"""Versioned blacklists per enterprise, and the signed snapshot and delta bodies terminals apply.

A part of `central.store.Platform`: it works on the platform database through `self.conn` and `self._txn()`.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

from central.db import MAX_DELTA_CHANGES, PlatformError
from common import sync_protocol as p
from common.files import write_atomically
from common.logs import log_event

log = logging.getLogger("platform")

# A card listed (again) at a version: its reason and version replace an earlier listing.
_LIST = (
    "INSERT INTO blacklist VALUES (?, ?, ?, ?) ON CONFLICT (enterprise_id, asn) DO UPDATE SET "
    "reason = excluded.reason, listed_in_version = excluded.listed_in_version"
)


class Blacklists:
    def epoch(self) -> p.Epoch:
        instance, generation = self.conn.execute(
            "SELECT instance, generation FROM platform_epoch WHERE id = 1"
        ).fetchone()
        return p.Epoch(generation, instance)

    def restore_epoch(self, reason: str, generation: int | None = None) -> p.Epoch:
        """After restoring or replacing this database: move to a newer epoch and send every enterprise a
        re-based snapshot, which terminals holding a later version of the old epoch accept (and only they)."""
        if not reason.strip():
            raise PlatformError("--reason must say what was restored (it is kept with the epoch)")
        with self._txn():
            old = self.epoch()
            new_gen = old.generation + 1 if generation is None else generation
            if new_gen <= old.generation:
                raise PlatformError(
                    f"generation {new_gen} is not after the current generation {old.generation}; "
                    f"give a generation above {old.generation} (or leave --generation out)"
                )
            # Terminals may report a later generation (this database is older than their lists): go past it.
            seen = [
                json.loads(h).get("blacklist_epoch")
                for (h,) in self.conn.execute("SELECT heartbeat FROM terminals WHERE heartbeat IS NOT NULL")
            ]
            reported = max([e["generation"] for e in seen if e and e.get("instance") == old.instance], default=0)
            new_gen = max(new_gen, reported + 1)
            self.conn.execute(
                "UPDATE platform_epoch SET generation = ?, changed_at = ?, reason = ? WHERE id = 1",
                (new_gen, self._now(), reason),
            )
            for (eid,) in self.conn.execute("SELECT enterprise_id FROM enterprises ORDER BY enterprise_id").fetchall():
                # A new version opens the epoch (a snapshot needs version >= 1, and every terminal below it is
                # sent a snapshot, never a delta across the restore).
                v = self._enterprise(eid)[1] + 1
                self.conn.execute("UPDATE enterprises SET blacklist_version = ? WHERE enterprise_id = ?", (v, eid))
                self.conn.execute("INSERT INTO blacklist_changes VALUES (?, ?, '*')", (eid, v))
                self._queue(
                    p.enterprise_topic(eid), self.seal("blacklist.snapshot", f"e:{eid}", self.snapshot_body(eid))
                )
            epoch = self.epoch()
        self.record_published()
        log_event(
            log,
            "platform.epoch_changed",
            logging.WARNING,
            instance=epoch.instance,
            generation=epoch.generation,
            text=f"platform epoch {old.generation} -> {epoch.generation} "
            f"({reason}); re-based snapshots queued for every enterprise",
        )
        return epoch

    @property
    def published_path(self) -> Path | None:
        """Beside the database: the epoch and blacklist versions terminals were last sent (written by worker 0
        after each publish). A database older than this file was restored from a backup. On PostgreSQL there is no
        file beside the database: the file is the one given as `published_state` (none by default; then the
        terminals' heartbeats alone tell of a restored database, `platform_behind` alarms)."""
        if self.path is None:
            return self.published_state
        return self.path.with_name(self.path.name + ".published")

    def record_published(self) -> None:
        if self.published_path is None:
            return
        epoch = self.epoch()
        versions = dict(self.conn.execute("SELECT enterprise_id, blacklist_version FROM enterprises"))
        state = {"instance": epoch.instance, "generation": epoch.generation, "blacklist_versions": versions}
        try:
            write_atomically(self.published_path, (json.dumps(state, sort_keys=True) + "\n").encode(), mode=0o644)
        except OSError as exc:
            log_event(
                log,
                "platform.published_state_unwritten",
                logging.WARNING,
                path=self.published_path,
                text=f"cannot write {self.published_path} ({exc.strerror}); a restore of this database "
                "would then be noticed only by the terminals' heartbeats",
            )

    def restored_problem(self) -> str | None:
        """Why this database looks restored (older than what it already published), or None."""
        if self.published_path is None:
            return None
        try:
            state = json.loads(self.published_path.read_text(encoding="utf-8"))
            instance, generation = state["instance"], state["generation"]
            versions = state["blacklist_versions"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return (
                f"{self.published_path} is unreadable; if {self.target} was restored run `onecard platform "
                "restore-epoch`, otherwise delete that file"
            )
        epoch = self.epoch()
        fix = "it was restored or rolled back: run `onecard platform restore-epoch --reason ...` before serving"
        if instance != epoch.instance:
            return (
                f"{self.target} has platform instance {epoch.instance}, but instance {instance} published from "
                f"here ({self.published_path}); it is another database: {fix}"
            )
        if generation > epoch.generation:
            return f"{self.target} is at epoch {epoch.generation}, but epoch {generation} was already published: {fix}"
        if generation == epoch.generation:
            for eid, published in sorted(versions.items()):
                row = self.conn.execute(
                    "SELECT blacklist_version FROM enterprises WHERE enterprise_id = ?", (eid,)
                ).fetchone()
                if row is None or row[0] < published:
                    return (
                        f"{self.target} holds blacklist version {row[0] if row else 'none'} of enterprise {eid}, "
                        f"but version {published} was already published: {fix}"
                    )
        return None

    def blacklist_digest(self, enterprise_id: str) -> tuple[int, str]:
        """(version, digest) of the enterprise's current list, as a terminal computes it for its heartbeat."""
        v = self._enterprise(enterprise_id)[1]
        key = (enterprise_id, v, self.epoch())
        if key not in self._digests:
            d = p.digest_of(
                (bytes.fromhex(asn), reason, listed)
                for asn, reason, listed in self.conn.execute(
                    "SELECT asn, reason, listed_in_version FROM blacklist WHERE enterprise_id = ?", (enterprise_id,)
                )
            )
            self._digests = {key: d}  # one list per worker is enough: every terminal asks about the current one
        return v, self._digests[key]

    def blacklist_version(self, enterprise_id: str) -> int:
        return self._enterprise(enterprise_id)[1]

    def _change_blacklist(self, enterprise_id: str, added: dict[str, str], removed: list[str]) -> int:
        """Inside a transaction: move the enterprise's list one version on and queue the signed delta."""
        base = self._enterprise(enterprise_id)[1]
        v = base + 1
        for asn, reason in added.items():
            self.conn.execute(_LIST, (enterprise_id, asn, reason, v))
        for asn in removed:
            self.conn.execute("DELETE FROM blacklist WHERE enterprise_id = ? AND asn = ?", (enterprise_id, asn))
        self.conn.executemany(
            "INSERT INTO blacklist_changes VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            [(enterprise_id, v, a) for a in [*added, *removed]],
        )
        self.conn.execute("UPDATE enterprises SET blacklist_version = ? WHERE enterprise_id = ?", (v, enterprise_id))
        body = {
            "enterprise_id": enterprise_id,
            "epoch": self.epoch().to_json(),
            "base_version": base,
            "version": v,
            "added": [{"asn": a, "reason": r, "listed_in_version": v} for a, r in sorted(added.items())],
            "removed": sorted(removed),
        }
        self._queue(p.enterprise_topic(enterprise_id), self.seal("blacklist.delta", f"e:{enterprise_id}", body))
        return v

    def blacklist_bulk(self, enterprise_id: str, asns: list[bytes], reason: str = "lost") -> int:
        """List many cards in one version without card records (benchmarks, migrations); no message queued."""
        with self._txn():
            v = self._enterprise(enterprise_id)[1] + 1
            self.conn.executemany(
                _LIST,
                ((enterprise_id, a.hex().upper(), reason, v) for a in asns),
            )
            self.conn.execute(
                "UPDATE enterprises SET blacklist_version = ? WHERE enterprise_id = ?", (v, enterprise_id)
            )
            # Marks every listed card as changed at v, so any terminal below v gets a snapshot.
            self.conn.execute("INSERT INTO blacklist_changes VALUES (?, ?, '*')", (enterprise_id, v))
        return v

    def snapshot_body(self, enterprise_id: str) -> dict:
        v = self._enterprise(enterprise_id)[1]
        groups: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        for asn, reason, listed in self.conn.execute(
            "SELECT asn, reason, listed_in_version FROM blacklist WHERE enterprise_id = ?", (enterprise_id,)
        ):
            groups[(reason, listed)].append(bytes.fromhex(asn))
        count = sum(len(g) for g in groups.values())
        return {
            "enterprise_id": enterprise_id,
            "epoch": self.epoch().to_json(),
            "version": v,
            "count": count,
            "groups": [
                {"reason": r, "listed_in_version": lv, "asns": p.encode_asn_group(a)}
                for (r, lv), a in sorted(groups.items())
            ],
        }

    def delta_body(self, enterprise_id: str, have: int) -> dict | None:
        """A cumulative delta have -> current, or None when a snapshot is the answer."""
        v = self._enterprise(enterprise_id)[1]
        if have <= 0 or have >= v:
            return None
        changed = [
            r[0]
            for r in self.conn.execute(
                "SELECT DISTINCT asn FROM blacklist_changes WHERE enterprise_id = ? AND version > ? LIMIT ?",
                (enterprise_id, have, MAX_DELTA_CHANGES + 1),
            )
        ]
        if len(changed) > MAX_DELTA_CHANGES or "*" in changed:
            return None
        added, removed = [], []
        for asn in sorted(changed):
            row = self.conn.execute(
                "SELECT reason, listed_in_version FROM blacklist WHERE enterprise_id = ? AND asn = ?",
                (enterprise_id, asn),
            ).fetchone()
            if row:
                added.append({"asn": asn, "reason": row[0], "listed_in_version": row[1]})
            else:
                removed.append(asn)
        return {
            "enterprise_id": enterprise_id,
            "epoch": self.epoch().to_json(),
            "base_version": have,
            "version": v,
            "added": added,
            "removed": removed,
        }
