"""A private pcscd with vpcd readers on free TCP ports, isolated from the system pcscd (tests, bench, demo).

pcscd 1.9 ignores PCSCLITE_CSOCK_NAME (only the client library reads it), so it runs in its own mount
namespace where /run/pcscd is a directory of ours; clients reach it through PCSCLITE_CSOCK_NAME.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
# Debian's vsmartcard-vpcd is built with VPCDSLOTS=2: one reader.conf entry opens readers on PORT and PORT+1.
SLOTS_PER_ENTRY = 2
MAX_READERS = 16  # PCSCLITE_MAX_READERS_CONTEXTS
ENTRY_PREFIX = "onecard-vpcd-"
SOCKET_ENV = "PCSCLITE_CSOCK_NAME"

# Runs as root inside the new mount namespace: a fresh /run hides the system pcscd's socket and pid file
# (and needs no /run/pcscd on the host); our run dir then becomes /run/pcscd, where pcscd 1.9 insists on living.
# The socket is ours, handed over systemd-style on fd 3: it exists and queues clients before pcscd starts, since
# pcscd 1.9 logs "daemon ready" before it creates its own socket.
_NAMESPACE_SCRIPT = (
    "mount -t tmpfs -o mode=0755 onecard-run /run && mkdir /run/pcscd && "
    'mount --bind "$0" /run/pcscd && LISTEN_PID=$$ LISTEN_FDS=1 '
    'exec "$1" --foreground --info --config "$2"'
)
# Where no mount namespace is allowed (e.g. a container without CAP_SYS_ADMIN): pcscd shares the host's
# /run/pcscd for its pid file only, which is safe while no system pcscd lives there.
_SHARED_RUN_SCRIPT = 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$1" --foreground --info --config "$2"'
SYSTEM_SOCKET = Path("/run/pcscd/pcscd.comm")
_namespace_ok: bool | None = None


class PcscdError(RuntimeError):
    """The private pcscd could not be started; the message names the fix."""


@dataclass(frozen=True)
class VpcdSlot:
    name: str  # PC/SC reader name, e.g. "onecard-vpcd-0 00 01"
    port: int  # TCP port where vpcd waits for the virtual card of this reader


@dataclass
class PrivatePcscd:
    workdir: Path
    socket_path: Path
    log_path: Path
    pid: int
    slots: list[VpcdSlot] = field(default_factory=list)
    _proc: _Pcscd | None = field(default=None, repr=False)
    _start_again: object | None = field(default=None, repr=False)

    def kill(self) -> None:
        """SIGKILL pcscd, as a crash would: clients see SCARD_E_NO_SERVICE, vpcd's virtual cards are cut off."""
        if self._proc is not None:
            self._proc.popen.kill()
            self._proc.popen.wait()
            self._proc.drain.join(5)

    def restart(self, n_readers: int | None = None) -> None:
        """Start pcscd again (after kill(), or stopping it now) on the same socket and vpcd ports.

        With n_readers lower than at first, the readers after it are left out: to the PC/SC clients they were
        unplugged (vpcd readers cannot be hot-plugged); a later restart() brings them back.
        """
        if self._proc is not None:
            _stop(self._proc)
        self._proc, self.pid = self._start_again(n_readers or len(self.slots))

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.slots]

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def find_pcscd() -> str:
    found = shutil.which("pcscd") or shutil.which("pcscd", path="/usr/sbin:/sbin")
    if not found:
        raise PcscdError("pcscd is not installed; install it: apt-get install pcscd (or run deploy/setup-debian.sh)")
    return found


def check_installed() -> str:
    """Return the pcscd path, or raise PcscdError naming the missing package."""
    pcscd = find_pcscd()
    if not VPCD_DRIVER.exists():
        raise PcscdError(
            f"vpcd driver {VPCD_DRIVER} is missing; install it: apt-get install vsmartcard-vpcd "
            "(or run deploy/setup-debian.sh)"
        )
    if not shutil.which("unshare"):
        raise PcscdError(
            "unshare is missing (needed to isolate the private pcscd); install it: apt-get install util-linux"
        )
    return pcscd


