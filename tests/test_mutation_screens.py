"""What the display shows (terminal/screens.py) as whole Screens: every field of every kind of screen, every Chinese
line by reason code and by door event kind. Issue 15."""

import datetime as dt
import re
from pathlib import Path

from common.door_events import CLOSED, FORCED_OPEN, HELD_OPEN, REX
from sam.interface import Algorithm
from terminal.card_protocol import AccessReadResponse, AccessRights, CardInfo, Holder
from terminal.decision import AuthenticatedCard, Decision
from terminal.door_monitor import MESSAGES
from terminal.screens import (
    ZH,
    ZH_KIND,
    Screen,
    alarm_screen,
    decision_screen,
    entry_screen,
    idle_screen,
    notice_screen,
    prompt_screen,
)

ROOT = Path(__file__).resolve().parent.parent


def card(employee_no="E1001", name="王芳") -> AuthenticatedCard:
    info = CardInfo(
        asn=bytes(8),
        enterprise_id=bytes(4),
        status=1,
        key_version=1,
        algorithm=Algorithm.AES128,
        card_type=1,
        app_version=1,
    )
    rights = AccessRights(dt.date(2026, 1, 1), dt.date(2026, 12, 31), frozenset({1}), 0)
    return AuthenticatedCard(info, AccessReadResponse(0x9000, rights, Holder(employee_no, name), 1, bytes(4), b""))


def test_a_screen_has_empty_defaults():
    assert Screen("notice", "Hello") == Screen("notice", "Hello", "", "", "", "", None, None)
    s = Screen("notice", "Hello")
    assert (s.zh, s.mark, s.big, s.name, s.amount, s.balance) == ("", "", "", "", None, None)


def test_the_chinese_lines_by_reason_code():
    assert ZH == {
        "granted": "欢迎",
        "clock_in": "上班打卡成功",
        "clock_out": "下班打卡成功",
        "repeat": "已打卡",
        "completed": "交易成功",
        "balance": "余额查询",
        "blacklisted": "此卡已挂失或注销",
        "expired": "卡已过期",
        "not_yet_valid": "卡尚未生效",
        "voided": "卡已作废",
        "card_status": "卡状态异常",
        "no_rights": "无此门权限",
        "outside_hours": "不在允许时段",
        "unknown_time_profile": "时段未设置,请联系管理员",
        "other_enterprise": "非本单位卡",
        "insufficient_balance": "余额不足",
        "over_purchase_limit": "超过单笔限额",
        "over_load_limit": "超过单笔充值限额",
        "offline_limit": "超过脱机限额",
        "store_full": "终端存储将满,请联网",
        "purse_expired": "钱包已过期",
        "no_purse": "此卡无电子钱包",
        "nothing_to_undo": "没有可撤销的交易",
        "undo_too_late": "已超过撤销时限",
        "undo_other_card": "请刷付款的那张卡",
        "unconfirmed": "交易未确认,请再刷一次",
        "removed": "刷卡过快,请重刷",
        "log_unavailable": "终端故障,请联系维护",
        "not_supported": "不支持此卡",
        "card_error": "卡片错误",
        "unknown_card": "无法识别此卡",
        "no_phone": "请使用RFID-SIM手机",
        "phone_has_card": "请使用RFID-SIM手机",
        "auth_failed": "卡片验证失败",
        "sam_refused": "安全模块拒绝",
        "unknown_key_version": "密钥版本未知",
        "earlier_completed": "上次交易已完成",
        "bad_request": "输入有误",
        "meal_count_limit": "本餐次数已满",
        "meal_amount_limit": "超过本餐限额",
        "daily_amount_limit": "超过每日限额",
        "no_operator": "请先签到",
        "bad_operator": "操作员号或密码错误",
        "shift_open": "请先签退",
        "no_operators": "未设置操作员",
        "signed_in": "签到成功",
        "signed_out": "签退成功",
        "pin_blocked": "消费密码已锁定,请到卡务中心解锁",
        "pin_not_set": "未设置消费密码",
        "pin_cancelled": "未输入消费密码,已取消",
    }


def test_every_chinese_line_is_for_a_reason_code_the_terminal_uses():
    source = "\n".join(p.read_text("utf-8") for p in (ROOT / "terminal").glob("*.py") if p.name != "screens.py")
    quoted = set(re.findall(r'"([a-z_]+)"', source))
    assert "clock_{verb}" in source  # attendance builds clock_in / clock_out from its verb
    assert sorted(set(ZH) - quoted) == [
        "clock_in",
        "clock_out",
        "earlier_completed",
    ]  # earlier_completed: set by no terminal code on main


def test_the_chinese_lines_by_door_event_kind():
    assert ZH_KIND == {
        HELD_OPEN: "门长时间未关,请关门",
        FORCED_OPEN: "门被强行打开,已报警",
        CLOSED: "门已关闭",
        REX: "出门按钮:门已开",
    }
    assert sorted(ZH_KIND) == sorted(MESSAGES)


