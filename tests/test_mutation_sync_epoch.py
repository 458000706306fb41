"""sync_agent/core.py's blacklist_decision (the platform-epoch rule) without a broker: each branch as a conversation
with its exact decision and words, at its boundaries (the generation one below, equal to and one above the held one;
the version one below, equal to and one above the held one; a delta's base off by one either way; a first list held
at version 0 and one at version 1), and the rule's invariants as properties. Issue 15.

tests/test_sync_epoch.py keeps the integration story (a restored platform re-basing its terminals over mosquitto)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import sync_protocol as p
from sync_agent import core
from sync_agent.core import Decision

EID = "00010001"
I1, I2 = "aa" * 16, "bb" * 16
G2, G3, G4 = p.Epoch(2, I1), p.Epoch(3, I1), p.Epoch(4, I1)
G3_OTHER, G4_OTHER = p.Epoch(3, I2), p.Epoch(4, I2)
SNAP, DELTA = "blacklist.snapshot", "blacklist.delta"


def snap(version, epoch, enterprise=EID):
    return {"enterprise_id": enterprise, "epoch": epoch.to_json(), "version": version, "count": 0, "groups": []}


def dlt(base, version, epoch, enterprise=EID):
    return {
        "enterprise_id": enterprise,
        "epoch": epoch.to_json(),
        "base_version": base,
        "version": version,
        "added": [],
        "removed": [],
    }


def decide(type_, body, held_version, held_epoch):
    return core.blacklist_decision(type_, body, held_version, EID, held_epoch)


# --- another enterprise's list ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_, body", [(SNAP, snap(9, G4, "00020002")), (DELTA, dlt(5, 6, G3, "00020002"))])
def test_a_list_of_another_enterprise_is_refused_before_anything_else(type_, body):
    expected = Decision("reject", "wrong_enterprise", "blacklist of enterprise 00020002, this terminal serves 00010001")
    assert decide(type_, body, 5, G3) == expected
    assert decide(type_, body, 0, None) == expected


# --- an older generation ----------------------------------------------------------------------------------------------


def test_a_snapshot_one_generation_older_is_a_rollback_whatever_its_version():
    for version in (1, 5, 6, 99):
        assert decide(SNAP, snap(version, G2), 5, G3) == Decision(
            "reject", "old_epoch", "blacklist.snapshot of platform epoch 2 is older than the held epoch 3 (rollback)"
        )


def test_a_delta_one_generation_older_is_a_rollback_even_when_it_would_chain():
    assert decide(DELTA, dlt(5, 6, G2), 5, G3) == Decision(
        "reject", "old_epoch", "blacklist.delta of platform epoch 2 is older than the held epoch 3 (rollback)"
    )


def test_an_older_generation_of_another_instance_is_still_old_epoch():
    assert decide(SNAP, snap(9, p.Epoch(2, I2)), 5, G3).reason == "old_epoch"


# --- the same generation from another platform instance ----------------------------------------------------------


def test_the_same_generation_from_another_instance_is_a_conflict():
    assert decide(SNAP, snap(9, G3_OTHER), 5, G3) == Decision(
        "reject",
        "epoch_conflict",
        f"blacklist.snapshot of epoch 3 comes from platform instance {I2}, the list held from {I1}",
    )
    assert decide(DELTA, dlt(5, 6, G3_OTHER), 5, G3) == Decision(
        "reject",
        "epoch_conflict",
        f"blacklist.delta of epoch 3 comes from platform instance {I2}, the list held from {I1}",
    )


def test_a_newer_generation_from_another_instance_rebases():
    # A new instance (a platform rebuilt elsewhere) is accepted once it is a newer generation: no conflict.
    assert decide(SNAP, snap(2, G4_OTHER), 5, G3) == Decision(
        "apply", "rebase", "snapshot version 2 of platform epoch 4 replaces version 5 of epoch 3"
    )
    assert decide(DELTA, dlt(5, 6, G4_OTHER), 5, G3).reason == "new_epoch"


# --- snapshots within the held generation ------------------------------------------------------------------------


def test_snapshots_of_the_held_epoch_only_move_forward():
    assert decide(SNAP, snap(4, G3), 5, G3) == Decision(
        "reject", "rollback", "snapshot version 4 is older than the held version 5"
    )
    assert decide(SNAP, snap(5, G3), 5, G3) == Decision(
        "ignore", "already_held", "snapshot version 5 is the version already held"
    )
    assert decide(SNAP, snap(6, G3), 5, G3) == Decision("apply", "newer", "snapshot version 6 replaces version 5")


def test_a_snapshot_at_version_1_of_the_held_epoch_over_version_1_is_already_held():
    assert decide(SNAP, snap(1, G3), 1, G3) == Decision(
        "ignore", "already_held", "snapshot version 1 is the version already held"
    )
    assert decide(SNAP, snap(2, G3), 1, G3).reason == "newer"


# --- snapshots of a newer generation (the restore procedure) -----------------------------------------------------


def test_a_snapshot_one_generation_newer_replaces_the_list_whatever_its_version():
    for version, held in ((3, 5), (5, 5), (6, 5), (1, 1)):
        assert decide(SNAP, snap(version, G4), held, G3) == Decision(
            "apply",
            "rebase",
            f"snapshot version {version} of platform epoch 4 replaces version {held} of epoch 3",
        )


def test_a_list_from_before_epochs_is_rebased_by_any_snapshot():
    assert decide(SNAP, snap(3, G3), 5, None) == Decision(
        "apply", "rebase", "snapshot version 3 of platform epoch 3 replaces version 5 of epoch none"
    )
    assert decide(SNAP, snap(1, G3), 1, None) == Decision(
        "apply", "rebase", "snapshot version 1 of platform epoch 3 replaces version 1 of epoch none"
    )


def test_the_held_epoch_defaults_to_none():
    assert core.blacklist_decision(SNAP, snap(3, G3), 5, EID) == Decision(
        "apply", "rebase", "snapshot version 3 of platform epoch 3 replaces version 5 of epoch none"
    )
    assert core.blacklist_decision(DELTA, dlt(0, 1, G3), 0, EID).reason == "next"


def test_a_first_snapshot_over_an_empty_list_is_newer_not_a_rebase():
    # Nothing held (version 0): the first list is simply applied, whatever its epoch.
    assert decide(SNAP, snap(1, G3), 0, None) == Decision("apply", "newer", "snapshot version 1 replaces version 0")
    assert decide(SNAP, snap(7, G4), 0, G3) == Decision("apply", "newer", "snapshot version 7 replaces version 0")
    # Version 0 offered over version 0 of a newer epoch is applied (the epoch moves), not "already held".
    assert decide(SNAP, snap(0, G4), 0, G3) == Decision("apply", "newer", "snapshot version 0 replaces version 0")
    assert decide(SNAP, snap(0, G3), 0, G3) == Decision(
        "ignore", "already_held", "snapshot version 0 is the version already held"
    )


# --- deltas within the held generation ---------------------------------------------------------------------------


def test_a_delta_chaining_on_the_held_version_applies():
    assert decide(DELTA, dlt(5, 6, G3), 5, G3) == Decision("apply", "next", "delta 5->6 applies to the held version")
    assert decide(DELTA, dlt(5, 9, G3), 5, G3) == Decision("apply", "next", "delta 5->9 applies to the held version")


def test_a_delta_that_does_not_move_past_the_held_version_is_a_replay():
    for base, version in ((4, 5), (3, 4), (5, 5)):
        assert decide(DELTA, dlt(base, version, G3), 5, G3) == Decision(
            "reject",
            "rollback",
            f"delta to version {version} does not move past the held version 5 (replay or rollback)",
        )


def test_a_delta_not_starting_at_the_held_version_asks_for_a_snapshot():
    for base in (4, 6):
        assert decide(DELTA, dlt(base, 7, G3), 5, G3) == Decision(
            "request_snapshot",
            "gap",
            f"delta {base}->7 does not start at the held version 5; asking for a snapshot",
        )


def test_the_first_list_may_be_a_delta_from_version_0():
    assert decide(DELTA, dlt(0, 1, G3), 0, None) == Decision("apply", "next", "delta 0->1 applies to the held version")
    assert decide(DELTA, dlt(0, 4, G3), 0, None) == Decision("apply", "next", "delta 0->4 applies to the held version")


# --- deltas of a newer generation (or onto a list without an epoch) ----------------------------------------------


def test_a_delta_of_a_newer_generation_asks_for_a_snapshot():
    assert decide(DELTA, dlt(5, 6, G4), 5, G3) == Decision(
        "request_snapshot",
        "new_epoch",
        "delta 5->6 of platform epoch 4 does not apply to a list of another epoch; asking for a snapshot",
    )
    # Even over an empty list: once an epoch is held, a delta of another one never applies.
    assert decide(DELTA, dlt(0, 1, G4), 0, G3) == Decision(
        "request_snapshot",
        "new_epoch",
        "delta 0->1 of platform epoch 4 does not apply to a list of another epoch; asking for a snapshot",
    )


@pytest.mark.parametrize("base, version, held", [(1, 2, 0), (0, 1, 1), (1, 2, 1), (5, 6, 5)])
def test_a_delta_onto_a_list_without_an_epoch_asks_for_a_snapshot_unless_both_start_at_0(base, version, held):
    assert decide(DELTA, dlt(base, version, G3), held, None) == Decision(
        "request_snapshot",
        "new_epoch",
        f"delta {base}->{version} of platform epoch 3 does not apply to a list of another epoch; asking for a snapshot",
    )


def test_the_generation_boundaries_for_a_delta():
    # one below: refused; equal: follows the versions; one above: a snapshot is needed
    assert decide(DELTA, dlt(5, 6, G2), 5, G3).reason == "old_epoch"
    assert decide(DELTA, dlt(5, 6, G3), 5, G3).reason == "next"
    assert decide(DELTA, dlt(5, 6, G4), 5, G3).reason == "new_epoch"


# --- properties ---------------------------------------------------------------------------------------------------

generations = st.integers(min_value=1, max_value=6)
versions = st.integers(min_value=0, max_value=8)
instances = st.sampled_from([I1, I2])
held_epochs = st.one_of(st.none(), st.builds(p.Epoch, generations, instances))


@settings(max_examples=300, deadline=None)
@given(st.builds(p.Epoch, generations, instances), versions, versions, versions, held_epochs)
def test_the_epoch_rule_as_a_table(epoch, base, version, held, held_epoch):
    """An independent statement of the rule: every input gets exactly the decision the specification gives."""
    for type_ in (SNAP, DELTA):
        body = snap(version, epoch) if type_ == SNAP else dlt(base, version, epoch)
        d = decide(type_, body, held, held_epoch)
        assert d.action in (core.APPLY, core.IGNORE, core.REJECT, core.REQUEST_SNAPSHOT) and d.text
        if held_epoch is not None and epoch.generation < held_epoch.generation:
            assert (d.action, d.reason) == ("reject", "old_epoch")
        elif held_epoch is not None and epoch.generation == held_epoch.generation:
            if epoch.instance != held_epoch.instance:
                assert (d.action, d.reason) == ("reject", "epoch_conflict")
            elif type_ == SNAP:
                expected = "rollback" if version < held else "already_held" if version == held else "newer"
                assert d.reason == expected
            else:
                expected = "rollback" if version <= held else "gap" if base != held else "next"
                assert d.reason == expected
        elif type_ == SNAP:  # a newer epoch, or none held
            assert d.action == "apply"
            assert d.reason == ("rebase" if held > 0 else "newer")
        elif held_epoch is None and held == 0 and base == 0:
            assert d.reason == ("rollback" if version <= 0 else "next")
        else:
            assert (d.action, d.reason) == ("request_snapshot", "new_epoch")
        # another enterprise's list is refused whatever else holds
        other = dict(body, enterprise_id="00020002")
        assert core.blacklist_decision(type_, other, held, EID, held_epoch).reason == "wrong_enterprise"
