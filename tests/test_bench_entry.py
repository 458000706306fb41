"""bench/platform.py, the name issue 14 gives the platform bench, is also the standard library's `platform`: every
script in bench/ (and the libraries it imports) must still get the standard library's module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_platform_runs_the_platform_bench():
    r = subprocess.run(
        [sys.executable, "bench/platform.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert "--terminals" in r.stdout and "--plain-uploads" in r.stdout and "--backend" in r.stdout


def test_a_script_beside_it_imports_the_standard_librarys_platform(tmp_path):
    script = REPO / "bench" / "_probe_platform_import.py"
    script.write_text(
        "import platform, pika, psutil\nprint(platform.system(), platform.python_version(), platform.__file__)\n"
    )
    try:
        r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    finally:
        script.unlink()
    assert r.returncode == 0, r.stderr
    system, version, where = r.stdout.split()
    assert system == "Linux" and version == ".".join(map(str, sys.version_info[:3]))
    assert Path(where).parent != REPO / "bench"
