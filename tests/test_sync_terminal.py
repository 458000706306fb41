"""The terminal and the sync agent together: over-the-air top-up loaded once, platform configuration applied,
purse transactions accounted by the platform with their TACs checked, POS refusing sales when the store fills."""

import contextlib
import io

import pytest

from common.config import load_config
from simulator.inprocess import InProcessReader
from terminal.adapters import build_terminal
from terminal.inbox import Inbox
from terminal.keypad import Balance, Charge, Load
from terminal.outputs import ConsoleOutputs
from tests.mqtt_env import ENTERPRISE, AgentThread, start_platform, terminal_id, wait_until, write_terminal_config
from tests.support import MONDAY_10AM, make_card, make_sam


@pytest.fixture
def rig(broker, tmp_path):
    sam = make_sam()  # the issuing key set; it also holds the TAC keys the platform checks with
    (tmp_path / "platform").mkdir()
    tid = terminal_id(7)
    admin, service = start_platform(tmp_path / "platform", broker, tac_sam=sam, kinds={tid: "topup"})
    config_path = write_terminal_config(tmp_path / "topup", tid, broker, kind="topup")
    agent = AgentThread(
        config_path,
    ).start()
    with contextlib.ExitStack() as stack:
        terminal, _ = build_terminal(
            load_config(config_path),
            stack,
            sam=sam,
            reader=InProcessReader(),
            outputs=ConsoleOutputs("top-up", io.StringIO(), color=False),
        )
        try:
            wait_until(lambda: agent.agent.online, 20, "the agent connecting")
            yield sam, admin, terminal, agent
        finally:
            agent.stop()
            service.stop()
            admin.close()


def tap(terminal, card, request):
    reader = InProcessReader()
    reader.tap(card)
    return terminal.handle_tap(reader.wait_for_card(0), MONDAY_10AM, request)


def test_over_the_air_top_up_is_loaded_once_and_accounted_by_the_platform(rig):
    sam, admin, terminal, agent = rig
    card = make_card(sam, opening_balance=0)
    asn = card.state.asn.hex().upper()
    admin.add_holder(ENTERPRISE, "E1001", "Zhang Wei")
    admin.issue_card(ENTERPRISE, "E1001", asn)
    action = admin.add_card_action(asn, "topup", {"amount": 5000})
    inbox = Inbox(agent.config.sync.database)
    wait_until(lambda: inbox.pending_actions(asn), 20, "the card action reaching the terminal's inbox")
    first = tap(terminal, card, Balance())
    assert first.message == "Loaded 50.00 - balance 50.00 (over-the-air top-up)"
    second = tap(terminal, card, Balance())
    assert second.message.startswith("Balance not shown")
    assert card.state.purse.balance == 5000
    wait_until(lambda: admin.card(asn)["balance_cents"] == 5000, 20, "the platform accounting the upload")
    [tx] = admin.purse_transactions(asn)
    assert (tx["kind"], tx["amount_cents"], tx["tac_status"]) == ("topup.load", 5000, "ok")
    status = admin.conn.execute("SELECT status FROM card_actions WHERE action_id = ?", (action,)).fetchone()[0]
    assert status == "done"
    bill = admin.spending_bill(ENTERPRISE, "E1001", "2026-11")
    assert bill.startswith(
        "[onecard] Zhang Wei (E1001), canteen 2026-11: opening 0.00 yuan, spent 0.00, topped up 50.00, "
        "closing balance 50.00 yuan. 11-23 10:00 top-up 50.00 at "
    )


def test_rights_change_is_written_onto_the_card_at_the_top_up_terminal(rig, tmp_path):
    sam, admin, terminal, agent = rig
    card = make_card(sam, door_groups=frozenset({2}), opening_balance=0)
    asn = card.state.asn.hex().upper()
    admin.add_holder(ENTERPRISE, "E1001", "Zhang Wei")
    admin.issue_card(ENTERPRISE, "E1001", asn)
    from tests.support import make_terminal

    (tmp_path / "door").mkdir()
    door, _ = make_terminal(tmp_path / "door", sam, "door")
    assert tap(door, card, None).reason_code == "no_rights"
    admin.authorise(
        asn, {"door_groups": [1, 2], "valid_from": "2026-01-01", "valid_to": "2027-12-31", "time_profile": 0}
    )
    inbox = Inbox(agent.config.sync.database)
    wait_until(lambda: inbox.pending_actions(asn), 20, "the rights change reaching the inbox")
    assert tap(terminal, card, Balance()).message.endswith(" (access rights updated)")
    assert not tap(terminal, card, Balance()).message.endswith(")")  # written once
    assert tap(door, card, None).accepted
    wait_until(
        lambda: admin.conn.execute("SELECT status FROM card_actions WHERE asn = ?", (asn,)).fetchone()[0] == "done",
        20,
        "the platform seeing the change written",
    )