def test_a_purchase_shows_amount_and_holder_but_never_its_unverified_balance():
    d = Decision(
        True,
        "pos.purchase",
        "completed",
        "Paid 12.50 - balance 87.50",
        card=card(),
        detail={"amount": 1250, "balance_after": 8750, "balance": 10000},
    )
    assert decision_screen(d) == Screen(
        "decision", "Paid 12.50 - balance 87.50", "交易成功", "ok", name="王芳", amount=1250
    )


def test_a_balance_enquiry_shows_the_balance_and_falls_back_to_the_employee_number():
    d = Decision(
        True,
        "pos.balance",
        "balance",
        "Balance 87.50",
        card=card(name=""),
        detail={"balance_after": 8750, "balance": 1},
    )
    assert decision_screen(d) == Screen("decision", "Balance 87.50", "余额查询", "ok", name="E1001", balance=8750)


def test_a_refusal_shows_no_amount_and_no_name_without_a_card():
    d = Decision(
        False, "pos.deny", "insufficient_balance", "Insufficient balance", detail={"amount": 1250, "balance_after": 300}
    )
    assert decision_screen(d) == Screen("decision", "Insufficient balance", "余额不足", "no", balance=300)


def test_a_balance_that_is_not_fen_is_not_shown():
    d = Decision(True, "door.grant", "granted", "Welcome", card=card(), detail={"balance_after": "8750", "amount": 5})
    assert decision_screen(d) == Screen("decision", "Welcome", "欢迎", "ok", name="王芳", amount=5)


def test_an_unknown_reason_code_still_says_yes_or_no_in_chinese():
    yes = Decision(True, "door.grant", "something_new", "Come in")
    no = Decision(False, "door.deny", "something_new", "Stay out")
    assert decision_screen(yes) == Screen("decision", "Come in", "允许", "ok")
    assert decision_screen(no) == Screen("decision", "Stay out", "拒绝", "no")


def test_prompts():
    assert prompt_screen("Tap a card") == Screen("prompt", "Tap a card", "请刷卡")
    assert prompt_screen("Pay 12.50", 1250) == Screen("prompt", "Pay 12.50", "请刷卡", big="12.50", amount=1250)
    assert prompt_screen("Pay nothing", 0, zh="免费") == Screen("prompt", "Pay nothing", "免费", big="0.00", amount=0)


def test_keypad_entries():
    assert entry_screen("") == Screen("entry", "Amount: ", "请输入金额", big="0.00")
    assert entry_screen("12.5") == Screen("entry", "Amount: 12.5", "请输入金额", big="12.5")
    assert entry_screen("12.5", waiting="Pay 3.00") == Screen(
        "entry", "Pay 3.00 - new amount: 12.5", "请输入金额", big="12.5"
    )
    assert entry_screen("12.555", error="Amount has more than 2 decimals") == Screen(
        "entry", "Amount has more than 2 decimals", "输入有误,请重新输入", "no", big="12.555"
    )
    assert entry_screen("", error="Amount missing", waiting="Pay 3.00") == Screen(
        "entry", "Amount missing", "输入有误,请重新输入", "no", big=""
    )


def test_notices():
    assert notice_screen("Synchronised") == Screen("notice", "Synchronised", "")
    assert notice_screen("Synchronised", "已同步") == Screen("notice", "Synchronised", "已同步")


def test_alarms_and_the_door_closing():
    assert alarm_screen(HELD_OPEN, MESSAGES[HELD_OPEN]) == Screen(
        "alarm", "Door held open: please close the door", "门长时间未关,请关门", "alarm"
    )
    assert alarm_screen(FORCED_OPEN, "Forced") == Screen("alarm", "Forced", "门被强行打开,已报警", "alarm")
    assert alarm_screen(CLOSED, "Door closed") == Screen("alarm", "Door closed", "门已关闭", "")
    assert alarm_screen("door.other", "Something") == Screen("alarm", "Something", "", "alarm")


def test_idle():
    assert idle_screen("Gate 3", dt.datetime(2026, 3, 2, 9, 5, 59)) == Screen(
        "idle", "Gate 3 2026-03-02 09:05", "请刷卡", big="09:05", name="Gate 3"
    )


def test_the_spending_password_screen_shows_asterisks_only():
    from terminal.screens import pin_screen

    assert pin_screen(6000, 0) == Screen("entry", "Pay 60.00: spending password", "请输入消费密码", "", "", amount=6000)
    assert pin_screen(6000, 3, "2 tries left") == Screen(
        "entry", "Pay 60.00: spending password *** (2 tries left)", "请输入消费密码", "", "***", amount=6000
    )
    assert pin_screen(100, 0, "3 tries left", error="digits only") == Screen(
        "entry", "Pay 1.00: spending password (digits only)", "请输入消费密码", "no", "", amount=100
    )
