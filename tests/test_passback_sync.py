"""Anti-passback across terminals, through real MQTT (mosquitto with TLS), the platform service and two sync agents:
a card that entered at one gate of an area is refused at the other gate while the agents are online; offline, the
terminal's `passback_offline` decides (soft: log and allow; hard: refuse)."""

import contextlib
import dataclasses
import datetime as dt
import io
import time

from common.config import load_config
from simulator.inprocess import InProcessReader
from terminal.adapters import build_terminal
from terminal.inbox import Inbox
from terminal.outputs import ConsoleOutputs
from tests.mqtt_env import AgentThread, start_platform, terminal_id, wait_until, write_terminal_config
from tests.support import make_card, make_sam


def now():
    return dt.datetime.now(dt.timezone.utc)


def tap(terminal, card, direction=None):
    reader = InProcessReader()
    reader.tap(card)
    return terminal.handle_tap(reader.wait_for_card(0), now(), direction=direction)


def test_a_card_that_entered_at_one_gate_is_refused_at_the_other_online_and_offline(broker, tmp_path):
    sam = make_sam()
    (tmp_path / "platform").mkdir()
    gate_a, gate_b = terminal_id(11), terminal_id(12)
    admin, service = start_platform(tmp_path / "platform", broker)
    agents, terminals = {}, {}
    with contextlib.ExitStack() as stack:
        try:
            for tid in (gate_a, gate_b):
                path = write_terminal_config(tmp_path / tid, tid, broker, kind="door")
                config = load_config(path)
                door = dataclasses.replace(config.door, area=3, anti_passback="on", passback_fresh_seconds=1.5)
                config = dataclasses.replace(config, door=door)
                agents[tid] = AgentThread(path).start()
                terminals[tid], _ = build_terminal(
                    config,
                    stack,
                    sam=sam,
                    reader=InProcessReader(),
                    outputs=ConsoleOutputs(tid, io.StringIO(), color=False),
                )
            for tid in (gate_a, gate_b):
                wait_until(lambda tid=tid: agents[tid].agent.online, 20, f"agent {tid} connecting")
                inbox = Inbox(agents[tid].config.sync.database)
                wait_until(lambda inbox=inbox: inbox.last_heard() is not None, 20, "the platform's time message")
            card = make_card(sam)
            asn = card.state.asn.hex().upper()
            a, b = terminals[gate_a], terminals[gate_b]
            entered = tap(a, card)
            assert entered.accepted and entered.detail["direction"] == "entry"
            inbox_b = Inbox(agents[gate_b].config.sync.database)
            wait_until(lambda: inbox_b.last_passage(asn, 3) is not None, 30, "the passage reaching gate B")
            assert inbox_b.last_passage(asn, 3)[0::2] == ("entry", gate_a)
            refused = tap(b, card)
            assert (refused.accepted, refused.reason_code) == (False, "passback")
            assert refused.detail["last_terminal"] == gate_a and refused.detail["current"] is True
            # It leaves through gate B's exit reader: gate A learns of it and lets it in again.
            assert tap(b, card, direction="exit").accepted
            inbox_a = Inbox(agents[gate_a].config.sync.database)
            wait_until(lambda: (inbox_a.last_passage(asn, 3) or ("",))[0] == "exit", 30, "the exit reaching gate A")
            assert tap(a, card).accepted
            wait_until(lambda: inbox_b.last_passage(asn, 3)[0] == "entry", 30, "the new entry reaching gate B")
            # Gate B's agent goes away: once it has not heard the platform for passback_fresh_seconds, B is offline.
            agents[gate_b].stop()
            time.sleep(2.0)
            soft = tap(b, card)  # entered at A, entering at B: a violation, but B is offline and soft
            assert soft.accepted and soft.detail["passback"] == "offline_allowed"
            assert soft.detail["last_passage"]["last_terminal"] == gate_a
            b.config = dataclasses.replace(b.config, door=dataclasses.replace(b.config.door, passback_offline="hard"))
            hard = tap(b, card)
            assert (hard.accepted, hard.reason_code, hard.detail["current"]) == (False, "passback", False)
            assert tap(b, card, direction="exit").accepted  # leaving is never the violation here
            logged = [(e.kind, e.reason_code) for e in b.event_log.events()]
            assert logged[-3:] == [("door.grant", "granted"), ("door.deny", "passback"), ("door.grant", "granted")]
            assert admin.conn.execute("SELECT count(*) FROM outbound").fetchone()[0] >= 3
        finally:
            for agent in agents.values():
                if not agent.stop_event.is_set():
                    agent.stop()
            service.stop()
            admin.close()
