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
        for _ in range(2):  # as many spinners as this machine has cores
            if os.fork() == 0:
                while True:
                    pass
        os.write(w, b"s")
        while True:
            pass

    return run


def _latency(sock: socket.socket, rounds: int = 300) -> float:
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        sock.sendall(b"p")
        sock.recv(64)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def _throttled(group: cgroups.CgroupHandle) -> int:
    """How often the kernel has throttled `group` for its CPU quota (cpu.stat nr_throttled)."""
    return cgroups.parse_flat_keyed((group.dirs["cpu"] / "cpu.stat").read_text()).get("nr_throttled", 0)


@pytest.mark.slow
def test_cpu_spinner_is_held_at_quota_and_neighbour_keeps_answering(tmp_path: Path, parent: str) -> None:
    ping_plan = plan_for(tmp_path, parent, name="pinger")
    spin_plan = plan_for(tmp_path, parent, name="spinner", cgroups__cpu_quota_percent=50)
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
        assert select.select([r], [], [], 10)[0] and os.read(r, 1) == b"s"
        os.close(r)
        group = cgroup_for(spin_plan)
        assert group is not None
        if group.backend == "v1":
            quota = (group.dirs["cpu"] / "cpu.cfs_quota_us").read_text().split()
        else:
            quota = (group.dirs["cpu"] / "cpu.max").read_text().split()[:1]
        throttled, before, t0 = _throttled(group), group.usage().cpu_usec, time.monotonic()
        loaded = _latency(mine)  # the neighbour answers every ping while the spinner spins
        for _ in range(100):  # the kernel throttles it once it has spent a period's quota
            if _throttled(group) > throttled:
                break
            time.sleep(0.05)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))  # a second at least, for the usage printed
        used, window = (group.usage().cpu_usec - before) / 1e6, time.monotonic() - t0
        throttled_after = _throttled(group)
    finally:
        for sp in (spinner, pinger):
            if sp is not None:
                os.kill(sp.pid, signal.SIGKILL)
                os.waitpid(sp.pid, 0)
        mine.close()
        cleanup(spin_plan)
        cleanup(ping_plan)
    print(f"\nneighbour ping median: idle {idle * 1e6:.0f} us, while the spinner spins {loaded * 1e6:.0f} us "
          f"({loaded / idle:.2f}x); spinner used {used:.2f} s of CPU in {window:.2f} s (quota 0.5 CPU)")
    # Held at the quota: 50% of one CPU per 100 ms period, and the kernel throttled it for that.
    assert quota == ["50000"]
    assert throttled_after > throttled
