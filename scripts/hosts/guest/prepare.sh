#!/usr/bin/env bash
# Prepares the cached guest once per recipe: the project's development virtualenv (`make setup`),
# pip's cache for the documented `pip install`, Docker's base image (imported from a debootstrapped
# bookworm root, since no image registry is reachable) and the Dockerfile's build cache.
# Writes OUT/prepare.json: {"ok", "detail"}.
set -uo pipefail
out=${1:?usage: prepare.sh OUTDIR}
src=/root/plugind
fail() {
    printf '{"ok": false, "detail": "%s"}\n' "$1" >"$out/prepare.json"
    exit 1
}
set -x
make -C "$src" setup || fail "make setup failed"
python3 -m venv /tmp/warm || fail "python3 -m venv failed"
/tmp/warm/bin/pip install -q "$src" || fail "pip install of the checkout failed"
rm -rf /tmp/warm
# Debian 12 installs AppArmor by default, and Docker then wants its parser for the default profile.
dpkg-query -W -f='${Status}' apparmor 2>/dev/null | grep -q "install ok installed" \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends apparmor; } \
    || fail "apt-get install apparmor failed"
systemctl restart apparmor || fail "apparmor did not start"
systemctl restart docker || fail "dockerd did not start"
docker image inspect plugind-lane/bookworm-python:12 >/dev/null 2>&1 \
    || docker import /mnt/host/container-base.tar plugind-lane/bookworm-python:12 \
    || fail "docker import failed"
docker build -q --build-arg BASE_IMAGE=plugind-lane/bookworm-python:12 -t plugind:lane "$src" \
    || fail "docker build failed"
systemctl stop docker docker.socket
printf '{"ok": true, "detail": "prepared"}\n' >"$out/prepare.json"
