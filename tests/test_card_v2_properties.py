"""Property test of version 2 cards (docs/card-application.md section 9): random sequences of add / top-up / purchase /
tap / void / delete at enterprise A's and B's terminals, with tears at random APDUs of add and delete.

After every step: no terminal reads the other enterprise's data (its door shows only its own holder, its keys open
nothing of the other), counters and purses are independent (a step of E changes nothing of the other sub-application),
and money is conserved per sub-application (the card's balance is loads - purchases, and what a deletion settles is
exactly that balance, whatever tear interrupted it)."""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from central.station_registry import InProcessRegistry
from central.store import Platform
from common.config import load_config
from sam.keystore import Keystore
from sam.software import SoftwareSam
from simulator.card import OneCardV2Applet
from simulator.inprocess import InProcessReader
from simulator.personalise import multi_card
from terminal import rekey
from terminal.blacklist import Blacklist
from terminal.decision import Refusal
from terminal.event_log import EventLog
from terminal.issuing import IssueRequest, IssuingTerminal
from terminal.purse_flow import PurseTerminal
from terminal.reader import CardRemoved
from tests.support import MONDAY_10AM, TERMINAL_TOML, make_terminal
from tests.test_card_v2 import ISSUER, ISSUER_SAM, ISSUING_TERMINAL, KS, SAMS, A, B

HOLDERS = {A: ("E1001", "Zhang Wei"), B: ("R-0707", "张伟")}
NAMES = {A: "Office", B: "Community"}


class World:
    """One card, and for each of A and B: an issuing station, a door, a POS and a top-up terminal."""

    def __init__(self, tmp: Path) -> None:
        self.platform = Platform(tmp / "platform.db", Ed25519PrivateKey.generate())
        self.platform.add_enterprise(A.hex(), "Acme")
        self.platform.add_enterprise(B.hex(), "Garden Community")
        for e, (employee, name) in HOLDERS.items():
            self.platform.add_holder(e.hex(), employee, name, phone="13800000001")
        self.card = OneCardV2Applet(multi_card([], issuer_sam=ISSUER_SAM))
        self.stations, self.doors, self.pos, self.topup = {}, {}, {}, {}
        for e in (A, B):
            sam = SoftwareSam(Keystore([*KS[e], *ISSUER]))
            log = EventLog.open(tmp / f"issuing-{e.hex()}.db", ISSUING_TERMINAL)
            self.stations[e] = IssuingTerminal(
                sam, InProcessRegistry(self.platform), log, e, bytes.fromhex(ISSUING_TERMINAL)
            )
            self.doors[e] = make_terminal(tmp, SAMS[e], "door", enterprise=e)[0]
            self.pos[e] = purse_terminal(tmp, e, "pos")
            self.topup[e] = purse_terminal(tmp, e, "topup")
        self.asn_counter = 0
        # The model: per enterprise, None (absent) or {"status": 1|2, "balance": fen, "spent": fen bought offline}.
        self.model: dict[bytes, dict | None] = {A: None, B: None}

    def close(self) -> None:
        self.platform.close()


def purse_terminal(tmp: Path, enterprise: bytes, kind: str) -> PurseTerminal:
    tag = f"{kind}-{enterprise.hex()}"
    cfg = tmp / f"{tag}.toml"
    toml = TERMINAL_TOML.format(kind=kind, db=tmp / f"{tag}.db", bl=tmp / f"{tag}-bl.db")
    cfg.write_text(toml.replace('enterprise_id = "00010001"', f'enterprise_id = "{enterprise.hex()}"'))
    config = load_config(cfg)
    return PurseTerminal(
        config,
        SAMS[enterprise],
        EventLog.open(config.terminal.database, config.terminal.id),
        Blacklist.open(config.terminal.blacklist),
    )


def run(card, fn, tear_after=None):
    reader = InProcessReader()
    reader.tap(card, tear_after=tear_after)
    conn = reader.wait_for_card(0)
    try:
        return fn(conn.transmit)
    finally:
        reader.remove()


def snapshot(card, e) -> str | None:
    app = card.sub_application(e)
    if app is None:
        return None
    doc = app.to_json()
    return json.dumps(doc, sort_keys=True)


def add(w: World, e: bytes, tear: int) -> None:
    st_ = w.stations[e]
    w.asn_counter += 1
    asn = bytes([0xA0 if e == A else 0xB0] * 7 + [w.asn_counter])
    try:
        run(w.card, lambda t: st_.add_sub_application(t, NAMES[e], asn, MONDAY_10AM), tear or None)
    except CardRemoved:
        pass
    if w.card.sub_application(e) is None or w.card.sub_application(e).status == 0:
        run(w.card, lambda t: st_.add_sub_application(t, NAMES[e], asn, MONDAY_10AM))
        run(w.card, lambda t: rekey.rekey_card(t, st_.sam, e, 1, st_.event_log, MONDAY_10AM, rekey.WASH))
        employee = HOLDERS[e][0]
        request = IssueRequest(e, employee, frozenset({1}), dt.date(2026, 1, 1), dt.date(2028, 12, 31))
        run(w.card, lambda t: st_.issue(t, request, MONDAY_10AM))
        w.model[e] = {"status": 1, "balance": 0, "spent": 0}


