#!/usr/bin/env bash
# The host lane inside the guest: unpack the checkout, describe the guest, run each lane named in
# /mnt/host/lanes and record its output. plugind-lane.service runs this once the guest is up and
# powers the guest off afterwards. Each lane writes its own OUT/LANE.json.
set -uo pipefail
share=/mnt/host
out=$share/out
src=/root/plugind
mkdir -p "$out"
say() { printf '%s %s\n' "$(date +%s)" "$*" >>"$out/progress.log"; }

say "guest up after $(cut -d' ' -f1 /proc/uptime) s: $(uname -r), $(stat -fc %T /sys/fs/cgroup)"
# The checkout replaces the last one; the prepared project virtualenv (.venv) stays.
mkdir -p "$src"
find "$src" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
tar -C "$src" -xf "$share/src.tar"

python3 - "$out/guest.json" <<'PY'
import json, os, platform, subprocess, sys
osr = dict(line.split("=", 1) for line in open("/etc/os-release").read().splitlines() if "=" in line)
fs = subprocess.run(["stat", "-fc", "%T", "/sys/fs/cgroup"], capture_output=True, text=True).stdout.strip()
cgroup = "v2" if fs == "cgroup2fs" else ("hybrid" if os.path.isdir("/sys/fs/cgroup/unified") else "v1")
systemd = subprocess.run(["systemctl", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
info = {"os": osr.get("PRETTY_NAME", "").strip('"'), "kernel": platform.release(), "cgroup": cgroup,
        "systemd": systemd, "python": platform.python_version(), "cpus": os.cpu_count(),
        "controllers": open("/sys/fs/cgroup/cgroup.controllers").read().split() if cgroup == "v2" else []}
json.dump(info, open(sys.argv[1], "w"), indent=2)
PY

read -r -a lanes <"$share/lanes"
for lane in "${lanes[@]}"; do
    say "lane $lane: start"
    start=$(date +%s)
    if [ "$lane" = prepare ]; then
        bash "$src/scripts/hosts/guest/prepare.sh" "$out" >"$out/$lane.log" 2>&1
    else
        # Each lane is bounded; a lane that hangs fails, and the next one still runs.
        timeout --signal=KILL 2400 python3 "$src/scripts/hosts/guest/lanes.py" "$lane" "$out" \
            >"$out/$lane.log" 2>&1
    fi
    rc=$?
    say "lane $lane: exit $rc after $(($(date +%s) - start)) s"
done
journalctl -b --no-pager >"$out/journal.log" 2>&1
say "guest done"
sync
