"""The README's first command: the live demo runs end to end and shows every decision with its reason."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "onecard", "demo", "--workdir", str(tmp_path / "demo"),
                           "--hold", "0.6"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for line in ["[Door 1F] OK  Welcome, Zhang Wei",
                 "[Door 1F] NO  Outside your permitted hours",
                 "[Door 1F] NO  Card reported lost",
                 "[Clock 1F] NO  Card reported lost",
                 "[Door 1F] NO  No access rights for this door",
                 "[Door 1F] NO  Card expired on",
                 "[Door 1F] NO  This card has no application for this site",
                 "[Door 1F] NO  Card not supported",
                 "[Clock 1F] OK  Zhang Wei: clocked in at",
                 "[Clock 1F] OK  Zhang Wei: already clocked in at",
                 "relay: door unlocked for 3 s"]:
        assert line in out, line
    assert out.count("chain intact: 7 records") == 2
