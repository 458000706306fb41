#!/usr/bin/env bash
# Prepare a Debian 12 machine for onecard: system packages, then .venv in the repository with onecard[test].
# Idempotent. Run as root (or a user with sudo). Does not start the system pcscd: tests start their own.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# fonts-wqy-microhei: the display's Chinese font; chromium + chromium-driver: the status page's browser test.
# postgresql: the platform's PostgreSQL store; tests run a private server from /usr/lib/postgresql/15/bin.
# libusb-1.0-0: pyusb's backend for a USB receipt printer (python-escpos).
# rabbitmq-server: the broker cluster (tests start their own 3 nodes on loopback; the system node is disabled).
PACKAGES=(pcscd vsmartcard-vpcd libpcsclite-dev swig pcsc-tools opensc mosquitto mosquitto-clients
          python3-venv python3-dev build-essential fonts-wqy-microhei chromium chromium-driver postgresql
          libusb-1.0-0 rabbitmq-server)

say() { printf 'setup-debian: %s\n' "$*"; }
die() { printf 'setup-debian: error: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    die "installing packages needs root; run: su -c 'bash deploy/setup-debian.sh'"
fi

command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found; this script is for Debian 12 (bookworm)"

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    say "system packages already installed (${PACKAGES[*]})"
else
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
fi

# The package starts a system RabbitMQ node (rabbit@HOST, ports 5672/25672/4369) where an init system lets it. The
# tests run private nodes with their own names, ports, epmd and cookie; the system node is not needed for them and
# would only hold memory and ports, so it is stopped and disabled (an operator enables it on broker hosts).
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    if systemctl is-enabled --quiet rabbitmq-server 2>/dev/null || systemctl is-active --quiet rabbitmq-server 2>/dev/null; then
        say "stopping and disabling the system rabbitmq-server (tests start their own nodes)"
        "${SUDO[@]}" systemctl disable --now rabbitmq-server >/dev/null 2>&1 || true
    fi
elif command -v service >/dev/null 2>&1 && pgrep -u rabbitmq -f beam >/dev/null 2>&1; then
    say "stopping the system rabbitmq-server (tests start their own nodes)"
    "${SUDO[@]}" service rabbitmq-server stop >/dev/null 2>&1 || true
fi

PYTHON=""
for candidate in python3 python3.11 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        PYTHON="$(command -v "$candidate")"
        break
    fi
done
[ -n "$PYTHON" ] || die "no python3 >= 3.11 found; install python3 (Debian 12 ships 3.11)"

cd "$REPO"
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "reusing .venv ($(.venv/bin/python --version 2>&1))"
else
    [ -e .venv ] && { say "replacing broken or old .venv"; rm -rf .venv; }
    say "creating .venv with $PYTHON ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv .venv || die "'$PYTHON -m venv' failed; install python3-venv for that python"
fi

say "installing onecard[test] into .venv (editable)"
.venv/bin/python -m pip install --disable-pip-version-check -q -e '.[test]'

.venv/bin/python -c 'import smartcard.scard, cryptography' \
    || die "the venv cannot import pyscard/cryptography; see the pip output above"
say "done: run the tests with .venv/bin/python -m pytest -q tests"