@contextlib.contextmanager
def private_pcscd(
    n_readers: int = 4, workdir: str | os.PathLike | None = None, start_timeout: float = 10.0
) -> Iterator[PrivatePcscd]:
    """Run pcscd with `n_readers` vpcd readers until the block exits (SIGTERM, then SIGKILL after 5 s).

    Sets os.environ["PCSCLITE_CSOCK_NAME"] to its socket. pcsc-lite's client library reads that variable once
    per process, on the first SCardEstablishContext, so start this before anything in the process talks PC/SC.
    pcscd is tied to the calling thread (PR_SET_PDEATHSIG): if that thread dies, pcscd gets SIGTERM.
    """
    if not 1 <= n_readers <= MAX_READERS:
        raise ValueError(f"n_readers must be 1..{MAX_READERS} (pcscd's reader limit), got {n_readers}")
    pcscd = check_installed()
    own_dir = workdir is None
    base = Path(tempfile.mkdtemp(prefix="onecard-pcscd-")) if own_dir else Path(workdir)
    previous_env = os.environ.get(SOCKET_ENV)
    try:
        last_error: PcscdError | None = None
        for _attempt in range(3):
            try:
                proc, env = _start(pcscd, n_readers, base, start_timeout)
            except _PortRace as exc:
                # Another process grabbed one of the free ports between our check and pcscd's bind: pick again.
                last_error = PcscdError(str(exc))
                continue
            try:
                yield env
            finally:
                _stop(env._proc)
            return
        assert last_error is not None
        raise last_error
    finally:
        if previous_env is None:
            os.environ.pop(SOCKET_ENV, None)
        else:
            os.environ[SOCKET_ENV] = previous_env
        if own_dir:
            shutil.rmtree(base, ignore_errors=True)


class _PortRace(Exception):
    pass


class _Pcscd:
    def __init__(self, popen: subprocess.Popen, drain: threading.Thread):
        self.popen = popen
        self.drain = drain


def _start(
    pcscd: str, n_readers: int, base: Path, start_timeout: float, first_port: int | None = None
) -> tuple[_Pcscd, PrivatePcscd]:
    run_dir, conf_dir, log_path = base / "run", base / "reader.conf.d", base / "pcscd.log"
    run_dir.mkdir(parents=True, exist_ok=True)
    conf_dir.mkdir(parents=True, exist_ok=True)
    socket_path = run_dir / "pcscd.comm"
    if len(os.fsencode(socket_path)) >= 108:
        raise PcscdError(f"socket path {socket_path} is too long for a unix socket; use a shorter workdir")
    for stale in ("pcscd.comm", "pcscd.pid"):
        (run_dir / stale).unlink(missing_ok=True)
    for old in conf_dir.iterdir():
        old.unlink()

    n_entries = -(-n_readers // SLOTS_PER_ENTRY)
    drivers = _driver_copies(base / "drivers", n_entries)
    if first_port is None:
        first_port = _free_port_block(n_entries * SLOTS_PER_ENTRY)
    entries, slots = [], []
    for i in range(n_entries):
        port = first_port + i * SLOTS_PER_ENTRY
        entries.append(
            f'FRIENDLYNAME "{ENTRY_PREFIX}{i}"\nDEVICENAME /dev/null:{port}\nLIBPATH {drivers[i]}\nCHANNELID {port}\n'
        )
        slots += [VpcdSlot(f"{ENTRY_PREFIX}{i} 00 {s:02d}", port + s) for s in range(SLOTS_PER_ENTRY)]
    # One file keeps the entries in order; pcscd reads a directory in readdir order.
    (conf_dir / "onecard-vpcd.conf").write_text("\n".join(entries))

    if _can_isolate():
        cmd = _unshare() + ["--", "/bin/sh", "-c", _NAMESPACE_SCRIPT, str(run_dir), pcscd, str(conf_dir)]
    elif not SYSTEM_SOCKET.exists():
        cmd = ["/bin/sh", "-c", _SHARED_RUN_SCRIPT, str(run_dir), pcscd, str(conf_dir)]
    else:
        raise PcscdError(
            f"cannot isolate a private pcscd here (no mount namespace allowed) while the system pcscd "
            f"uses {SYSTEM_SOCKET}; run as root with CAP_SYS_ADMIN, or stop it: "
            "systemctl stop pcscd.socket pcscd"
        )
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(socket_path))
        os.chmod(socket_path, 0o666)  # as pcscd does: any local user may be a PC/SC client
        listener.listen(64)
        ready = threading.Event()
        log_file = open(log_path, "ab")
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            close_fds=False,
            preexec_fn=lambda: _prepare_child(listener.fileno()),
        )
    finally:
        listener.close()
    drain = threading.Thread(target=_drain, args=(popen.stdout, log_file, ready), name="pcscd-log", daemon=True)
    drain.start()
    proc = _Pcscd(popen, drain)
    env = PrivatePcscd(workdir=base, socket_path=socket_path, log_path=log_path, pid=popen.pid, slots=slots[:n_readers])
    try:
        if not ready.wait(start_timeout):
            raise PcscdError(
                f"pcscd did not report ready within {start_timeout:.0f} s; see {log_path}:\n{env.log_tail()}"
            )
        if popen.poll() is not None:
            raise PcscdError(
                f"pcscd exited with status {popen.returncode} at start ({_hint(env.log_tail())}); "
                f"see {log_path}:\n{env.log_tail()}"
            )
        os.environ[SOCKET_ENV] = str(socket_path)
        listed = _list_readers(socket_path)
        missing = [s for s in env.slots if s.name not in listed]
        if missing:
            log = env.log_tail()
            if "Could not initialize connection" in log or "Address already in use" in log:
                raise _PortRace(f"pcscd could not listen on vpcd ports {[s.port for s in missing]}")
            raise PcscdError(
                f"pcscd started but lists {listed}, not {[s.name for s in missing]}; the vpcd driver "
                f"may not have {SLOTS_PER_ENTRY} slots per reader; see {log_path}:\n{log}"
            )
    except BaseException:
        _stop(proc)
        raise
    env._proc = proc

    def start_again(count: int) -> tuple[_Pcscd, int]:
        again, again_env = _start(pcscd, count, base, start_timeout, first_port)
        return again, again_env.pid

    env._start_again = start_again
    return proc, env


