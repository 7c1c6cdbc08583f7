"""Resource limits held for real: OOM kill detected through the cgroup, fork bomb held at the pids
limit, a CPU spinner held at its quota (throttled by the kernel) while a well-behaved neighbour keeps
answering (its latencies printed: on a shared machine they are figures, not something to assert)."""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sandbox_harness import plan_for, started

from plugind.sandbox import cgroups
from plugind.sandbox.contain import cgroup_for, cleanup, spawn_contained

pytestmark = pytest.mark.root


def _echo_forever() -> dict[str, Any]:
    signal.pause()
    return {}


def test_memory_exhaustion_is_oom_killed_and_reported(tmp_path: Path, parent: str) -> None:
    def hog() -> dict[str, Any]:
        chunks = []
        for _ in range(64):  # up to 512 MiB, far past the 48 MiB limit
            chunks.append(b"\x01" * (8 << 20))  # really written, so really charged
        return {"survived": True}

    bystander = plan_for(tmp_path, parent, name="bystander")
    with started(bystander, _echo_forever) as other:
        plan = plan_for(tmp_path, parent, name="hog", cgroups__memory_limit_mb=48)
        with started(plan, hog) as box:
            group = cgroup_for(plan)
            assert group is not None and group.usage().memory_limit == 48 << 20
            out = box.wait(60)
        assert out.result == {}  # it never got to report
        assert out.status == -signal.SIGKILL
        assert out.oom_killed is True
        os.kill(other.pid, 0)  # the other plugin is untouched
        other_group = cgroup_for(bystander)
        assert other_group is not None and other_group.oom_kills() == 0


def test_fork_bomb_is_held_at_pids_limit(tmp_path: Path, parent: str) -> None:
    def bomb() -> dict[str, Any]:
        count = 0
        try:
            for _ in range(1000):
                if os.fork() == 0:
                    signal.pause()
                    os._exit(0)
                count += 1
        except OSError as exc:
            return {"children": count, "error": errno.errorcode[exc.errno or 0]}
        return {"children": count, "error": None}

    plan = plan_for(tmp_path, parent, name="bomb", cgroups__max_pids=16)
    with started(plan, bomb) as box:
        out = box.wait(30)
    assert out.result == {"children": 15, "error": "EAGAIN"}  # PID 1 itself is the 16th


def _pinger(sock: socket.socket) -> Any:
    def run(hooks: Any) -> Any:
        hooks.before_plugin_import()
        while data := sock.recv(64):
            sock.sendall(data)
        os._exit(0)

    return run


def _spinner(w: int) -> Any:
    def run(hooks: Any) -> Any:
        hooks.before_plugin_import()
        for _ in range(os.cpu_count() or 2):  # with itself, more spinners than this machine has cores
            if os.fork() == 0:
                while True:
                    pass
        os.write(w, b"s")
        while True:
            pass

    return run


def _latency(sock: socket.socket, rounds: int = 300) -> float:
    """Median round trip of `rounds` pings; every ping must come back (the timeout bounds a hang)."""
    sock.settimeout(HANG_S)
    samples = []
    for i in range(rounds):
        ping = bytes([i % 256])
        t = time.perf_counter()
        sock.sendall(ping)
        assert sock.recv(64) == ping
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def _throttled(group: cgroups.CgroupHandle) -> int:
    """How often the kernel has throttled `group` for its CPU quota (cpu.stat nr_throttled)."""
    return cgroups.parse_flat_keyed((group.dirs["cpu"] / "cpu.stat").read_text()).get("nr_throttled", 0)


def _wait(predicate: Callable[[], bool], what: str) -> None:
    """Return as soon as `predicate` holds; fail after HANG_S (a bound against hangs, not a figure)."""
    deadline = time.monotonic() + HANG_S
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {HANG_S} s"
        time.sleep(0.02)


# 5 % of one CPU: 5 ms per 100 ms period (the kernel's least quota is 1 ms). Any fair share of this
# machine, however loaded, is more than that, so the spinners always reach the quota and the kernel
# must throttle them; at 50 % a loaded machine may never let them reach it.
QUOTA_PERCENT = 5
HANG_S = 60.0


@pytest.mark.slow
def test_cpu_spinner_is_held_at_quota_and_neighbour_keeps_answering(tmp_path: Path, parent: str) -> None:
    ping_plan = plan_for(tmp_path, parent, name="pinger")
    spin_plan = plan_for(tmp_path, parent, name="spinner", cgroups__cpu_quota_percent=QUOTA_PERCENT)
    mine, theirs = socket.socketpair()
    pinger = spawn_contained(ping_plan, _pinger(theirs), [theirs.fileno()])
    theirs.close()
    spinner = None
    try:
        _latency(mine, 50)  # warm up
        idle = _latency(mine)
        r, w = os.pipe()
        spinner = spawn_contained(spin_plan, _spinner(w), [w])
        os.close(w)
        assert select.select([r], [], [], HANG_S)[0] and os.read(r, 1) == b"s"
        os.close(r)
        group = cgroup_for(spin_plan)
        assert group is not None
        if group.backend == "v1":
            quota = (group.dirs["cpu"] / "cpu.cfs_quota_us").read_text().split()
        else:
            quota = (group.dirs["cpu"] / "cpu.max").read_text().split()[:1]
        # The wall clock is read before the first usage and after the last, so `window` can only
        # overstate the time between them: the bound on `used` below errs towards passing.
        t0 = time.monotonic()
        throttled, before = _throttled(group), group.usage().cpu_usec
        _wait(lambda: _throttled(group) > throttled, "the spinner throttled")  # it spent a period's quota
        throttled_held = _throttled(group)
        loaded = _latency(mine)  # the neighbour answers every ping while the spinner is held
        used = (group.usage().cpu_usec - before) / 1e6
        window = time.monotonic() - t0
        still_spinning = os.waitpid(spinner.pid, os.WNOHANG) == (0, 0)
    finally:
        for sp in (spinner, pinger):
            if sp is not None:
                os.kill(sp.pid, signal.SIGKILL)
                os.waitpid(sp.pid, 0)
        mine.close()
        cleanup(spin_plan)
        cleanup(ping_plan)
    print(f"\nneighbour ping median: idle {idle * 1e6:.0f} us, while the spinner spins {loaded * 1e6:.0f} us "
          f"({loaded / idle:.2f}x); spinner used {used:.3f} s of CPU in {window:.2f} s "
          f"(quota {QUOTA_PERCENT / 100} CPU; throttled {throttled_held - throttled} times before the pings)")
    # Held at the quota: 5 ms per 100 ms period, and the kernel throttled it for that.
    assert quota == [str(QUOTA_PERCENT * 1000)]
    assert throttled_held > throttled
    assert still_spinning  # the pings above were answered while it spun
    # And held there over the whole window: its CPU time stays far below even one CPU's worth (the
    # spinners would take every core without the quota; load elsewhere only lowers what they get).
    # Ten times the quota, plus a period, leaves room for the kernel's per-CPU runtime slices.
    assert used <= window * QUOTA_PERCENT / 100 * 10 + 0.1, (used, window)
