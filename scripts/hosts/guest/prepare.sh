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
systemctl start docker || fail "dockerd did not start"
docker import /mnt/host/container-base.tar plugind-lane/bookworm-python:12 || fail "docker import failed"
docker build -q --build-arg BASE_IMAGE=plugind-lane/bookworm-python:12 -t plugind:lane "$src" \
    || fail "docker build failed"
systemctl stop docker docker.socket
printf '{"ok": true, "detail": "prepared"}\n' >"$out/prepare.json"
