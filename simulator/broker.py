"""A private mosquitto with TLS, client certificates and the onecard ACL on 127.0.0.1, and the test PKI it uses.

For tests, benchmarks and the live demo: production brokers are configured from deploy/mosquitto/.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.broker_config import render_acl, render_conf, worker_cns
from simulator.test_pki import CertFiles, TestCa

MOSQUITTO = os.environ.get("ONECARD_MOSQUITTO", "/usr/sbin/mosquitto")
TEST_PLATFORM_WORKERS = 8  # certificates and ACL blocks for platform workers w0..w7


class BrokerError(Exception):
    """The private mosquitto cannot be started; the message says why and what to install or check."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Pki:
    dir: Path
    ca: CertFiles
    server: CertFiles
    clients: dict[str, CertFiles]
    platform_key: Ed25519PrivateKey
    platform_public: Path

    def client(self, cn: str) -> CertFiles:
        return self.clients[cn]

    @property
    def platform_cert_dir(self) -> Path:
        """platform-wN.pem / .key of every test platform worker (`onecard platform serve --cert-dir`)."""
        return self.dir


def make_pki(directory: Path, terminals: dict[str, str]) -> Pki:
    """A test CA, the broker's server certificate, a client certificate per terminal and for the platform, and
    the platform's Ed25519 signing key with its public key file."""
    ca = TestCa(directory)
    clients = {cn: ca.issue(cn) for cn in [*worker_cns(TEST_PLATFORM_WORKERS), *terminals]}
    key = Ed25519PrivateKey.generate()
    pub = directory / "platform-ed25519.pub"
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return Pki(directory, ca.files, ca.issue("127.0.0.1", server=True), clients, key, pub)


@dataclass
class Broker:
    """mosquitto -c <generated conf>; start() waits for the port, stop() sends SIGTERM and waits."""

    workdir: Path
    pki: Pki
    terminals: dict[str, str] = field(default_factory=dict)  # terminal ID -> enterprise ID, for the ACL
    stations: dict[str, str] = field(default_factory=dict)  # issuing station ID -> enterprise ID, for the ACL
    port: int = 0
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        if not (shutil.which(MOSQUITTO) or os.path.exists(MOSQUITTO)):
            raise BrokerError(
                f"mosquitto is not installed ({MOSQUITTO} not found); install it with "
                "`apt-get install mosquitto` (deploy/setup-debian.sh does) or set ONECARD_MOSQUITTO"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.acl = self.workdir / "acl"
        self.acl.write_text(render_acl(self.terminals, TEST_PLATFORM_WORKERS, stations=self.stations), encoding="utf-8")
        self.log = self.workdir / "mosquitto.log"
        self.conf = self.workdir / "mosquitto.conf"
        self.conf.write_text(
            render_conf(
                port=self.port,
                ca=self.pki.ca.cert,
                server=self.pki.server,
                acl=self.acl,
                log_file=self.log,
                user=pwd.getpwuid(os.getuid()).pw_name,
            ),
            encoding="utf-8",
        )

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
                tail = self.log.read_text(errors="replace").strip().splitlines() if self.log.exists() else []
                raise BrokerError(
                    f"mosquitto exited with status {self.proc.returncode} at start: "
                    f"{(err or tail or ['no output'])[-1]}; see {self.conf}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on 127.0.0.1:{self.port} within {timeout} s; see {self.log}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
