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
