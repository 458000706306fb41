"""The one table of event kinds a terminal's log may hold (docs/event-log.md, "Kinds").

The terminal's log refuses to write any other kind and the platform refuses to receive one, so an invented kind
(`door.blow-up`) can neither be logged nor uploaded. A new kind is added here, in the same change that writes it.
"""

from __future__ import annotations

from common.door_events import CLOSED, FORCED_OPEN, HELD_OPEN, NORMALLY_OPEN_END, NORMALLY_OPEN_START, REX

_TERMINAL_KINDS = ("door", "attendance", "pos", "topup")
_MONEY_OPS = ("pos.purchase", "pos.undo", "topup.load")  # each: .intent, the outcome, .abandoned
# The subsidy purse (docs/card-application.md 5.6, docs/canteen.md "Subsidy"): an allowance loaded, an expired
# subsidy withdrawn, the subsidy share of an undone two-purse sale given back; each: .intent, the outcome, .abandoned.
_SUBSIDY_OPS = ("subsidy.load", "subsidy.withdraw", "subsidy.refund")
_ISSUING = ("issue.card", "issue.void", "issue.restore", "issue.keys")  # each with its .intent

KNOWN_KINDS: frozenset[str] = frozenset(
    {
        "door.grant",
        "attendance.in",
        "attendance.out",
        "attendance.repeat",
        "tap.incomplete",
        "card.rights",
        "card_action.failed",
        "config.rejected",
        "pos.sign_in",  # a cashier's shift (batch) opens: {operator, name, batch}
        "pos.sign_out",  # and closes: {operator, batch}
        HELD_OPEN,
        FORCED_OPEN,
        CLOSED,
        REX,
        NORMALLY_OPEN_START,
        NORMALLY_OPEN_END,
        *(f"{k}.deny" for k in _TERMINAL_KINDS),
        *(f"{op}{suffix}" for op in _MONEY_OPS for suffix in (".intent", "", ".abandoned")),
        *(f"{op}{suffix}" for op in _SUBSIDY_OPS for suffix in (".intent", "", ".abandoned")),
        *(f"{op}{suffix}" for op in _ISSUING for suffix in (".intent", "")),
        "issue.restore.abandoned",
        # replacement: the old card's subsidy balance loaded onto the new card (card-application.md 8.5)
        *(f"issue.restore_subsidy{suffix}" for suffix in (".intent", "", ".abandoned")),
        "issue.replace",
        "issue.subapp",  # a version 2 card got this enterprise's sub-application (card-application.md 9.6)
        "issue.pin_set",  # card office: the spending password set or reset (never the password itself)
        "issue.pin_unblocked",  # card office: its try counter reset
        *(f"{op}{suffix}" for op in ("issue.cancel", "issue.delete") for suffix in (".intent", ".settled", "")),
    }
)


def is_known_kind(kind: object) -> bool:
    return isinstance(kind, str) and kind in KNOWN_KINDS
