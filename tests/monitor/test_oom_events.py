"""OOM kills the supervisor learnt of become `oom_kill` violations: the sweep alone misses a kill
that happens between two sweeps, because the restart replaces the plugin's cgroup and its counter."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from plugind.audit import AuditLog
from plugind.config import Settings
from plugind.monitor import metrics
from plugind.monitor.resource import ResourceMonitor
from plugind.monitor.sampling import MonitoredPlugin
from plugind.sandbox.cgroups import CgroupUsage


def _oom_total(name: str) -> float:
    text = metrics.render()[0].decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = {"plugin": name, "type": "oom_kill"}
            if s.name == "plugind_plugin_violations_total" and s.labels == labels:
                return float(s.value)
    return 0.0


async def _unload(name: str, reason: str) -> None:
    raise AssertionError(f"an OOM event must not unload {name} ({reason})")


def test_oom_killed_event_is_recorded_as_a_violation(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    mon = ResourceMonitor(Settings(), list, _unload, audit=audit)

    async def scenario() -> None:
        await mon.sweep()  # as in the daemon, where sweeps run from the start (it makes the audit thread)
        before = _oom_total("oomy")
        mon.on_plugin_event("oomy", "crashed", {"pid": 7, "signal": 9})  # not an OOM: ignored
        assert mon.recent_violations("oomy") == []
        mon.on_plugin_event("oomy", "oom_killed", {"pid": 7})
        assert _oom_total("oomy") == before + 1
        assert mon.consecutive_violations("oomy") == 0  # no streak: the kill already ended it
        await mon.stop()

    asyncio.run(scenario())
    ((recent),) = mon.recent_violations("oomy")
    assert {k: v for k, v in recent.items() if k != "time"} == {
        "type": "oom_kill",
        "count": 1,
        "message": "1 process(es) killed by the kernel OOM killer",
    }
    (entry,) = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert (entry["event"], entry["plugin"], entry["streak"]) == ("violation", "oomy", 0)
    assert entry["violations"][0]["type"] == "oom_kill"


class _Group:
    """A plugin cgroup's counters, as a handle gives them; the kernel's OOM count is set by the test."""

    def __init__(self) -> None:
        self.oom_kills = 0

    def usage(self) -> CgroupUsage:
        return CgroupUsage(1 << 20, memory_limit=None, cpu_usec=0, pids=1, oom_kills=self.oom_kills)


@pytest.mark.parametrize("sweep_first", [True, False], ids=["sweep-first", "exit-report-first"])
def test_one_oom_kill_seen_by_a_sweep_and_the_exit_report_is_one_violation(
    tmp_path: Path, sweep_first: bool
) -> None:
    group = _Group()
    pid = os.getpid()  # a live process for the sample's psutil half
    plugins = [MonitoredPlugin("twice", pid, group)]
    # The stand-in is this test process: limits it cannot reach whatever the suite left open in it
    # (fds, threads, sockets), so the only violations are the OOM kills the test makes.
    roomy = {"max_memory_mb": 1 << 20, "max_threads": 1 << 16, "max_fds": 1 << 20, "max_connections": 1 << 16}
    settings = Settings.model_validate({"monitoring": {"limits": roomy}})
    mon = ResourceMonitor(settings, lambda: plugins, _unload, audit=AuditLog(tmp_path / "audit.log"))

    async def scenario() -> None:
        await mon.sweep()  # the incarnation's first sample: no kill yet
        before = _oom_total("twice")
        group.oom_kills = 1  # the kernel kills it; both the counter and the exit report tell
        if sweep_first:
            await mon.sweep()
            mon.on_plugin_event("twice", "oom_killed", {"pid": pid})
        else:
            mon.on_plugin_event("twice", "oom_killed", {"pid": pid})
            await mon.sweep()
        assert _oom_total("twice") == before + 1
        group.oom_kills = 2  # a second kill of the same incarnation is a second violation
        await mon.sweep()
        assert _oom_total("twice") == before + 2
        await mon.stop()

    asyncio.run(scenario())
    assert [v["type"] for v in mon.recent_violations("twice")] == ["oom_kill", "oom_kill"]


def test_an_exit_report_for_another_incarnation_is_not_matched(tmp_path: Path) -> None:
    group = _Group()
    plugins = [MonitoredPlugin("other", os.getpid(), group)]
    mon = ResourceMonitor(Settings(), lambda: plugins, _unload, audit=AuditLog(tmp_path / "audit.log"))

    async def scenario() -> None:
        group.oom_kills = 1
        await mon.sweep()  # seen in this incarnation's counter
        before = _oom_total("other")
        mon.on_plugin_event("other", "oom_killed", {"pid": os.getpid() + 100000})  # an older pid
        assert _oom_total("other") == before + 1
        await mon.stop()

    asyncio.run(scenario())
