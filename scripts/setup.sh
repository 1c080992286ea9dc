#!/usr/bin/env bash
# Installs everything ElkFS needs on a Debian 12 machine: Debian packages (through sudo
# when not root) and a .venv with the pinned Python dependencies and ElkFS itself (editable).
# Safe to run twice: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium and a font: the web interface's browser tests (Playwright drives Debian's chromium;
# never `playwright install`, which would download a browser of its own)
APT_PACKAGES="fuse3 libfuse3-dev pkg-config dnsmasq-base gcc python3-dev python3-venv iptables chromium fonts-dejavu-core acl"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=""
for p in $APT_PACKAGES; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:$missing"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q $missing
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PY" -m venv .venv
fi
stamp=.venv/.elkfs-installed
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing Python dependencies into .venv"
    .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/pip install -q -r requirements.txt
    log=$(mktemp)
    .venv/bin/pip install -q --no-deps --no-build-isolation -e . >"$log" 2>&1 \
        || { cat "$log"; rm -f "$log"; exit 1; }
    rm -f "$log"
    touch "$stamp"
fi
