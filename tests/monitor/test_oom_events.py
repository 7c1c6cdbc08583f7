"""OOM kills the supervisor learnt of become `oom_kill` violations: the sweep alone misses a kill
that happens between two sweeps, because the restart replaces the plugin's cgroup and its counter."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from plugind.audit import AuditLog
from plugind.config import Settings
from plugind.monitor import metrics
from plugind.monitor.resource import ResourceMonitor


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
