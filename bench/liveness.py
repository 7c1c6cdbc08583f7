"""Benchmark: how long the real daemon takes to find a SIGSTOPped plugin while a long call waits on it.

    .venv/bin/python bench/liveness.py [--rounds 5] [--interval 2.0] [--timeout 6.0] [--deadline 45]

Starts `plugind serve` (the integration tests' workspace: a real signed and trusted bundle) with
`[supervisor] heartbeat_interval_secs` / `heartbeat_timeout_secs` as given (the shipped defaults by
default), then per round: a call with `timeout_s` = `--deadline` enters a handler that sleeps, the
plugin's process is SIGSTOPped, and the time until that call is answered (crashed: the plugin was
found hung and killed) is the detection time. It is printed next to the heartbeat timeout and to
interval + timeout (the bound: the stop may land just after a pong) as ratios, and next to the
call's deadline, which bounded it before (a call inside its deadline excused any silence). The
plugin is restarted by the supervisor between rounds.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # cgroup_host, which the integration conftest imports
sys.path.insert(0, str(REPO / "tests" / "integration"))  # first: its conftest, not the tests' own

import httpx  # noqa: E402
from conftest import RunningDaemon, reap, start  # noqa: E402
from kit import Workspace, plugin_source  # noqa: E402

SLOW = "logging.getLogger('p').info('in flight %d', os.getpid())\ntime.sleep(data)\nreturn data"


def wait_until(predicate: Callable[[], object], limit: float, what: str) -> None:
    end = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > end:
            raise SystemExit(f"gave up after {limit:g}s waiting for {what}")
        time.sleep(0.005)


def one_round(d: RunningDaemon, deadline: float) -> float:
    """Seconds from SIGSTOP to the answer of the call in flight."""
    pid = d.plugin("sleepy")["pid"]
    marker = f"in flight {pid}"
    answered: list[float] = []
    replies: list[httpx.Response] = []

    def call() -> None:
        body = {"data": deadline + 30, "timeout_s": deadline}
        replies.append(d.api("POST", "/api/hooks/slow/execute", body))
        answered.append(time.monotonic())

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(lambda: marker in d.log(), 30, "the call to be in flight")
    stopped = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    caller.join(deadline + 10)
    outcome = replies[0].json()["results"][0]["outcome"]
    if outcome != "crashed":
        raise SystemExit(f"the call ended {outcome!r}, not 'crashed'")

    def restarted() -> bool:
        info = d.plugin("sleepy")
        return bool(info["state"] == "running" and info["pid"] != pid)

    wait_until(restarted, 60, "the restarted plugin")
    return answered[0] - stopped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--interval", type=float, default=2.0, help="heartbeat_interval_secs")
    ap.add_argument("--timeout", type=float, default=6.0, help="heartbeat_timeout_secs")
    ap.add_argument("--deadline", type=float, default=45.0, help="the long call's timeout_s")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="plugind-bench-liveness-") as tmp:
        ws = Workspace(Path(tmp))
        ws.extra_config = (
            f"[supervisor]\nheartbeat_interval_secs = {args.interval}\n"
            f"heartbeat_timeout_secs = {args.timeout}\nbackoff_initial_secs = 0.05\n"
            f"max_restarts = {args.rounds + 5}\nrestart_window_secs = 3600\n"
        )
        ws.add(plugin_source("sleepy", {"slow": (0, SLOW)}, header="import logging"))
        daemon = start(ws)
        try:
            times = [one_round(daemon, args.deadline) for _ in range(args.rounds)]
        finally:
            reap(daemon)
    bound = args.interval + args.timeout
    med = statistics.median(times)
    print(f"heartbeat interval {args.interval:g}s, timeout {args.timeout:g}s; "
          f"long call's deadline {args.deadline:g}s; {args.rounds} rounds")
    print(f"detection of a SIGSTOPped plugin with a call in flight: min {min(times):.2f}s, "
          f"median {med:.2f}s, max {max(times):.2f}s")
    print(f"  median / heartbeat timeout        = {med / args.timeout:.2f}")
    print(f"  max / (interval + timeout)        = {max(times) / bound:.2f}  (<= 1 expected)")
    print(f"  median / call deadline (old bound) = {med / args.deadline:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
