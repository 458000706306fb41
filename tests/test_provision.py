"""`onecard terminal provision` and `onecard platform ca`: enrolment end to end against real pcscd, a PSAM and the
keystore, the platform CA and mosquitto/TLS; re-running is safe; the SAM binding holds."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from central.ca import CaError, PlatformCa
from onecard.wiring import Wiring
from simulator.psam import load_psam, psam_from_keystore, write_psam
from terminal import provision as pv
from terminal import selftest as st
from tests.support import make_card, make_keystore
from tests.test_selftest import TID, adapters, by_name, keys, role_keystore  # noqa: F401  (keys is a fixture)

ROOT = Path(__file__).resolve().parent.parent
CARD_SLOT, PSAM_SLOT = 0, 3


def onecard(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "onecard", "--log-level", "WARNING", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def request(tmp: Path, keys_dir: Path, pki, reader: str, **over) -> pv.Request:
    fields = dict(
        terminal_id=TID,
        kind="door",
        enterprise_id="00010001",
        etc_dir=tmp / "etc",
        data_dir=tmp / "data",
        broker_host="127.0.0.1",
        broker_port=over.pop("port", 1),
        broker_ca=pki.ca.cert,
        platform_public_key=pki.platform_public,
        name="Gate 2",
        reader=reader,
        keystore=keys_dir / "door.ks",
        passphrase_file=keys_dir / "pass",
        door_group=2,
    )
    fields.update(over)
    return pv.Request(**fields)


def provision(req: pv.Request) -> tuple[int, list[str]]:
    lines: list[str] = []
    return pv.Provisioner(req, say=lines.append, lab_ca=Wiring().lab_ca_signer).run(), lines


def test_lab_provisioning_end_to_end(tmp_path, keys, pcscd, vicc, broker):
    """One step with the CA directory: config passes check-config, the certificate connects, self-test all PASS."""
    keys_dir, issuing = keys
    req = request(tmp_path, keys_dir, broker.pki, pcscd.slots[CARD_SLOT].name, port=broker.port, ca_dir=broker.pki.dir)
    code, lines = provision(req)
    assert code == 0, lines
    assert [line.split("]")[0] + "]" for line in lines[:7]] == [f"[{i}/7]" for i in range(1, 8)]
    etc = tmp_path / "etc"
    assert stat.S_IMODE((etc / pv.KEY_NAME).stat().st_mode) == 0o600
    assert not any("PRIVATE KEY" in line for line in lines)

    r = onecard("terminal", "check-config", "--config", etc / "firmware.toml")
    assert r.returncode == 0, r.stderr
    assert f"terminal {TID} (door) 'Gate 2'" in r.stdout and "door group 2" in r.stdout
    config = st.load_config(etc / "firmware.toml")
    assert config.sync.cert_file == etc / pv.CERT_NAME and config.terminal.database == tmp_path / "data" / "events.db"

    vicc(CARD_SLOT).insert(make_card(issuing))
    results = by_name(st.run_selftest(etc / "firmware.toml", adapters(), tap_timeout=5))
    assert results["broker"].status == st.PASS, results["broker"]
    assert "the bound SAM" in results["sam"].found
    assert all(r.status == st.PASS for name, r in results.items() if name != "clock"), results

    # Idempotent: the same command again keeps everything, byte for byte.
    before = {p.name: p.read_bytes() for p in etc.iterdir()}
    code, again = provision(
        request(tmp_path, keys_dir, broker.pki, pcscd.slots[CARD_SLOT].name, port=broker.port, ca_dir=broker.pki.dir)
    )
    assert code == 0 and any("kept the existing key" in line for line in again)
    assert {p.name: p.read_bytes() for p in etc.iterdir()} == before

    # Other settings are refused without --force, and nothing changes.
    with pytest.raises(pv.ProvisionError, match=r"firmware.toml exists with other settings; .*pass --force"):
        provision(
            request(
                tmp_path,
                keys_dir,
                broker.pki,
                pcscd.slots[CARD_SLOT].name,
                port=broker.port,
                ca_dir=broker.pki.dir,
                name="Gate 3",
            )
        )
    assert {p.name: p.read_bytes() for p in etc.iterdir()} == before


def test_offline_csr_signed_by_the_platform_operator(tmp_path, keys, sync_pki):
    """provision writes the CSR and pauses (exit 3); the operator signs it; provision --cert finishes."""
    keys_dir, _ = keys
    ca_dir = tmp_path / "platform-ca"
    r = onecard("platform", "ca", "init", "--dir", ca_dir)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600
    common = [
        "terminal",
        "provision",
        "--id",
        TID,
        "--kind",
        "door",
        "--enterprise",
        "00010001",
        "--reader",
        "Virtual PCD 00 00",
        "--keystore",
        keys_dir / "door.ks",
        "--passphrase-file",
        keys_dir / "pass",
        "--broker-host",
        "mqtt.example",
        "--broker-ca",
        ca_dir / "ca.pem",
        "--platform-public-key",
        sync_pki.platform_public,
        "--etc-dir",
        tmp_path / "etc",
        "--data-dir",
        tmp_path / "data",
    ]
    r = onecard(*common)
    assert r.returncode == pv.EXIT_AWAITING_CERTIFICATE, r.stderr
    assert "onecard platform ca sign" in r.stdout and not (tmp_path / "etc" / "firmware.toml").exists()
    csr = tmp_path / "etc" / pv.CSR_NAME
    r = onecard("platform", "ca", "sign", "--dir", ca_dir, "--csr", csr, "--out", tmp_path / f"{TID}.pem")
    assert r.returncode == 0, r.stderr
    assert (ca_dir / "issued.jsonl").read_text().count(f'"cn": "{TID}"') == 1
    r = onecard(*common, "--cert", tmp_path / f"{TID}.pem")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[7/7] config: wrote" in r.stdout
    assert onecard("terminal", "check-config", "--config", tmp_path / "etc" / "firmware.toml").returncode == 0
    # A certificate for another key (another terminal's CSR) is refused in one line.
    other_ca = PlatformCa.load(ca_dir)
    r = onecard(*common, "--cert", sync_pki.client(TID).cert)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "does not fit this terminal: it is for another key" in r.stderr
    from cryptography import x509

    assert other_ca.issued_by_me(x509.load_pem_x509_certificate((tmp_path / "etc" / pv.CERT_NAME).read_bytes()))


def test_psam_binding_and_a_swapped_psam(tmp_path, keys, pcscd, vicc, sync_pki):
    """Provision with the PSAM in the second slot; a PSAM made from other keys is refused by selftest and run."""
    keys_dir, _ = keys
    bound, other = tmp_path / "bound-psam.json", tmp_path / "other-psam.json"
    write_psam(bound, psam_from_keystore(role_keystore(make_keystore(), "door"), label="gate 2"))
    write_psam(other, psam_from_keystore(role_keystore(make_keystore(), "door"), label="spare"))
    slot = vicc(PSAM_SLOT)
    slot.insert(load_psam(bound))
    time.sleep(0.6)  # pcscd notices a new card within its 400 ms poll
    req = request(
        tmp_path,
        keys_dir,
        sync_pki,
        pcscd.slots[CARD_SLOT].name,
        sam_backend="psam",
        sam_reader=pcscd.slots[PSAM_SLOT].name,
        ca_dir=sync_pki.dir,
    )
    code, lines = provision(req)
    assert code == 0, lines
    assert any("sam: bound psam" in line for line in lines)
    config_path = tmp_path / "etc" / "firmware.toml"
    text = config_path.read_text()
    assert 'backend = "psam"' in text and "\n# keystore = " in text and "\n# passphrase_file = " in text
    config = st.load_config(config_path)
    assert st.check_sam(config, adapters().open_sam, st.dt.datetime.now(st.dt.timezone.utc)).status == st.PASS

    slot.remove()
    time.sleep(0.6)
    slot.insert(load_psam(other))
    time.sleep(0.6)
    result = st.check_sam(config, adapters().open_sam, st.dt.datetime.now(st.dt.timezone.utc))
    assert result.failed and "is not the SAM bound to this terminal" in result.found, result
    r = onecard("terminal", "run", "--config", config_path)
    assert r.returncode == 2 and "not the one terminal 000000000042 was installed with" in r.stderr, r.stderr
    # Re-binding is explicit, and then the swapped PSAM is the terminal's SAM.
    r = onecard("terminal", "provision", "--rebind-sam", "--config", config_path)
    assert r.returncode == 0 and "[1/1] sam: bound psam" in r.stdout, r.stderr
    assert st.check_sam(config, adapters().open_sam, st.dt.datetime.now(st.dt.timezone.utc)).status == st.PASS


def test_refuses_a_sam_without_the_keys_of_the_kind(tmp_path, keys, sync_pki):
    keys_dir, _ = keys
    req = request(
        tmp_path,
        keys_dir,
        sync_pki,
        "Virtual PCD 00 00",
        kind="topup",
        keystore=keys_dir / "pos.ks",
        ca_dir=sync_pki.dir,
    )
    with pytest.raises(pv.ProvisionError, match=r"lacks the topup keys .*load \(mac,verify\).*--role top-up"):
        provision(req)
    assert not (tmp_path / "etc" / "firmware.toml").exists()
    assert not pv.binding_path(tmp_path / "etc" / "firmware.toml").exists()


def test_existing_key_is_never_replaced_without_force(tmp_path, keys, sync_pki):
    keys_dir, _ = keys
    code, _ = provision(request(tmp_path, keys_dir, sync_pki, "Virtual PCD 00 00", ca_dir=sync_pki.dir))
    assert code == 0
    key, cert = (tmp_path / "etc" / pv.KEY_NAME).read_bytes(), (tmp_path / "etc" / pv.CERT_NAME).read_bytes()
    # Another CA's certificate offered for this key: refused, the installed one stays.
    rogue = PlatformCa.init(tmp_path / "rogue")
    rogue_cert = tmp_path / "rogue.pem"
    from cryptography.hazmat.primitives import serialization

    rogue_cert.write_bytes(
        rogue.sign_csr((tmp_path / "etc" / pv.CSR_NAME).read_bytes()).public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(pv.ProvisionError, match="was not issued by the CA in --broker-ca"):
        provision(request(tmp_path, keys_dir, sync_pki, "Virtual PCD 00 00", cert=rogue_cert))
    code, lines = provision(request(tmp_path, keys_dir, sync_pki, "Virtual PCD 00 00", ca_dir=sync_pki.dir, force=True))
    assert code == 0 and any("generated an EC P-256 key" in line for line in lines)
    assert (tmp_path / "etc" / pv.KEY_NAME).read_bytes() != key
    assert (tmp_path / "etc" / pv.CERT_NAME).read_bytes() != cert


def test_ca_refuses_requests_it_must_not_sign(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    ca = PlatformCa.init(tmp_path / "ca")
    with pytest.raises(CaError, match="a CA exists in"):
        PlatformCa.init(tmp_path / "ca")

    def csr(cn, key):
        return (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )

    p256 = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CaError, match="CN is 'mqtt.example'.*12-digit terminal ID"):
        ca.sign_csr(csr("mqtt.example", p256))
    with pytest.raises(CaError, match="not EC P-256"):
        ca.sign_csr(csr(TID, rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    with pytest.raises(CaError, match="not a PEM certificate signing request"):
        ca.sign_csr(b"garbage")
    cert = ca.sign_csr(csr(TID, p256))
    assert ca.issued_by_me(cert)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_render_config_keeps_comments_and_sets_every_value():
    template = pv.REPO_TEMPLATE.read_text()
    out = pv.render_config(
        template,
        {
            ("terminal", "id"): "000000000042",
            ("reader", "path"): "tty:AMA0:pn532",
            ("reader", "driver"): "nfc",
            ("door", "group"): 7,
        },
        {("reader", "name")},
    )
    import tomllib

    doc = tomllib.loads(out)
    assert doc["terminal"]["id"] == "000000000042" and doc["door"]["group"] == 7
    assert doc["reader"] == {"driver": "nfc", "path": "tty:AMA0:pn532", "command_timeout_ms": 500}
    assert "# 12-digit terminal number" in out and '# name = "Virtual PCD 00 00"' in out


# --------------------------------------------------------------------------------------------------
# deploy/systemd
# --------------------------------------------------------------------------------------------------

UNITS = ROOT / "deploy" / "systemd"


def read_unit(name: str):
    import configparser

    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((UNITS / name).read_text())
    return parser


@pytest.mark.parametrize(
    "name, command", [("onecard-terminal.service", "terminal run"), ("onecard-sync.service", "sync run")]
)
def test_units_restart_unprivileged_hardened_and_check_the_config_first(name, command):
    u = read_unit(name)
    s = u["Service"]
    assert s["User"] == "onecard" and "DynamicUser" not in s
    assert s["Restart"] == "on-failure" and int(s["RestartSec"]) > 0
    assert int(u["Unit"]["StartLimitBurst"]) > 0 and int(u["Unit"]["StartLimitIntervalSec"]) > 0
    assert s["ExecStartPre"].endswith("onecard terminal check-config --config /etc/onecard/firmware.toml")
    assert f"onecard {command} --config /etc/onecard/firmware.toml" in s["ExecStart"]
    assert s["ReadWritePaths"] == "/var/lib/onecard"
    for option in ("NoNewPrivileges", "PrivateTmp"):
        assert s[option] == "yes"
    assert s["ProtectSystem"] == "strict"
    if name == "onecard-terminal.service":
        assert "pcscd.socket" in u["Unit"]["Wants"] and "pcscd.socket" in u["Unit"]["After"]
        # PC/SC goes through pcscd's UNIX socket, an nfcpy reader through /dev: neither may be hidden.
        assert "AF_UNIX" in s["RestrictAddressFamilies"] and "PrivateDevices" not in s
        # Only the status page listens, and only on loopback.
        assert s["IPAddressDeny"] == "any" and s["IPAddressAllow"] == "localhost"
    else:
        assert "network-online.target" in u["Unit"]["After"] and "AF_INET" in s["RestrictAddressFamilies"]


def test_sysusers_and_tmpfiles_name_the_unit_user():
    sysusers = (UNITS / "onecard.sysusers.conf").read_text()
    assert "\nu onecard " in sysusers and "\nm onecard dialout" in sysusers
    assert all(f"\nm onecard {group}\n" in sysusers for group in ("gpio", "spi", "i2c", "input"))
    tmpfiles = (UNITS / "onecard.tmpfiles.conf").read_text()
    assert "d /var/lib/onecard 0750 onecard onecard" in tmpfiles


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_units_pass_systemd_analyze_verify(tmp_path):
    # verify insists that ExecStart's binary exists: point it at this interpreter instead of /opt/onecard.
    for unit in UNITS.glob("*.service"):
        (tmp_path / unit.name).write_text(
            unit.read_text().replace("/opt/onecard/.venv/bin/onecard", f"{sys.executable} -m onecard")
        )
    r = subprocess.run(
        ["systemd-analyze", "verify", *sorted(map(str, tmp_path.glob("*.service")))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
