"""Issue 13: the monthly attendance bill computed at the platform from ingested events (the arithmetic's edges are
in tests/test_attendance_rules.py): shifts, holidays, midnight in the platform's time zone, and
`onecard platform attendance-bill` as SMS text and CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import zoneinfo

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.bills import CSV_COLUMNS
from central.db import PlatformError
from central.store import Platform
from common import sync_protocol as p
from terminal.event_log import EventLog
from tests.test_cli import onecard

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
TID, EID = "000000000301", "00010001"
KEY = Ed25519PrivateKey.generate()


def t(day, hh, mm, ss=0):
    return dt.datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=SHANGHAI)


# --- the platform: bills from ingested events, SMS text and CSV --------------------------------------------------

DOCUMENT = {
    "holidays": {"2026-11-25": "Founders Day"},
    "shifts": {
        "day": {"start": "09:00", "end": "18:00", "grace_minutes": 5},
        "default": {"start": "08:30", "end": "17:30"},
    },
}


def ingest(pf, tmp_path, taps):
    with EventLog.open(tmp_path / "att.db", TID) as log:
        for asn, when, kind in taps:
            log.append(when.astimezone(dt.timezone.utc), kind, asn=asn, reason_code="x", message="", detail={})
        wire = [
            p.WireEvent(
                e.seq,
                p.format_time(e.time),
                e.kind,
                e.asn,
                e.reason_code,
                e.message,
                e.detail_json,
                e.prev_hash,
                e.hash,
            )
            for e in log.events()
        ]
    pf.ingest(TID, wire)


@pytest.fixture
def site(tmp_path):
    now = dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.timezone.utc)
    pf = Platform(tmp_path / "platform.db", KEY, clock=lambda: now)
    pf.add_enterprise(EID, "Test Co")
    pf.add_terminal(TID, EID, kind="attendance")
    pf.publish_config(EID, DOCUMENT)
    pf.add_holder(EID, "E1001", "Zhang Wei")
    pf.add_holder(EID, "E1002", "Li Na")
    pf.issue_card(EID, "E1001", "0102030405060708")
    pf.issue_card(EID, "E1002", "1112131415161718")
    pf.set_shift(EID, "E1001", "day")
    a, b = "0102030405060708", "1112131415161718"
    d = dt.date
    ingest(
        pf,
        tmp_path,
        [
            (a, t(d(2026, 11, 2), 9, 5, 0), "attendance.in"),  # on time at the grace edge
            (a, t(d(2026, 11, 2), 12, 0, 0), "attendance.out"),
            (a, t(d(2026, 11, 2), 13, 0, 0), "attendance.in"),  # the second clock-in of the day
            (a, t(d(2026, 11, 2), 18, 0, 0), "attendance.out"),
            (a, t(d(2026, 11, 3), 9, 6, 0), "attendance.in"),  # late
            (a, t(d(2026, 11, 3), 17, 0, 0), "attendance.out"),  # early
            (a, t(d(2026, 11, 25), 10, 0, 0), "attendance.in"),  # on the holiday: shown, not judged
            (a, t(d(2026, 11, 30), 23, 59, 59), "attendance.in"),  # the month's last second, local
            (a, t(d(2026, 12, 1), 0, 0, 0), "attendance.out"),  # already December in Shanghai
            (b, t(d(2026, 11, 2), 8, 30, 0), "attendance.in"),  # the default shift, no grace
            (b, t(d(2026, 11, 2), 17, 30, 0), "attendance.out"),
        ],
    )
    yield pf, tmp_path
    pf.close()


def test_platform_bills_judge_each_employee_against_their_shift_and_the_holidays(site):
    pf, _ = site
    bills = {b.employee_no: b for b in pf.attendance_bills("2026-11", EID)}
    zhang = bills["E1001"]
    assert zhang.shift.name == "day"
    assert zhang.totals() == {
        "working_days": 20,  # 21 weekdays in November 2026, less Founders Day
        "present": 3,
        "late": 2,  # 3 November, and 30 November's clock-in at 23:59:59
        "early": 1,
        "absent": 17,
        "missing_clock": 1,  # 30 November: clocked in at 23:59:59, out after midnight (December)
    }
    sms = zhang.sms()
    assert sms.startswith(
        "[onecard] Zhang Wei (E1001), attendance 2026-11, shift day 09:00-18:00: worked 3 of 20 working day(s), "
        "late 2, early 1, absent 17, missing clock 1. 11-02 Mon in 09:05 out 12:00, in 13:00 out 18:00; "
        "11-03 Tue in 09:06 out 17:00 late 6 min early 60 min; 11-04 Wed absent; "
    )
    assert "11-25 Wed in 10:00 out -- (holiday Founders Day)" in sms
    assert sms.endswith("11-30 Mon in 23:59 out -- late 900 min no clock-out.")
    # No shift set: the enterprise's "default" shift.
    assert bills["E1002"].shift.name == "default" and bills["E1002"].days[0].status == ()


def test_one_bill_and_the_refusals(site):
    pf, _ = site
    assert pf.attendance_bill(EID, "E1001", "2026-11").startswith("[onecard] Zhang Wei (E1001)")
    with pytest.raises(PlatformError, match="not YYYY-MM"):
        pf.attendance_bills("Nov-2026", EID)
    with pytest.raises(PlatformError, match="employee E9 is not registered"):
        pf.attendance_bill(EID, "E9", "2026-11")
    with pytest.raises(PlatformError, match="shift 'night' is not in enterprise 00010001's published configuration"):
        pf.set_shift(EID, "E1002", "night")


def test_cli_prints_every_employees_sms_and_the_administrators_csv(site):
    pf, tmp_path = site
    key = tmp_path / "platform.key"
    key.write_bytes(
        KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    db = tmp_path / "platform.db"
    r = onecard("platform", "attendance-bill", "--db", db, "--key", key, "--month", "2026-11")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("[onecard] Zhang Wei") and lines[1].startswith("[onecard] Li Na")
    r = onecard("platform", "attendance-bill", "--db", db, "--key", key, "--month", "2026-11", "--format", "csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert tuple(rows[0]) == CSV_COLUMNS
    by = {(row[1], row[3]): dict(zip(CSV_COLUMNS, row)) for row in rows[1:]}
    assert by[("E1001", "2026-11-02")]["clock_pairs"] == "09:05-12:00 13:00-18:00"
    assert by[("E1001", "2026-11-03")] | {} == {
        "enterprise_id": EID,
        "employee_no": "E1001",
        "name": "Zhang Wei",
        "date": "2026-11-03",
        "weekday": "Tue",
        "shift": "day",
        "day_type": "work",
        "holiday": "",
        "first_in": "09:06",
        "last_out": "17:00",
        "clock_pairs": "09:06-17:00",
        "late_minutes": "6",
        "early_minutes": "60",
        "status": "late early",
    }
    assert by[("E1001", "2026-11-25")]["day_type"] == "holiday"
    assert by[("E1002", "2026-11-02")]["status"] == "ok"
    r = onecard("platform", "attendance-bill", "E1001", "--db", db, "--key", key, "--month", "2026-11")
    assert r.returncode == 2 or r.returncode == 1
    assert "needs --enterprise" in r.stderr and "Traceback" not in r.stderr
    r = onecard("platform", "set-shift", "E1002", "--enterprise", EID, "--shift", "day", "--db", db, "--key", key)
    assert r.returncode == 0 and "E1002 is on shift day" in r.stdout
    assert json.loads(json.dumps(DOCUMENT))  # the document the bills used is the published one
