"""What the display shows, as data: one Screen per decision, prompt, keypad entry, alarm or idle moment. Sans-I/O.

Every screen carries the English sentence (also what the console prints) and a Chinese line chosen by reason code,
so a display driver only lays out text; it never decides what to say.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from common.money import format_yuan
from terminal.decision import Decision


@dataclass(frozen=True)
class Screen:
    kind: str  # decision | prompt | entry | alarm | idle | notice
    text: str  # the English sentence
    zh: str = ""  # the same in Chinese
    mark: str = ""  # ok | no | alarm | "" : the big word at the top
    big: str = ""  # large text when there is no mark (an amount being typed, the time)
    name: str = ""  # the card holder
    amount: int | None = None  # fen
    balance: int | None = None  # fen, after the transaction: only a balance the terminal's SAM verified


ZH = {
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
ZH_KIND = {
    "door.held_open": "门长时间未关,请关门",
    "door.forced_open": "门被强行打开,已报警",
    "door.closed": "门已关闭",
    "door.rex": "出门按钮:门已开",
}


# Decisions whose balance_after no MAC this terminal checked covers (docs/card-application.md 5.2, "Which balances
# are verified"): a purchase's is the card's claim, confirmed only by the platform's TAC check. Never displayed.
UNVERIFIED_BALANCE_KINDS = frozenset({"pos.purchase"})


def decision_screen(decision: Decision) -> Screen:
    holder = decision.card.read.holder if decision.card is not None else None
    d = decision.detail
    balance = None if decision.kind in UNVERIFIED_BALANCE_KINDS else d.get("balance_after")
    zh = ZH.get(decision.reason_code, "允许" if decision.accepted else "拒绝")
    return Screen(
        "decision",
        decision.message,
        zh,
        "ok" if decision.accepted else "no",
        name=(holder.name or holder.employee_no) if holder else "",
        amount=d.get("amount") if decision.accepted else None,
        balance=balance if isinstance(balance, int) else None,
    )


def prompt_screen(text: str, amount: int | None = None, zh: str = "请刷卡") -> Screen:
    return Screen("prompt", text, zh, big=format_yuan(amount) if amount is not None else "", amount=amount)


def entry_screen(typed: str, error: str = "", waiting: str = "") -> Screen:
    """The amount as the cashier types it; `error` for a key line that was refused; `waiting` for the sale
    still waiting for its card (a new amount entered now replaces it)."""
    if error:
        return Screen("entry", error, "输入有误,请重新输入", "no", big=typed)
    text = f"{waiting} - new amount: {typed}" if waiting else f"Amount: {typed}"
    return Screen("entry", text, "请输入金额", big=typed or "0.00")


def pin_screen(amount: int, typed: int, note: str = "", error: str = "") -> Screen:
    """The spending password being typed: one asterisk per digit, never a digit."""
    stars = "*" * typed
    text = f"Pay {format_yuan(amount)}: spending password {stars}".rstrip()
    if note or error:
        text += f" ({error or note})"
    return Screen("entry", text, "请输入消费密码", "no" if error else "", big=stars, amount=amount)


def notice_screen(text: str, zh: str = "") -> Screen:
    return Screen("notice", text, zh)


def alarm_screen(kind: str, message: str) -> Screen:
    return Screen("alarm", message, ZH_KIND.get(kind, ""), "alarm" if kind != "door.closed" else "")


def idle_screen(terminal_name: str, local_now: dt.datetime) -> Screen:
    return Screen(
        "idle", f"{terminal_name} {local_now:%Y-%m-%d %H:%M}", "请刷卡", big=f"{local_now:%H:%M}", name=terminal_name
    )
