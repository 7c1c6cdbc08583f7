#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: system packages, virtualenv, pinned Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
need_apt=()
# libcap-dev: python-prctl builds against it. libseccomp2: pyseccomp loads it. iproute2: ip(8) for
# diagnostics. openssl: the digest benchmark compares against `openssl dgst`. nftables: the
# sandbox's `restricted` network mode filters inside each plugin's network namespace with nft(8).
# The suite runs shellcheck on the host lane's shell scripts (tests/ops/test_host_lane.py).
for pkg in libcap-dev libseccomp2 iproute2 openssl gcc nftables shellcheck; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "setup: installing Debian packages: ${need_apt[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "setup: missing Debian packages (${need_apt[*]}); run as root or install them" >&2
        exit 1
    fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PY" -m venv .venv
fi
# Keyed on what pip installs from pyproject.toml, not on tool settings (scripts/install_key.py).
stamp=.venv/.installed-$(.venv/bin/python scripts/install_key.py)
if [ ! -f "$stamp" ]; then
    echo "setup: installing Python packages (pinned in pyproject.toml)"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e '.[dev]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
