"""ResourceMonitor against real child processes: samples, typed violations, streaks, auto-unload."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from plugind.audit import AuditLog
from plugind.config import Settings
from plugind.errors import NotLoaded
from plugind.monitor import metrics
from plugind.monitor.resource import ResourceMonitor, UnmountBehavior
from plugind.monitor.sampling import MonitoredPlugin, sample_plugin
from plugind.monitor.violations import (
    MIB,
    Connections,
    CpuTime,
    FileDescriptors,
    HeapMemory,
    OomKill,
    ResourceLimits,
    Threads,
)


def settings(interval: float = 0.2, **limits: int) -> Settings:
    return Settings.model_validate(
        {"monitoring": {"violation_threshold": 3, "check_interval_secs": interval, "limits": limits}}
    )


class Plugins:
    """A stand-in registry: the loaded set, and an unload coroutine that really kills the process."""

    def __init__(self) -> None:
        self.loaded: dict[str, MonitoredPlugin] = {}
        self.procs: dict[str, object] = {}
        self.unloaded: list[tuple[str, str]] = []
        self.unloaded_event = asyncio.Event()

    def add(self, name: str, hog: object, limits: ResourceLimits | None = None) -> None:
        self.loaded[name] = MonitoredPlugin(name, hog.pid, None, limits)  # type: ignore[attr-defined]
        self.procs[name] = hog

    def source(self) -> list[MonitoredPlugin]:
        return list(self.loaded.values())

    async def unload(self, name: str, reason: str) -> None:
        self.loaded.pop(name)
        await asyncio.to_thread(self.procs.pop(name).kill)  # type: ignore[attr-defined]
        metrics.forget_plugin(name)
        self.unloaded.append((name, reason))
        self.unloaded_event.set()


@pytest.fixture
def plugins() -> Iterator[Plugins]:
    yield Plugins()
    metrics.set_sample_source(None)


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render()[0].decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


# -- sampling ----------------------------------------------------------------------------------


def test_sample_sees_memory_fds_and_threads_of_a_real_process(hog):
    h = hog()
    before = sample_plugin(MonitoredPlugin("s1", h.pid))
    assert before is not None and before.source == "psutil" and before.pid == h.pid
    h.do("mem 48")
    h.do("fds 40")
    h.do("threads 3")
    after = sample_plugin(MonitoredPlugin("s1", h.pid))
    assert after is not None
    assert after.memory_bytes - before.memory_bytes >= 40 * MIB
    assert after.fds == before.fds + 40
    assert after.threads == before.threads + 3
    assert after.connections == 0


def test_sample_counts_network_sockets_not_unix_sockets(hog):
    h = hog()
    h.do("unix 4")  # 8 fds, none of them a network connection
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        h.do(f"conn {port} 3")
        sample = sample_plugin(MonitoredPlugin("s2", h.pid))
        assert sample is not None and sample.connections == 3
        h.do("listen")  # a TCP listener and a UDP socket use the network too
        sample = sample_plugin(MonitoredPlugin("s2", h.pid))
        assert sample is not None and sample.connections == 5


def test_vanished_process_is_not_an_error(hog):
    h = hog()
    h.kill()
    assert sample_plugin(MonitoredPlugin("gone", h.pid)) is None


# -- verdicts ----------------------------------------------------------------------------------


def test_check_plugin_resources_returns_typed_memory_violation(hog, plugins):
    h = hog()
    plugins.add("memhog", h)
    mon = ResourceMonitor(settings(max_memory_mb=40), plugins.source, plugins.unload)
    assert mon.check_plugin_resources("memhog") == []
    h.do("mem 64")
    (violation,) = mon.check_plugin_resources("memhog")
    assert isinstance(violation, HeapMemory)
    assert violation.limit == 40 * MIB
    assert violation.used > 40 * MIB
    assert mon.consecutive_violations("memhog") == 0  # a check on demand does not count


def test_fd_threads_and_connection_violations(hog, plugins):
    h = hog()
    plugins.add("fdhog", h, ResourceLimits(512 * MIB, 0, threads=4, fds=20, connections=1))
    mon = ResourceMonitor(settings(), plugins.source, plugins.unload)
    with socket.create_server(("127.0.0.1", 0)) as server:
        h.do("fds 30")
        h.do("threads 5")
        h.do(f"conn {server.getsockname()[1]} 2")
        found = mon.check_plugin_resources("fdhog")
    by_type = {type(v): v for v in found}
    assert set(by_type) == {FileDescriptors, Threads, Connections}
    assert by_type[FileDescriptors].limit == 20 and by_type[FileDescriptors].count >= 32
    assert by_type[Threads] == Threads(count=6, limit=4)
    assert by_type[Connections] == Connections(count=2, limit=1)


def test_unknown_plugin_is_not_loaded(plugins):
    mon = ResourceMonitor(settings(), plugins.source, plugins.unload)
    with pytest.raises(NotLoaded, match="plugin 'nope' is not loaded") as info:
        mon.check_plugin_resources("nope")
    assert info.value.plugin == "nope"
    with pytest.raises(NotLoaded, match="plugin 'nope' is not loaded"):
        mon.get_plugin_metrics("nope")


def test_dead_process_of_a_loaded_plugin(hog, plugins):
    h = hog()
    plugins.add("dead", h)
    h.kill()
    mon = ResourceMonitor(settings(), plugins.source, plugins.unload)
    with pytest.raises(NotLoaded, match="plugin 'dead' has no running process"):
        mon.check_plugin_resources("dead")
    assert asyncio.run(mon.sweep()) == {}  # a sweep skips it without error


# -- streaks and auto-unload -------------------------------------------------------------------


async def _sweeps(mon: ResourceMonitor, n: int) -> None:
    for _ in range(n):
        await mon.sweep()


def test_threshold_consecutive_violations_unload_once_with_audit_and_metric(hog, plugins, tmp_path):
    h = hog()
    plugins.add("streaky", h)
    audit = AuditLog(tmp_path / "audit.log")
    mon = ResourceMonitor(settings(max_memory_mb=40), plugins.source, plugins.unload, audit=audit)
    metrics.set_sample_source(mon.exported_samples)  # start_resource_monitor does this in the daemon

    async def scenario() -> None:
        h.do("mem 64")
        await _sweeps(mon, 2)
        assert mon.consecutive_violations("streaky") == 2
        h.do("free")  # one clean sample breaks the streak
        await mon.sweep()
        assert mon.consecutive_violations("streaky") == 0
        h.do("mem 64")
        await _sweeps(mon, 2)
        assert plugins.unloaded == []
        s = scrape()
        assert s[("plugind_plugin_memory_bytes", (("plugin", "streaky"),))] > 40 * MIB
        assert s[("plugind_plugin_violations_total", (("plugin", "streaky"), ("type", "memory")))] == 4
        await mon.sweep()  # third in a row
        await asyncio.wait_for(plugins.unloaded_event.wait(), 10)
        await mon.stop()

    asyncio.run(scenario())
    ((name, reason),) = plugins.unloaded
    assert name == "streaky"
    assert reason.startswith("resource limits exceeded in 3 consecutive checks: memory ")
    assert "over the limit of 40.0 MiB" in reason
    assert [e["event"] for e in audit.tail()] == ["violation", "violation", "auto_unload"]
    unload_entry = audit.tail(event="auto_unload", plugin="streaky")[0]
    assert unload_entry["reason"] == reason
    assert unload_entry["violations"][0]["type"] == "memory"
    assert [v["type"] for v in mon.recent_violations("streaky")] == ["memory"] * 5
    assert mon.recent_violations("streaky")[-1]["limit"] == 40 * MIB


def test_auto_unmount_off_keeps_the_plugin(hog, plugins, tmp_path):
    h = hog()
    plugins.add("kept", h)
    mon = ResourceMonitor(settings(max_fds=10), plugins.source, plugins.unload)
    mon.set_unmount_behavior("kept", UnmountBehavior(auto_unmount=False, log_violations=True))
    h.do("fds 20")
    asyncio.run(_sweeps(mon, 5))
    assert plugins.unloaded == []
    assert mon.consecutive_violations("kept") == 5
    assert mon.get_plugin_metrics("kept").violation_count == 5


def test_violation_log_line_names_the_plugin(hog, plugins, caplog):
    h = hog()
    plugins.add("loud", h)
    mon = ResourceMonitor(settings(max_fds=10), plugins.source, plugins.unload)
    h.do("fds 20")
    with caplog.at_level("WARNING", logger="plugind.monitor"):
        asyncio.run(mon.sweep())
    (record,) = [r for r in caplog.records if r.name == "plugind.monitor"]
    assert record.plugin == "loud"
    assert "resource limit exceeded (1 of 3 in a row):" in record.getMessage()
    assert "open file descriptors, over the limit of 10" in record.getMessage()
    mon.set_unmount_behavior("loud", UnmountBehavior(auto_unmount=True, log_violations=False))
    caplog.clear()
    with caplog.at_level("WARNING", logger="plugind.monitor"):
        asyncio.run(mon.sweep())
    assert [r for r in caplog.records if r.name == "plugind.monitor"] == []


def test_cpu_time_per_interval(hog, plugins):
    h = hog()
    plugins.add("spinner", h, ResourceLimits(512 * MIB, cpu_time_ms=50, threads=64, fds=256, connections=0))
    # The limit is CPU ms per check interval, scaled from the wall time between the two sweeps. On a
    # busy machine 0.3 s of CPU can take seconds of wall time, so the interval is long (the sweeps
    # here are driven by hand): the verdict then depends on the CPU spent, not on the machine's load.
    mon = ResourceMonitor(settings(interval=60.0), plugins.source, plugins.unload)

    async def scenario() -> dict:
        await mon.sweep()
        await asyncio.to_thread(h.do, "spin 0.3")
        return await mon.sweep()

    verdicts = asyncio.run(scenario())
    (v,) = verdicts["spinner"]
    assert isinstance(v, CpuTime) and v.limit_ms == 50 and v.used_ms > 50


def test_get_plugin_metrics_values(hog, plugins):
    h = hog()
    plugins.add("measured", h)
    h.do("threads 2")
    h.do("fds 7")
    mon = ResourceMonitor(settings(), plugins.source, plugins.unload)
    asyncio.run(mon.sweep())
    m = mon.get_plugin_metrics("measured")
    baseline = sample_plugin(MonitoredPlugin("x", h.pid))
    assert m.thread_count == 3
    assert m.fd_count == baseline.fds
    assert m.heap_bytes > 1 * MIB
    assert m.violation_count == 0
    assert set(m.as_dict()) == {"heap_bytes", "cpu_time_ms", "thread_count", "fd_count",
                                "connection_count", "violation_count"}


# -- cgroup counters, OOM kills ----------------------------------------------------------------


@dataclass
class _Usage:
    memory_bytes: int
    memory_limit: int | None
    cpu_usec: int
    pids: int
    oom_kills: int


class CounterFile:
    """A cgroup stand-in that serves counters the test sets (the monitor, not cgroupfs, is under test)."""

    def __init__(self) -> None:
        self.value = _Usage(10 * MIB, None, 1_500_000, 7, 0)

    def usage(self) -> _Usage:
        return self.value


def test_cgroup_counters_are_preferred_and_oom_kills_are_counted(hog, plugins):
    h = hog()
    group = CounterFile()
    plugins.loaded["grouped"] = MonitoredPlugin("grouped", h.pid, group, None)
    mon = ResourceMonitor(settings(), plugins.source, plugins.unload)
    first = asyncio.run(mon.sweep())
    assert first == {"grouped": []}
    sample = mon.latest_samples()["grouped"]
    got = (sample.source, sample.memory_bytes, sample.cpu_seconds, sample.threads)
    assert got == ("cgroup", 10 * MIB, 1.5, 7)
    group.value = _Usage(10 * MIB, None, 1_600_000, 7, 2)
    assert asyncio.run(mon.sweep()) == {"grouped": [OomKill(count=2)]}
    assert asyncio.run(mon.sweep()) == {"grouped": []}  # only new kills count


def test_monitor_loop_runs_off_the_loop_and_unloads(hog, plugins):
    h = hog()
    plugins.add("looped", h)
    mon = ResourceMonitor(settings(max_fds=10), plugins.source, plugins.unload)
    h.do("fds 20")
    sampler_threads: set[str] = set()
    real = mon.sample_all

    def spy(ps):  # records which thread sampled; the real sampling still runs
        sampler_threads.add(threading.current_thread().name)
        return real(ps)

    mon.sample_all = spy  # type: ignore[method-assign]

    async def scenario() -> None:
        mon.start_resource_monitor(0.05)
        with pytest.raises(RuntimeError, match="already running"):
            mon.start_resource_monitor()
        await asyncio.wait_for(plugins.unloaded_event.wait(), 20)
        await mon.stop()

    asyncio.run(scenario())
    assert [n for n, _ in plugins.unloaded] == ["looped"]
    assert sampler_threads and all(t.startswith("plugind-monitor") for t in sampler_threads)
    assert ("plugind_plugin_open_fds", (("plugin", "looped"),)) not in scrape()


def test_bad_interval(plugins):
    mon = ResourceMonitor(settings(), plugins.source, plugins.unload)

    async def start() -> None:
        mon.start_resource_monitor(0)

    with pytest.raises(ValueError, match="monitor interval must be positive, got 0"):
        asyncio.run(start())


def test_exported_samples_leave_out_exited_and_forgotten_plugins(hog, plugins):
    a, b, c = hog(), hog(), hog()
    for name, h in (("ea", a), ("eb", b), ("ec", c)):
        plugins.add(name, h)
    mon = ResourceMonitor(settings(), plugins.source, plugins.unload)
    asyncio.run(mon.sweep())
    assert set(mon.exported_samples()) == {"ea", "eb", "ec"}
    b.kill()  # exited (and reaped) since the sweep: gone from the next scrape already
    mon.forget("ec")  # unloaded
    assert set(mon.exported_samples()) == {"ea"}
    assert mon.consecutive_violations("ec") == 0


def test_a_cgroup_given_as_a_bare_path_falls_back_to_psutil(hog):
    h = hog()
    sample = sample_plugin(MonitoredPlugin("pathy", h.pid, "/sys/fs/cgroup/plugind/pathy"))  # type: ignore[arg-type]
    assert sample is not None and sample.source == "psutil" and sample.memory_bytes > 0


def test_violations_are_audited_at_streak_start_and_kind_change_even_when_not_logged(hog, plugins, tmp_path):
    h = hog()
    plugins.add("quiet", h)
    audit = AuditLog(tmp_path / "audit.log")
    mon = ResourceMonitor(settings(max_fds=10, max_threads=3), plugins.source, plugins.unload, audit=audit)
    mon.set_unmount_behavior("quiet", UnmountBehavior(auto_unmount=False, log_violations=False))

    async def scenario() -> None:
        h.do("fds 20")
        await _sweeps(mon, 2)  # one streak, one kind: one entry
        h.do("threads 4")
        await _sweeps(mon, 2)  # the kinds change: a second entry
        await mon.stop()  # waits for the audit writes

    asyncio.run(scenario())
    entries = audit.tail(event="violation", plugin="quiet")
    assert [[v["type"] for v in e["violations"]] for e in entries] == [["fds"], ["threads", "fds"]]
    assert [e["streak"] for e in entries] == [1, 3]


def test_an_upgrade_makes_the_metrics_those_of_the_new_process(hog, plugins):
    old, new = hog(), hog()
    old.do("threads 3")
    plugins.add("up", old)
    mon = ResourceMonitor(settings(), plugins.source, plugins.unload)
    asyncio.run(mon.sweep())
    assert mon.get_plugin_metrics("up").thread_count == 4
    plugins.add("up", new)  # the registry's switch: the same name, another process
    mon.on_plugin_event("up", "upgraded", {"pid": new.pid, "old_pid": old.pid})
    # Not the old process's last sample: the new one, sampled now.
    assert mon.get_plugin_metrics("up").thread_count == 1
