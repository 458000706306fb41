"""The issuing station creates the subsidy purse (补助钱包, docs/card-application.md 5.6) when it issues a version 2
sub-application: secured UPDATE BINARY of EF_SUBSIDY (SFI 5, the maximum subsidy balance) before activation; the
newly issued card then collects an allowance at its first tap. Version 1 cards get none (tests/test_issuing.py
issues them unchanged: their card answers 6A 82 to SFI 5)."""

from __future__ import annotations

import datetime as dt

from simulator.card import OneCardV2Applet
from simulator.personalise import multi_card, sub_application
from terminal import card_protocol as cp
from terminal import rekey
from terminal.subsidy_protocol import Allowance
from tests.support import MONDAY_10AM
from tests.test_card_v2 import (  # noqa: F401 (platform is a fixture)
    ISSUER_SAM,
    SAMS,
    A,
    B,
    add_wash_issue,
    person,
    platform,
    pos_terminal,
    station,
    tap_run,
)


def v2_card_with_a():
    return OneCardV2Applet(
        multi_card([sub_application(SAMS[A], person(A, "E1001", "Zhang Wei", {1}), "Office")], ISSUER_SAM)
    )


def test_a_newly_issued_sub_application_has_a_subsidy_purse_and_collects_an_allowance(platform, tmp_path):
    card = v2_card_with_a()
    assert card.sub_application(A).subsidy is None  # the simulator's own personalisation gives A none
    st = station(platform, tmp_path, B)
    asn = add_wash_issue(st, card, B, "R-0707", "Community")
    sub = card.sub_application(B).subsidy
    assert (sub.balance, sub.expiry, sub.max_balance, sub.online_counter, sub.offline_counter) == (
        0,
        bytes(4),
        200_000,  # the cash purse's maximum (IssueRequest.max_balance)
        0,
        0,
    )
    assert card.sub_application(A).subsidy is None  # nothing of A's changed
    info = tap_run(card, st._select)[0]
    assert (info.has_subsidy, info.subsidy_expiry) == (True, None)  # FCI C9 = 00000000
    pos = pos_terminal(tmp_path, B)
    a = Allowance("2026-11.R-0707", asn, 2_500, dt.date(2026, 11, 30), "subsidy_first")
    pos.pending_allowances = lambda card_asn: [a] if card_asn == asn else []
    decision = tap_run(card, lambda t: pos.purchase(t, 1_000, MONDAY_10AM))[0]
    assert decision.message == (
        "Paid 10.00 (subsidy 10.00, cash 0.00) (subsidy of 25.00 collected - subsidy balance 25.00)"
    )
    assert (sub.balance, sub.expiry) == (1_500, bytes.fromhex("20261130"))


def test_ef_subsidy_rules_on_the_card(platform, tmp_path):
    """A second write changes only the maximum (never below the balance); a version 1 card has no EF_SUBSIDY."""
    card = v2_card_with_a()
    st = station(platform, tmp_path, B)
    add_wash_issue(st, card, B, "R-0707", "Community")
    sub = card.sub_application(B).subsidy
    sub.balance = 5_000

    def write(value: bytes, offset=0):
        def run(t):
            info = st._select(t)
            try:
                rekey.AdminChannel(t, st.sam, info).update_binary(cp.SFI_SUBSIDY, offset, value, "EF_SUBSIDY")
            except cp.CardProtocolError as exc:
                return str(exc)
            return "ok"

        return tap_run(card, run)[0]

    assert write((9_000).to_bytes(4, "big")) == "ok" and (sub.balance, sub.max_balance) == (5_000, 9_000)
    assert "6A80" in write((4_999).to_bytes(4, "big")).replace(" ", "").upper() and sub.max_balance == 9_000
    assert "6B00" in write(bytes(2), 2).replace(" ", "").upper()
    assert card.sub_application(B).subsidy is sub
