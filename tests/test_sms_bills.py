"""Bills as SMS over the SMPP path: UCS-2, concatenated when long, and `onecard platform spending-bill --send`
through the SMSC simulator to the holder's phone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from central.ota_gateway import SmppGateway
from central.sms_bills import bill_parts, send_bill
from simulator.ota_handset import SimHandset
from simulator.smsc import Smsc

REPO = Path(__file__).resolve().parent.parent
ENTERPRISE = "00010001"
PHONE = "8613900000002"


def test_short_bill_is_one_ucs2_sms_without_udh():
    assert bill_parts("余额 12.00", 1) == [(False, "余额 12.00".encode("utf-16-be"))]


def test_long_bill_is_concatenated_without_splitting_a_surrogate_pair():
    text = "张" * 66 + "😀" + "x" * 100
    parts = bill_parts(text, 0x42)
    assert len(parts) == 3 and all(udhi for udhi, _ in parts)
    assert [p[1][:6] for p in parts] == [bytes([5, 0, 3, 0x42, 3, i]) for i in (1, 2, 3)]
    assert all(len(ud) <= 140 for _, ud in parts)
    assert "".join(__import__("codecs").decode(ud[6:], "utf-16-be") for _, ud in parts) == text
    assert len(parts[0][1]) == 6 + 2 * 66  # the pair moved whole into part 2
    with pytest.raises(ValueError):
        bill_parts("", 0)


def test_bill_reaches_the_phone_inbox():
    smsc = Smsc().start()
    phone = SimHandset(None)
    smsc.add_handset(PHONE, phone)
    try:
        with SmppGateway("127.0.0.1", smsc.port, "onecard", "secret", "10657000") as gw:
            text = "[onecard] 张伟 (E1001), 食堂 2026-11: " + "消费 12.50; " * 20
            ids = send_bill(gw, PHONE, text, reference=7)
            assert len(ids) > 1
        assert phone.inbox == [text]
        assert {m.dcs for m in smsc.messages.values()} == {0x08}
    finally:
        smsc.stop()


def onecard(*args, check=True):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run(
        [sys.executable, "-m", "onecard", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_cli_spending_bill_send(tmp_path):
    db, key = tmp_path / "p.db", tmp_path / "p.key"
    base = ("--db", db, "--key", key)
    onecard("platform", "init", *base)
    onecard("platform", "add-enterprise", ENTERPRISE, "--name", "Co", *base)
    onecard("platform", "add-holder", "E1", "--enterprise", ENTERPRISE, "--name", "张伟", "--phone", PHONE, *base)
    smsc = Smsc().start()
    phone = SimHandset(None)
    smsc.add_handset(PHONE, phone)
    pw = tmp_path / "smpp.pass"
    pw.write_text("secret\n")
    try:
        r = onecard(
            "platform",
            "spending-bill",
            "E1",
            "--enterprise",
            ENTERPRISE,
            "--month",
            "2026-11",
            "--send",
            "--smsc",
            f"127.0.0.1:{smsc.port}",
            "--smpp-password-file",
            pw,
            *base,
        )
        bill = r.stdout.splitlines()[0]
        assert f"sent to {PHONE} in {len(bill_parts(bill, 0))} SMS" in r.stdout and "smpp" not in r.stderr
        assert len(phone.inbox) == 1 and "张伟" in phone.inbox[0] and phone.inbox[0] in r.stdout
        r = onecard(
            "platform",
            "attendance-bill",
            "E1",
            "--enterprise",
            ENTERPRISE,
            "--month",
            "2026-11",
            "--send",
            *base,
            check=False,
        )
        assert r.returncode != 0 and r.stderr.count("\n") == 1 and "--smsc" in r.stderr and "Traceback" not in r.stderr
        pw.write_text("wrong")
        r = onecard(
            "platform",
            "attendance-bill",
            "E1",
            "--enterprise",
            ENTERPRISE,
            "--month",
            "2026-11",
            "--send",
            "--smsc",
            f"127.0.0.1:{smsc.port}",
            "--smpp-password-file",
            pw,
            *base,
            check=False,
        )
        assert r.returncode != 0 and "refused the bind" in r.stderr and "Traceback" not in r.stderr
        assert len(phone.inbox) == 1
    finally:
        smsc.stop()


def test_cli_spending_bill_csv_and_refusals(tmp_path):
    db, key = tmp_path / "p.db", tmp_path / "p.key"
    base = ("--db", db, "--key", key)
    onecard("platform", "init", *base)
    onecard("platform", "add-enterprise", ENTERPRISE, "--name", "Co", *base)
    onecard("platform", "add-holder", "E1", "--enterprise", ENTERPRISE, "--name", "张伟", "--phone", PHONE, *base)
    onecard("platform", "add-holder", "E2", "--enterprise", ENTERPRISE, "--name", "Li Na", *base)
    r = onecard("platform", "spending-bill", "--enterprise", ENTERPRISE, "--month", "2026-11", "--format", "csv", *base)
    lines = r.stdout.splitlines()
    assert lines[0] == "enterprise_id,employee_no,name,month,time,wallet,item,place,terminal_id,amount,balance"
    assert lines[1:] == [
        f"{ENTERPRISE},E1,张伟,2026-11,,cash,opening balance,,,,0.00",
        f"{ENTERPRISE},E1,张伟,2026-11,,cash,closing balance,,,,0.00",
        f"{ENTERPRISE},E2,Li Na,2026-11,,cash,opening balance,,,,0.00",
        f"{ENTERPRISE},E2,Li Na,2026-11,,cash,closing balance,,,,0.00",
    ]
    r = onecard("platform", "spending-bill", "--enterprise", ENTERPRISE, "--month", "2026-11", *base)
    assert [line.split(":")[0] for line in r.stdout.splitlines()] == [
        "[onecard] 张伟 (E1), canteen 2026-11",
        "[onecard] Li Na (E2), canteen 2026-11",
    ]
    for bad, says in (
        (("--month", "2026-13"), "is not YYYY-MM"),
        (("--month", "2026-11", "--format", "csv", "--send"), "drop --format csv"),
        (("E9", "--month", "2026-11"), "employee E9 is not registered"),
    ):
        r = onecard("platform", "spending-bill", "--enterprise", ENTERPRISE, *bad, *base, check=False)
        assert r.returncode != 0 and says in r.stderr and r.stderr.count("\n") == 1, r.stderr
