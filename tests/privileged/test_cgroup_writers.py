"""The cgroup writers against the real kernel: v1 controllers (this host) and the v2 handle on the
unified hierarchy (no controllers here, so attach, kill and removal only). Only groups under a
unique test parent are touched."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from plugind.errors import SandboxError
from plugind.sandbox import cgroups
from plugind.sandbox.plan import CgroupLimits

pytestmark = pytest.mark.root
HIER = cgroups.detect()


def _sleeper() -> int:
    pid = os.fork()
    if pid == 0:
        signal.pause()
        os._exit(0)
    return pid


def _allocator() -> tuple[int, int, int]:
    """A child that allocates 8 MiB when poked (after it has been moved into the group)."""
    poke_r, poke_w = os.pipe()
    ack_r, ack_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(poke_r, 1)
        block = b"\x01" * (8 << 20)
        os.write(ack_w, b"a")
        signal.pause()
        del block
        os._exit(0)
    os.close(poke_r)
    os.close(ack_w)
    return pid, poke_w, ack_r


@pytest.mark.skipif(not HIER.v1_paths, reason="no cgroup v1 controllers on this host")
def test_v1_group_gets_the_computed_settings_and_counts_usage(parent: str) -> None:
    limits = CgroupLimits(
        memory_bytes=96 << 20, cpu_quota_us=25_000, cpu_period_us=100_000, pids_max=12, io_weight=300
    )
    group = cgroups.create_group("v1", parent, "writer", limits, HIER)
    pid, poke, ack = _allocator()
    try:
        for controller, fname, value in cgroups.v1_settings(limits):
            path = group.dirs[controller] / fname
            if fname == "memory.oom_control":
                assert "oom_kill_disable 0" in path.read_text()
            elif controller == "blkio" and not path.exists():
                continue  # no BFQ on this host
            elif controller == "blkio":
                assert path.read_text().split()[-1] == value  # "default 300"
            else:
                assert path.read_text().strip() == value, fname
        group.attach(pid)
        assert group.pids() == [pid]
        os.write(poke, b"p")
        assert os.read(ack, 1) == b"a"
        usage = group.usage()
        assert usage.memory_limit == 96 << 20
        assert usage.pids == 1 and usage.oom_kills == 0
        assert usage.memory_bytes >= 8 << 20  # charged after the move
        assert cgroups.open_group("v1", parent, "writer", HIER) is not None
    finally:
        group.remove()
        _, status = os.waitpid(pid, 0)
        os.close(poke)
        os.close(ack)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL  # remove() empties it first
    assert cgroups.open_group("v1", parent, "writer", HIER) is None


def test_missing_controller_file_fails_closed(parent: str) -> None:
    # A v2 write where the controller is not delegated must fail, never be silently skipped.
    if HIER.v2_path is None or "memory" in HIER.v2_controllers:
        pytest.skip("needs a cgroup2 mount without the memory controller")
    with pytest.raises(SandboxError, match=r"cannot write .* to .*memory\.max") as ei:
        cgroups.create_group("v2", parent, "nomem", CgroupLimits(memory_bytes=1 << 20), HIER)
    assert ei.value.step == "cgroup"


@pytest.mark.skipif(HIER.v2_path is None, reason="no cgroup2 mount")
def test_v2_handle_attach_kill_and_stale_cleanup(parent: str) -> None:
    assert HIER.v2_path is not None
    path = Path(HIER.v2_path, parent, "v2group")
    path.mkdir(parents=True)
    handle = cgroups.CgroupHandle("v2", {c: path for c in ("memory", "cpu", "pids", "io")})
    pids = [_sleeper(), _sleeper()]
    for pid in pids:
        handle.attach(pid)
    assert sorted(handle.pids()) == sorted(pids)
    # Leave it populated, as a SIGKILLed daemon would, and let the start-up clean-up deal with it.
    removed = cgroups.cleanup_stale(parent, HIER)
    assert str(path) in removed
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.WTERMSIG(status) == signal.SIGKILL
    assert not path.exists()


def test_auto_backend_on_this_host_matches_the_layout() -> None:
    chosen = cgroups.choose_backend("auto", HIER)
    if {"memory", "cpu", "pids"} <= HIER.v2_controllers:
        assert chosen == "v2"
    else:
        assert chosen == "v1" and HIER.kind in ("v1", "hybrid")
