"""An installer without a checkout: the built wheel in a fresh venv carries the documented firmware.toml and the
systemd units, `onecard --version` works, and `onecard terminal provision` runs with the packaged template."""

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sam.keystore import KeystoreUnlock, save_keystore
from tests.support import make_keystore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    d = tmp_path_factory.mktemp("wheel")
    # Built from a copy (links kept, as git keeps them), so the build's egg-info never lands in the checkout.
    src = d / "src"
    shutil.copytree(
        ROOT,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache"
        ),
    )
    env = clean_env()
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(d / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    wheel = next((d / "dist").glob("onecard-*.whl"))
    env_dir = d / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(env_dir / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    # The dependencies come from the test venv (a path line, so its editable checkout of onecard is not loaded).
    new_site = next((env_dir / "lib").glob("python3*/site-packages"))
    (new_site / "deps-from-test-venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return env_dir


def clean_env():
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def run(venv, *args, cwd):
    return subprocess.run(
        [str(venv / "bin" / "onecard"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(),
        timeout=120,
    )


def test_installed_wheel_has_version_template_and_units(venv, tmp_path):
    r = run(venv, "--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "onecard 0.1.0", r.stdout + r.stderr
    r = run(venv, "terminal", "files", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    files = dict(line.split("\t") for line in r.stdout.splitlines())
    assert set(files) >= {
        "firmware.toml",
        "onecard-terminal.service",
        "onecard-sync.service",
        "onecard.sysusers.conf",
        "onecard.tmpfiles.conf",
        "50-onecard-pcscd.rules",
    }
    for name, path in files.items():
        assert str(venv) in path, (name, path)  # from the installed package, not from this checkout
        assert (
            Path(path).read_bytes()
            == (ROOT / ("firmware.toml" if name == "firmware.toml" else f"deploy/systemd/{name}")).read_bytes()
        )


def test_provision_from_the_wheel_without_a_checkout(venv, tmp_path):
    (tmp_path / "pass").write_text("right\n")
    save_keystore(tmp_path / "door.ks", make_keystore(), KeystoreUnlock.from_passphrase("right"), scrypt_n=2**10)
    key = Ed25519PrivateKey.generate().public_key()
    (tmp_path / "platform.pub").write_bytes(
        key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    r = run(venv, "platform", "ca", "init", "--dir", tmp_path / "ca", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run(
        venv,
        "terminal",
        "provision",
        "--id",
        "000000000042",
        "--kind",
        "door",
        "--enterprise",
        "00010001",
        "--name",
        "Gate 2",
        "--door-group",
        "2",
        "--reader",
        "ACR1252",
        "--keystore",
        tmp_path / "door.ks",
        "--passphrase-file",
        tmp_path / "pass",
        "--broker-host",
        "mqtt.example.com",
        "--broker-ca",
        tmp_path / "ca" / "ca.pem",
        "--platform-public-key",
        tmp_path / "platform.pub",
        "--ca-dir",
        tmp_path / "ca",
        "--etc-dir",
        tmp_path / "etc",
        "--data-dir",
        tmp_path / "data",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    config = (tmp_path / "etc" / "firmware.toml").read_text()
    assert 'id = "000000000042"' in config and "[door]" in config and "held_open_seconds" in config
    r = run(venv, "terminal", "check-config", "--config", tmp_path / "etc" / "firmware.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
