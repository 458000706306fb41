"""A private 3-node RabbitMQ cluster (Debian's rabbitmq-server) on 127.0.0.1, for cluster tests and the bench.

Each node has its own name, ports, data and log directories, configuration and plugins file, under one work
directory; the nodes share an Erlang cookie and a private epmd port, so nothing touches the system's node (if
any) or another engineer's cluster. start() boots the nodes, joins nodes 2..N to node 1 (join_cluster), and
imports the definitions (users, permissions, topic permissions, the uplink quorum queue) rendered from the
registry by central.broker_config. kill(i) SIGKILLs a node (a crash); stop() ends them all.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from central.broker_config import RABBITMQ_PLUGINS, render_rabbitmq_conf, render_rabbitmq_definitions
from simulator.broker import TEST_PLATFORM_WORKERS, BrokerError, Pki, free_port

RABBITMQ_BIN = Path(os.environ.get("ONECARD_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))


def _free_port_pair() -> int:
    """A port p with p free and p + 10000..p+10010 plausibly free (the CLI tools' distribution ports)."""
    for _ in range(200):
        p = free_port()
        if p < 55000:
            return p
    raise BrokerError("no free port below 55000 for the Erlang distribution")


@dataclass
class Node:
    index: int
    name: str
    dir: Path
    mqtt_port: int
    amqp_port: int
    dist_port: int
    proc: subprocess.Popen | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class RabbitCluster:
    workdir: Path
    pki: Pki
    terminals: dict[str, str] = field(default_factory=dict)
    stations: dict[str, str] = field(default_factory=dict)
    size: int = 3
    workers: int = TEST_PLATFORM_WORKERS
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (RABBITMQ_BIN / "rabbitmq-server").exists():
            raise BrokerError(
                f"RabbitMQ is not installed ({RABBITMQ_BIN}/rabbitmq-server not found); install it with "
                "`apt-get install rabbitmq-server` (deploy/setup-debian.sh does) or set ONECARD_RABBITMQ_BIN"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home = self.workdir / "home"
        self.home.mkdir(exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16), encoding="ascii")
        cookie.chmod(0o400)
        self.epmd_port = free_port()
        tag = secrets.token_hex(3)
        plugins = self.workdir / "enabled_plugins"
        plugins.write_text(f"[{','.join(RABBITMQ_PLUGINS)}].\n", encoding="ascii")
        self.plugins_file = plugins
        for i in range(self.size):
            d = self.workdir / f"node{i + 1}"
            (d / "log").mkdir(parents=True, exist_ok=True)
            node = Node(i, f"oc{tag}n{i + 1}@localhost", d, free_port(), free_port(), _free_port_pair())
            (d / "rabbitmq.conf").write_text(
                render_rabbitmq_conf(
                    mqtt_port=node.mqtt_port,
                    amqp_port=node.amqp_port,
                    ca=self.pki.ca.cert,
                    server=self.pki.server,
                    log_dir=d / "log",
                ),
                encoding="utf-8",
            )
            self.nodes.append(node)
        self.definitions = self.workdir / "definitions.json"
        self.write_definitions()

    # -- environment ---------------------------------------------------------------------------

    def _env(self, node: Node) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.home),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_CONF_ENV_FILE=str(self.workdir / "rabbitmq-env.conf"),  # not /etc/rabbitmq's
            RABBITMQ_NODENAME=node.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(node.amqp_port),
            RABBITMQ_DIST_PORT=str(node.dist_port),
            RABBITMQ_MNESIA_BASE=str(node.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(node.dir / "log"),
            RABBITMQ_CONFIG_FILE=str(node.dir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(node.dir / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.plugins_file),
            RABBITMQ_PID_FILE=str(node.dir / "pid"),
            RABBITMQ_LOGS=str(node.dir / "log" / "node.log"),
            # Inter-node and CLI traffic on loopback only. No busy-waiting schedulers (+sbwt none ...): the three
            # nodes share this machine's cores with each other and the workers, and an Erlang scheduler that spins
            # while out of work takes a core from them (docs/sizing.md says when a dedicated node keeps the default).
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
                "-kernel inet_dist_use_interface {127,0,0,1} +sbwt none +sbwtdcpu none +sbwtdio none"
            ),
        )
        return env

    def ctl(self, node: Node, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        (self.workdir / "rabbitmq-env.conf").touch()
        r = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", node.name, *args],
            env=self._env(node),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and r.returncode != 0:
            raise BrokerError(
                f"rabbitmqctl {' '.join(args)} on {node.name} failed ({r.returncode}): "
                f"{(r.stderr or r.stdout).strip()[-400:]}; see {node.dir / 'log'}"
            )
        return r.stdout

    # -- lifecycle -----------------------------------------------------------------------------

    def start_node(self, node: Node) -> None:
        (self.workdir / "rabbitmq-env.conf").touch()
        out = open(node.dir / "log" / "stdout.log", "ab")  # noqa: SIM115 (kept open for the node's life)
        node.proc = subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")],
            env=self._env(node),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()

    def wait_node(self, node: Node, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.proc is not None and node.proc.poll() is not None:
                raise BrokerError(
                    f"RabbitMQ node {node.name} exited with status {node.proc.returncode} at start; "
                    f"see {node.dir / 'log'}"
                )
            try:
                self.ctl(node, "await_startup", "--timeout", "10", timeout=30)
                return
            except BrokerError:
                time.sleep(0.5)
        raise BrokerError(f"RabbitMQ node {node.name} did not start within {timeout} s; see {node.dir / 'log'}")

    def wait_port(self, port: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise BrokerError(f"nothing listens on 127.0.0.1:{port} within {timeout} s")

    def start(self) -> RabbitCluster:
        try:
            for node in self.nodes:
                self.start_node(node)
            for node in self.nodes:
                self.wait_node(node)
            first = self.nodes[0]
            for node in self.nodes[1:]:
                self.ctl(node, "stop_app")
                self.ctl(node, "join_cluster", first.name)
                self.ctl(node, "start_app")
            self.ctl(first, "import_definitions", str(self.definitions))
            for node in self.nodes:
                self.wait_port(node.mqtt_port)
                self.wait_port(node.amqp_port)
        except BaseException:
            self.stop()
            raise
        return self

    def write_definitions(self) -> None:
        doc = render_rabbitmq_definitions(self.terminals, self.workers, self.stations)
        self.definitions.write_text(json.dumps(doc, indent=1), encoding="utf-8")

    def reload_definitions(self) -> None:
        """After a registry change: the new users and grants, imported through any live node."""
        self.write_definitions()
        self.ctl(self.live()[0], "import_definitions", str(self.definitions))

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.alive]

    def kill(self, index: int) -> None:
        """SIGKILL node `index` and its Erlang VM (a crash: no clean shutdown, no goodbye to clients)."""
        node = self.nodes[index]
        if node.proc is None:
            return
        try:
            os.killpg(node.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.proc.wait()
        node.proc = None

    def restart_node(self, index: int) -> None:
        node = self.nodes[index]
        self.start_node(node)
        self.wait_node(node)
        self.ctl(node, "await_startup")
        self.wait_port(node.mqtt_port)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is None:
                continue
            if node.proc.poll() is None:
                try:
                    os.killpg(node.proc.pid, signal.SIGTERM)
                    node.proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(node.proc.pid, signal.SIGKILL)
                    node.proc.wait()
                except ProcessLookupError:
                    pass
            node.proc = None
        # The private epmd this cluster started (ERL_EPMD_PORT): ask it to exit.
        subprocess.run(
            ["epmd", "-port", str(self.epmd_port), "-kill"],
            env={**os.environ, "ERL_EPMD_PORT": str(self.epmd_port)},
            capture_output=True,
            timeout=10,
            check=False,
        )

    # -- addresses -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """Node 1's MQTT port (what a single-broker configuration would name)."""
        return self.nodes[0].mqtt_port

    @property
    def mqtt_addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.mqtt_port) for n in self.nodes]

    @property
    def amqp_addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.amqp_port) for n in self.nodes]

    def queue_depth(self, queue: str) -> int:
        out = self.ctl(self.live()[0], "list_queues", "-q", "--no-table-headers", "name", "messages")
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return int(parts[1])
        return 0