def _driver_copies(directory: Path, count: int) -> list[Path]:
    # The vpcd driver keeps its slots in a global array indexed by slot number only, so a second reader.conf
    # entry sharing the loaded library overwrites the first entry's sockets. A copy per entry (new inode, so
    # dlopen loads a separate instance) gives each entry its own globals.
    directory.mkdir(exist_ok=True)
    copies = []
    for i in range(count):
        copy = directory / f"libifdvpcd-{i}.so"
        if not copy.exists() or copy.stat().st_size != VPCD_DRIVER.stat().st_size:
            shutil.copyfile(VPCD_DRIVER, copy)
        copies.append(copy)
    return copies


def _unshare() -> list[str]:
    cmd = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        cmd.append("--map-root-user")  # a user namespace makes us root enough to mount, on our own mounts only
    return cmd


def _can_isolate() -> bool:
    global _namespace_ok
    if _namespace_ok is None:
        probe = subprocess.run(
            _unshare() + ["--", "/bin/sh", "-c", "mount -t tmpfs onecard-probe /run"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
        )
        _namespace_ok = probe.returncode == 0
    return _namespace_ok


def _hint(log: str) -> str:
    if "cannot create /run/pcscd" in log:
        return "it cannot create /run/pcscd: run as root"
    return "see the log"


def _list_readers(socket_path: Path) -> list[str]:
    from smartcard import scard

    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hr != scard.SCARD_S_SUCCESS:
        raise PcscdError(
            f"this process cannot reach the private pcscd at {socket_path} ({scard.SCardGetErrorMessage(hr).strip()}); "
            f"pcsc-lite reads {SOCKET_ENV} once per process, so start private_pcscd before any other PC/SC use"
        )
    try:
        hr, readers = scard.SCardListReaders(ctx, [])
        return list(readers) if hr == scard.SCARD_S_SUCCESS else []
    finally:
        scard.SCardReleaseContext(ctx)


def _free_port_block(count: int) -> int:
    # vpcd binds INADDR_ANY, so check the same way; a block of consecutive ports because each
    # reader.conf entry takes PORT..PORT+SLOTS-1.
    for _ in range(200):
        first = random.randrange(20000, 60000 - count)
        held = []
        try:
            for port in range(first, first + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(s)
                s.bind(("0.0.0.0", port))
            return first
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise PcscdError(f"found no {count} consecutive free TCP ports in 20000-60000; free some ports and retry")


def _drain(pipe, log_file, ready: threading.Event) -> None:
    # pcscd logs for its whole life; the pipe must be read or pcscd would block once it fills.
    with pipe, log_file:
        for line in pipe:
            log_file.write(line)
            log_file.flush()
            if b"daemon ready" in line:
                ready.set()
    ready.set()


def _prepare_child(listener_fd: int) -> None:
    # Between fork and exec. Python opens every fd close-on-exec, so with close_fds=False only stdio and
    # fd 3, the listening socket where sd_listen_fds() looks for it, reach pcscd.
    if listener_fd == 3:
        os.set_inheritable(3, True)
    else:
        os.dup2(listener_fd, 3)
    # pcscd must not outlive the thread that started it, even if that thread is killed.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop(proc: _Pcscd, timeout: float = 5.0) -> None:
    popen = proc.popen
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
    proc.drain.join(timeout)
