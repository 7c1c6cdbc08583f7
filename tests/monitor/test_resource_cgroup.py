"""ResourceMonitor on a real cgroup made by plugind.sandbox.cgroups (root): counters and OOM kills."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from plugind.config import Settings
from plugind.monitor.resource import ResourceMonitor
from plugind.monitor.sampling import MonitoredPlugin, sample_plugin
from plugind.monitor.violations import MIB, HeapMemory, OomKill, Threads
from plugind.sandbox import cgroups
from plugind.sandbox.plan import CgroupLimits

pytestmark = pytest.mark.root


@pytest.fixture
def group(cgroup_parent: str) -> Iterator[cgroups.CgroupHandle]:
    """A plugin group with limits, under the tests' own cgroup parent (removed by its fixture)."""
    hier = cgroups.detect()
    backend = cgroups.choose_backend("auto", hier)
    assert backend is not None, "cgroup_parent skips where the host offers no controllers"
    limits = CgroupLimits(memory_bytes=96 * MIB, pids_max=64)
    yield cgroups.create_group(backend, cgroup_parent, "cg", limits, hier)


def test_cgroup_counters_violations_and_oom_kill(hog, group):
    h = hog()
    group.attach(h.pid)
    plugin = MonitoredPlugin("cg", h.pid, group, None)
    settings = Settings.model_validate(
        {"monitoring": {"limits": {"max_memory_mb": 48, "max_threads": 6}, "violation_threshold": 5}}
    )
    unloaded: list[str] = []

    async def unload(name: str, reason: str) -> None:
        unloaded.append(name)

    mon = ResourceMonitor(settings, lambda: [plugin], unload)
    first = sample_plugin(plugin)
    assert first is not None and first.source == "cgroup"
    assert first.threads >= 1  # pids.current: tasks in the group
    h.do("mem 64")
    h.do("threads 8")

    async def scenario() -> tuple[dict, dict]:
        one = await mon.sweep()
        # A child in the same group allocates past the group's 96 MiB: the kernel OOM-kills it
        # (the hog frees its own memory first, so the child is the biggest task in the group).
        h.do("free")
        reply = await asyncio.to_thread(h.do, "child-mem 200")
        assert reply == "ok child-mem -9"  # SIGKILL from the OOM killer
        two = await mon.sweep()
        return one, two

    one, two = asyncio.run(scenario())
    kinds = {type(v) for v in one["cg"]}
    assert kinds == {HeapMemory, Threads}
    heap = next(v for v in one["cg"] if isinstance(v, HeapMemory))
    assert heap.limit == 48 * MIB and heap.used >= 64 * MIB
    threads = next(v for v in one["cg"] if isinstance(v, Threads))
    assert threads.count >= 9 and threads.limit == 6
    oom = [v for v in two["cg"] if isinstance(v, OomKill)]
    assert oom and oom[0].count >= 1
    assert group.usage().oom_kills >= 1
    assert mon.consecutive_violations("cg") == 2 and unloaded == []


def test_counters_read_with_bare_syscalls_match_the_files(hog, group):
    # The monitor reads cgroup files with os.open/os.read (cgroups._read_file): the same text as
    # Path.read_text, a listing of many processes included (more than one read's worth).
    h = hog()
    group.attach(h.pid)
    for d in dict.fromkeys(group.dirs.values()):
        for entry in sorted(d.iterdir()):
            if entry.is_file() and entry.stat().st_mode & 0o444 and entry.name.endswith(
                    ("current", "usage", "usage_in_bytes", "max", "limit_in_bytes", "events",
                     "oom_control", "procs")):
                assert cgroups._read_file(str(entry)).split() == entry.read_text().split(), entry
    assert group.pids() == [h.pid]
    sample = sample_plugin(MonitoredPlugin("cg", h.pid, group, None))
    assert sample is not None and sample.source == "cgroup"
    assert sample.threads >= 1 and sample.fds >= 3


def test_a_file_longer_than_one_read_is_read_whole(tmp_path):
    big = tmp_path / "cgroup.procs"
    big.write_text("".join(f"{pid}\n" for pid in range(100_000, 130_000)))  # ~210 kB
    assert cgroups._read_file(str(big)) == big.read_text()
    with pytest.raises(FileNotFoundError):
        cgroups._read_file(str(tmp_path / "gone"))
