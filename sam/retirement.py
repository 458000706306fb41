"""Whether a key version may be retired: the platform's key-version report says how many cards still use it.

`onecard platform key-versions --json > report.json` writes the report; `onecard sam restrict --drop-version N` and
`onecard keys load-psam --retire-below N` read it and refuse while any card the platform counts (active, lost, or
voided and waiting for its replacement or cancellation) is on a version they would remove. No I/O here: the CLI
reads the file and passes the text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

REPORT_HELP = (
    "the platform's key-version report: `onecard platform key-versions --db DB --key KEY --json > FILE`, "
    "made after the issuing stations' logs were uploaded"
)
OVERRIDE_FLAG = "--retire-although-cards-use-it"


class RetirementRefused(Exception):
    """A version some cards still use, or a report that cannot be read; the message names the fix."""


def parse_report(text: str, source: str) -> dict[str, dict[str, int]]:
    """{enterprise ID (8 digits): {version (decimal text, or "unknown"): cards}}."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise RetirementRefused(f"{source} is not a key-version report ({exc}); write it with {REPORT_HELP}") from None
    ok = isinstance(doc, dict) and all(
        isinstance(e, str)
        and isinstance(per, dict)
        and all(isinstance(v, str) and type(n) is int and n >= 0 for v, n in per.items())
        for e, per in doc.items()
    )
    if not ok:
        raise RetirementRefused(f"{source} is not a key-version report; write it with {REPORT_HELP}")
    return doc


def check_retirement(report: dict[str, dict[str, int]], enterprise_id: str, versions: Iterable[int]) -> None:
    """Raise RetirementRefused when a card of this enterprise is on one of `versions`, or on an unknown version."""
    per = report.get(enterprise_id)
    if per is None:
        raise RetirementRefused(
            f"the key-version report has no enterprise {enterprise_id}; make it for that enterprise ({REPORT_HELP})"
        )
    if per.get("unknown"):
        raise RetirementRefused(
            f"{per['unknown']} card(s) of enterprise {enterprise_id} are of unknown key version: "
            "re-key them (onecard issue rekey) or upload the issuing stations' logs, then make the "
            "report again"
        )
    used = {v: per.get(str(v), 0) for v in sorted(set(versions))}
    busy = {v: n for v, n in used.items() if n}
    if busy:
        listed = ", ".join(f"version {v}: {n} card(s)" for v, n in busy.items())
        raise RetirementRefused(
            f"enterprise {enterprise_id} still has cards on the key version(s) to retire "
            f"({listed}); re-key them at the issuing station (onecard issue rekey) first, or, if "
            f"those cards are to stop working, pass {OVERRIDE_FLAG}"
        )
