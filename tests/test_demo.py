"""The README's first command: the live demo runs end to end and shows every decision with its reason."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "onecard", "demo", "--workdir", str(tmp_path / "demo"), "--hold", "0.5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    out = proc.stdout
    for line in [
        "[Door 1F] OK  Welcome, Zhang Wei",
        "[Door 1F] NO  Outside your permitted hours",
        "[Door 1F] NO  Card reported lost",
        "[Clock 1F] NO  Card reported lost",
        "[Door 1F] NO  No access rights for this door",
        "[Door 1F] NO  Card expired on",
        "[Door 1F] NO  This card has no application for this site",
        "[Door 1F] NO  Card not supported",
        "[Clock 1F] OK  Zhang Wei: clocked in at",
        "[Clock 1F] OK  Zhang Wei: already clocked in at",
        "[Door 1F] relay: door unlocked for 3 s",
        "[Top-up] OK  Loaded 100.00 - balance 100.00",
        "[Canteen till] OK  Paid 12.50",
        "[Canteen till] NO  Insufficient balance for 30.00: top up first",
        "[Canteen till] OK  Refunded 12.50 - balance 100.00",
        "[Canteen till] NO  Card removed too soon: tap again to finish",
        "[Canteen till] OK  Paid 8.00",
        "[Canteen till] NO  Purse expired on",
        "platform: Zhang Wei's card balance 92.00, the same as on the card",
    ]:
        assert line in out, line
    assert out.count('"tac_status": "ok"') == 4
    # The loss report made mid-demo: refused after it, granted again after the unlock.
    after_loss = out.split("reports his phone lost")[1]
    assert "[Door 1F] NO  Card reported lost" in after_loss
    assert "[Door 1F] OK  Welcome, Zhang Wei" in after_loss.split("unlocks the card")[1]
    assert out.count("chain intact") == 5  # the four office terminals and the community gate
    # Issue 11: one phone, two enterprises; the community deleted from the phone menu, the office door still opens.
    scene = out.split("--- 18:30, evening")[1]
    before, after = scene.split("deletes the Community application")
    assert "[Door 1F] OK  Welcome, Liu Yang" in before
    assert "[Community gate] OK  Welcome, Liu Yang" in before
    assert "[Top-up] OK  Loaded 50.00 - balance 50.00" in before
    assert "[Liu Yang's phone] Office: Balance 50.00 yuan" in before
    assert "[Liu Yang's phone] Community: Balance 0.00 yuan" in before
    assert "[Liu Yang's phone] Service password to delete Community" in after
    assert re.search(
        r"== platform: application of enterprise 00030003 on card [0-9A-Fa-f]{16} deleted, 0.00 yuan", after
    )
    assert "[Liu Yang's phone]   2. Community (voided)" in after
    again = after.split("at the community gate again")[1]
    assert "[Door 1F] OK  Welcome, Liu Yang" in again
    assert "[Community gate] NO  This card has been voided" in again
    assert "[Community gate] OK" not in again
    # Issue 12: an over-the-air top-up reaches a phone far from every terminal; the phone menu shows the balance the
    # platform booked, and the spending bill arrives as an SMS that lists the top-up over the air.
    ota = out.split("phone is nowhere near a terminal")[1]
    assert re.search(r"over-the-air top-up ota-[0-9a-f]{12} of 30.00 .*: done, balance now 122.00 \(TAC checked\)", ota)
    menu = re.findall(r"\[Zhang Wei's phone\] Enterprise 00010001: Balance (\d+\.\d\d) yuan", ota)
    platform_says = re.findall(r"== platform: card balance (\d+\.\d\d), the same as the phone menu shows", ota)
    assert menu == platform_says == ["122.00"]  # 92.00 after the day at the canteen, plus 30.00 over the air
    [sms] = [line for line in ota.splitlines() if line.startswith("   [Zhang Wei's phone] SMS from 10657000: ")]
    assert "[onecard] Zhang Wei (E1001), canteen " in sms and "closing balance 122.00 yuan" in sms
    assert sms.count(" top-up 30.00 over the air") == 1
    # Every screen is also a PNG (--display-snapshots): the till's decisions and the door's.
    screens = tmp_path / "demo" / "screens"
    assert len(list((screens / "pos").glob("*-decision.png"))) >= 5
    assert list((screens / "door").glob("*-decision.png"))
    # The story runs on its own clock: what it says is what the screens show.
    morning = out.split("--- 08:55, morning")[1].split("--- 11:30")[0]
    assert re.search(r"\[Clock 1F\] OK  Zhang Wei: clocked in at 08:5\d", morning), morning[:2000]


def test_demo_refuses_a_directory_it_did_not_make(tmp_path):
    keep = tmp_path / "home"
    keep.mkdir()
    (keep / "thesis.txt").write_text("years of work\n")
    proc = subprocess.run(
        [sys.executable, "-m", "onecard", "demo", "--workdir", str(keep)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "not made by onecard demo" in proc.stderr
    assert [p.name for p in keep.iterdir()] == ["thesis.txt"]


def test_demo_workdir_rules(tmp_path):
    from onecard.demo import DEMO_MARK, prepare_workdir

    made = prepare_workdir(tmp_path / "new")
    assert (made / DEMO_MARK).is_file()
    (made / "card.json").write_text("{}")
    again = prepare_workdir(tmp_path / "new")  # made by the demo: emptied and reused
    assert [p.name for p in again.iterdir()] == [DEMO_MARK]
    default = prepare_workdir(None)
    try:
        assert ROOT not in default.parents  # never inside the checkout
    finally:
        import shutil

        shutil.rmtree(default)
