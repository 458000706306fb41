"""The phone menu on a version 2 card (issue 11): the SIM toolkit lists every enterprise sub-application by the name
in the card directory, shows each one's own purse, and "delete application" voids only the one chosen, so the other
enterprise's doors keep opening."""

from __future__ import annotations

from common import deletion_request, stk
from simulator.card import STATUS_ACTIVE, STATUS_VOIDED, MultiCardStateFile
from simulator.sim_toolkit import V2Card, load_sim
from tests.support import make_terminal
from tests.test_card_v2 import SAMS, A, B, tap, two_enterprise_card


def saved_card(tmp_path):
    path = tmp_path / "card.json"
    two_enterprise_card(path, balance_a=10_000, balance_b=5_000)
    return path


def test_the_toolkit_opens_a_version_2_card_with_each_sub_application_by_its_directory_name(tmp_path):
    path = saved_card(tmp_path)
    sim = load_sim(path)
    assert isinstance(sim.card, V2Card)
    entries = sim.card.directory()
    assert [(e.index, e.enterprise_id, e.name, e.active) for e in entries] == [
        (1, A, "Office", True),
        (2, B, "Community", True),
    ]
    assert (sim.card.purse(1).balance, sim.card.purse(2).balance) == (10_000, 5_000)
    assert sim.card.asn == MultiCardStateFile(path).load().serial


def test_the_main_menu_over_the_contact_interface_lists_both_sub_applications(tmp_path):
    sim = load_sim(saved_card(tmp_path))
    sim.power_on()
    sw = sim.transmit(stk.terminal_profile_apdu(bytes.fromhex("0B610523")))  # the handset profile of docs/phone-menu.md
    length = stk.pending_length(sw[-2:])
    assert length is not None  # 91 XX: SET UP MENU is pending
    answer = sim.transmit(stk.fetch_apdu(length))
    assert answer[-2:] == b"\x90\x00"
    _, menu = stk.parse_command(answer[:-2])
    assert isinstance(menu, stk.SetUpMenu)
    assert [item.text for item in menu.items] == ["Office", "Community"]


def test_deleting_one_sub_application_voids_only_it_and_the_request_carries_its_own_asn(tmp_path):
    path = saved_card(tmp_path)
    before = MultiCardStateFile(path).load()
    request, mac = deletion_request.parse(load_sim(path).card.void_for_deletion(2))
    after = MultiCardStateFile(path).load()
    assert (request.asn, request.enterprise_id, request.frozen_balance) == (before.apps[1].asn, B, 5_000)
    assert len(mac) == 8
    assert [a.status for a in after.apps] == [STATUS_ACTIVE, STATUS_VOIDED]
    assert after.apps[0].to_json() == before.apps[0].to_json()  # the office's sub-application is untouched
    # Voiding is idempotent: the same frozen balance, the same request.
    assert load_sim(path).card.void_for_deletion(2) == deletion_request.parse(load_sim(path).card.void_for_deletion(2))[
        0
    ].encode(mac)


def test_after_the_community_is_deleted_the_office_door_still_opens_and_the_community_door_does_not(tmp_path):
    path = saved_card(tmp_path)
    load_sim(path).card.void_for_deletion(2)
    from simulator.card_files import load_card

    door_a, _ = make_terminal(tmp_path, SAMS[A], "door")
    door_b, _ = make_terminal(tmp_path, SAMS[B], "door", enterprise=B)
    decision, _ = tap(door_a, load_card(path))
    assert (decision.accepted, decision.message) == (True, "Welcome, Zhang Wei")
    decision, _ = tap(door_b, load_card(path))
    assert decision.accepted is False
