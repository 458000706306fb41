"""A card's transaction history survives its replacement: the backup taken before voiding holds every record the card
kept (READ RECORD 1..10, newest first, never None), and the log has it before the card is voided. Issue 15."""

import datetime as dt

from common.config import load_config
from simulator.card import MAX_RECORDS
from terminal.blacklist import Blacklist
from terminal.event_log import EventLog
from terminal.purse_flow import PurseTerminal
from tests.support import MONDAY_10AM, TERMINAL_TOML
from tests.test_card_flows import SAM, issuing, old_card, platform  # noqa: F401  (fixtures)
from tests.test_card_washing import tap_run


def pos_terminal(tmp):
    cfg = tmp / "pos.toml"
    cfg.write_text(TERMINAL_TOML.format(kind="pos", db=tmp / "pos.db", bl=tmp / "pos-bl.db"))
    config = load_config(cfg)
    return PurseTerminal(
        config,
        SAM,
        EventLog.open(config.terminal.database, config.terminal.id),
        Blacklist.open(config.terminal.blacklist),
    )


def spend(card, pos, amounts):
    for i, amount in enumerate(amounts):
        tap_run(card, lambda t: pos.purchase(t, amount, MONDAY_10AM + dt.timedelta(minutes=i)))


def test_backup_keeps_the_last_ten_records_newest_first(issuing, platform, tmp_path):
    old = old_card(tmp_path / "old.json", platform, balance=5_000)
    pos = pos_terminal(tmp_path)
    spend(old, pos, [100 + i for i in range(12)])  # 12 purchases: the card keeps the last 10
    on_card = list(reversed(old.state.purse.records))
    assert len(on_card) == MAX_RECORDS == 10
    backup, _ = tap_run(old, lambda t: issuing.backup_and_void(t, MONDAY_10AM + dt.timedelta(hours=1)))
    assert backup.records == on_card
    assert [r["counter"] for r in backup.records] == list(range(11, 1, -1))
    assert [r["amount"] for r in backup.records] == [111 - i for i in range(10)]
    assert all(r["type"] == 6 and len(r["tac"]) == 16 and r["terminal"] == "000000000101" for r in backup.records)
    assert backup.balance == 5_000 - sum(100 + i for i in range(12))
    intent = issuing.event_log.last_event(old.state.asn, ("issue.void.intent",))
    assert intent.detail["records"] == on_card


def test_backup_of_a_card_with_few_records_stops_at_the_first_missing_one(issuing, platform, tmp_path):
    old = old_card(tmp_path / "old.json", platform, balance=5_000)
    spend(old, pos_terminal(tmp_path), [250, 300])
    backup, apdus = tap_run(old, lambda t: issuing.backup_and_void(t, MONDAY_10AM + dt.timedelta(hours=1)))
    assert [(r["counter"], r["amount"], r["balance_after"]) for r in backup.records] == [
        (1, 300, 4_450),
        (0, 250, 4_750),
    ]
    assert backup.records == list(reversed(old.state.purse.records))