def test_platform_configuration_is_applied_by_the_terminal(rig):
    sam, admin, terminal, agent = rig
    card = make_card(sam, opening_balance=0)
    assert tap(terminal, card, Load(2000)).accepted
    version = admin.publish_config(ENTERPRISE, {"topup": {"max_load": "10.00"}})
    inbox = Inbox(agent.config.sync.database)
    wait_until(lambda: inbox.config_version() >= version, 20, "the configuration reaching the inbox")
    terminal.refresh_config()
    refused = tap(terminal, card, Load(2000))
    assert (refused.reason_code, refused.message) == ("over_load_limit", "20.00 is over the top-up limit of 10.00")
    assert card.state.purse.balance == 2000


def test_a_bad_platform_configuration_is_not_applied(rig, caplog):
    sam, admin, terminal, agent = rig
    version = admin.publish_config(ENTERPRISE, {"topup": {"max_load": "lots"}}, validate=False)  # an older platform
    inbox = Inbox(agent.config.sync.database)
    wait_until(lambda: inbox.config_version() >= version, 20, "the configuration reaching the inbox")
    before = terminal.config
    terminal.refresh_config()
    assert terminal.config is before
    assert "event=config.rejected" in caplog.text
    # The rejection is a record in the terminal's log, so it travels to the platform with the next upload.
    [record] = [e for e in terminal.event_log.events() if e.kind == "config.rejected"]
    assert record.detail["version"] == version and "[topup].max_load" in record.detail["error"]
    tid = terminal.config.terminal.id
    wait_until(lambda: admin.terminal(tid)["config_rejected"] is not None, 20, "the rejection reaching the platform")
    rejected = admin.terminal(tid)["config_rejected"]
    assert rejected["version"] == version and "[topup].max_load" in rejected["error"]


def test_platform_refuses_to_publish_a_document_terminals_would_refuse(rig):
    from central.db import PlatformError

    sam, admin, terminal, agent = rig

    def held():
        return admin.conn.execute(
            "SELECT config_version FROM enterprises WHERE enterprise_id = ?", (ENTERPRISE,)
        ).fetchone()[0]

    before = held()
    for document, words in (
        ({"doors": {terminal.config.terminal.id: {"grup": 3}}}, "did you mean 'group'?"),
        ({"pos": {"max_purchse": "5.00"}}, "did you mean 'max_purchase'?"),
        ({"topup": {"max_load": "lots"}}, "[topup].max_load"),
    ):
        with pytest.raises(PlatformError, match="nothing was queued") as info:
            admin.publish_config(ENTERPRISE, document)
        assert words in str(info.value)
    assert held() == before


def test_pos_refuses_offline_sales_when_the_store_is_nearly_full(tmp_path):
    from tests.support import make_terminal

    sam = make_sam()
    term, _ = make_terminal(tmp_path, sam, "pos")
    term.purse.outbox_pressure = lambda: 0.85
    card = make_card(sam, opening_balance=5000)
    decision = tap(term, card, Charge(100))
    assert decision.reason_code == "store_full" and "sales paused until the terminal syncs" in decision.message
    assert card.state.purse.balance == 5000


def test_a_cancelled_over_the_air_top_up_is_dropped_by_the_terminal(rig):
    sam, admin, terminal, agent = rig
    card = make_card(sam, opening_balance=0)
    asn = card.state.asn.hex().upper()
    admin.add_holder(ENTERPRISE, "E1001", "Zhang Wei")
    admin.issue_card(ENTERPRISE, "E1001", asn)
    action = admin.add_card_action(asn, "topup", {"amount": 5000})
    inbox = Inbox(agent.config.sync.database)
    wait_until(lambda: inbox.pending_actions(asn), 20, "the card action reaching the terminal's inbox")
    admin.cancel_action(action)
    wait_until(lambda: not inbox.pending_actions(asn), 20, "the cancellation reaching the terminal's inbox")
    assert tap(terminal, card, Balance()).message.startswith("Balance not shown")  # nothing loaded
    assert tap(terminal, card, Load(1000)).accepted  # nothing blocks a cash top-up
    assert card.state.purse.balance == 1000
    wait_until(lambda: admin.card(asn)["balance_cents"] == 1000, 20, "the platform accounting the cash top-up")
    assert [a["status"] for a in admin.card_actions(asn)] == ["cancelled"]


def test_a_cancellation_that_arrives_before_its_action_keeps_it_from_the_inbox(tmp_path):
    from sync_agent.store import SyncStore

    store = SyncStore.open(tmp_path / "sync.db", terminal_id(7))
    try:
        body = {"action_id": "a1", "asn": "0102030405060708", "action": "topup"}
        assert store.cancel_card_action(body, "m1", "t", "t") == "absent"
        assert not store.store_card_action({**body, "params": {"amount": 1}}, "m2", "t", "t")
        assert [a["status"] for a in store.card_actions()] == ["cancelled"]
    finally:
        store.close()
    assert Inbox(tmp_path / "sync.db").pending_actions("0102030405060708") == []