def delete(w: World, e: bytes, tear: int, deletion: bool = True) -> None:
    st_ = w.stations[e]
    kind = "issue.delete.settled" if deletion else "issue.cancel.settled"
    before = sum(1 for ev in st_.event_log.events() if ev.kind == kind)
    try:
        run(w.card, lambda t: st_.cancel(t, MONDAY_10AM, settle=True, deletion=deletion), tear or None)
    except CardRemoved:
        app = w.card.sub_application(e)
        if app is not None:  # torn before the end: the next tap finishes it
            run(w.card, lambda t: st_.cancel(t, MONDAY_10AM, settle=True, deletion=deletion))
    settled = [ev.detail["balance"] for ev in st_.event_log.events() if ev.kind == kind]
    assert len(settled) == before + 1, "one settlement per cancellation / deletion, whatever the tears"
    assert settled[-1] == w.model[e]["balance"], "the settled amount is exactly the sub-application's balance"
    w.model[e] = None if deletion else {"status": 2, "balance": 0, "spent": 0}


def door(w: World, e: bytes) -> None:
    reader = InProcessReader()
    reader.tap(w.card)
    decision = w.doors[e].handle_tap(reader.wait_for_card(0), MONDAY_10AM)
    other = B if e == A else A
    assert HOLDERS[other][1] not in decision.message and HOLDERS[other][0] not in decision.message
    m = w.model[e]
    if m is None:
        assert decision.reason_code == "other_enterprise"
    elif m["status"] == 2:
        assert decision.reason_code == "voided"
    else:
        assert decision.accepted and decision.message == f"Welcome, {HOLDERS[e][1]}"


def money(w: World, e: bytes, amount: int, load: bool) -> None:
    term = w.topup[e] if load else w.pos[e]
    reader = InProcessReader()
    reader.tap(w.card)
    transmit = reader.wait_for_card(0).transmit
    try:
        decision = (term.top_up if load else term.purchase)(transmit, amount, MONDAY_10AM)
        accepted = decision.accepted
    except Refusal:  # refused before any money moved (no sub-application of e, voided, ...)
        accepted = False
    m = w.model[e]
    active = m is not None and m["status"] == 1
    if load:
        # the top-up terminal's max_load (tests/support.py) and the card's maximum balance
        ok = active and amount <= 50_000 and m["balance"] + amount <= 200_000
    else:
        # the till's max_purchase and offline_limit since the last sync (never, here), then the card's balance
        ok = active and amount <= 10_000 and m["spent"] + amount <= 15_000 and m["balance"] >= amount
    assert accepted == ok, (m, amount, load)
    if ok:
        m["balance"] += amount if load else -amount
        m["spent"] += 0 if load else amount


enterprises = st.sampled_from([A, B])
steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), enterprises, st.integers(0, 4)),
        st.tuples(st.just("delete"), enterprises, st.integers(0, 12)),
        st.tuples(st.just("void"), enterprises, st.integers(0, 8)),
        st.tuples(st.just("door"), enterprises, st.just(0)),
        st.tuples(st.just("load"), enterprises, st.integers(1, 60_000)),
        st.tuples(st.just("buy"), enterprises, st.integers(1, 30_000)),
    ),
    min_size=1,
    max_size=10,
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_random_sequences_keep_enterprises_apart_and_money_conserved(sequence):
    with tempfile.TemporaryDirectory() as tmp:
        w = World(Path(tmp))
        try:
            for op, e, arg in sequence:
                other = B if e == A else A
                other_before = snapshot(w.card, other)
                m = w.model[e]
                if op == "add":
                    if m is not None:
                        continue  # present (active or voided): a second one is refused, tested elsewhere
                    add(w, e, arg)
                elif op in ("delete", "void"):
                    if m is None or (op == "void" and m["status"] == 2):
                        continue
                    delete(w, e, arg, deletion=op == "delete")
                elif op == "door":
                    door(w, e)
                else:
                    money(w, e, arg, op == "load")
                # The other sub-application is untouched by anything done for e, but for the access counter
                # of a door tap (its own terminal's, never e's).
                assert snapshot(w.card, other) == other_before, (op, e)
                for x in (A, B):
                    mx, app = w.model[x], w.card.sub_application(x)
                    assert (app is None) == (mx is None), (op, e, x)
                    if app is not None and mx["status"] == 1:
                        assert app.status == 1
                        assert app.purse is not None and app.purse.balance == mx["balance"]
                    elif app is not None:  # cancelled: voided, its balance settled, its purse erased
                        assert app.status == 2 and app.purse is None
            assert [d.enterprise_id for d in w.card.directory()] == [
                d.enterprise_id for d in w.card.directory() if w.model[d.enterprise_id] is not None
            ]
        finally:
            w.close()
