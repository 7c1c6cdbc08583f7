"""plugind.monitor.violations: the pure verdicts, by table."""

from __future__ import annotations

import pytest

from plugind.config import Settings
from plugind.monitor.violations import (
    MIB,
    Connections,
    CpuTime,
    FileDescriptors,
    HeapMemory,
    OomKill,
    ResourceLimits,
    Threads,
    Usage,
    evaluate,
)

LIMITS = ResourceLimits(memory_bytes=100 * MIB, cpu_time_ms=500, threads=8, fds=32, connections=2)
OK = Usage(memory_bytes=50 * MIB, threads=2, fds=10, connections=0)


@pytest.mark.parametrize(
    ("usage", "cpu_ms", "ooms", "expected"),
    [
        (OK, 100, 0, []),
        (Usage(100 * MIB, 8, 32, 2), 500, 0, []),  # at the limit is fine
        (Usage(100 * MIB + 1, 2, 10, 0), None, 0, [HeapMemory(used=100 * MIB + 1, limit=100 * MIB)]),
        (OK, 501, 0, [CpuTime(used_ms=501, limit_ms=500)]),
        (OK, None, 0, []),  # no earlier sample: no cpu verdict
        (Usage(50 * MIB, 9, 10, 0), None, 0, [Threads(count=9, limit=8)]),
        (Usage(50 * MIB, 2, 33, 0), None, 0, [FileDescriptors(count=33, limit=32)]),
        (Usage(50 * MIB, 2, 10, 3), None, 0, [Connections(count=3, limit=2)]),
        (OK, None, 2, [OomKill(count=2)]),
        (
            Usage(200 * MIB, 9, 40, 5),
            900,
            1,
            [
                HeapMemory(used=200 * MIB, limit=100 * MIB),
                CpuTime(used_ms=900, limit_ms=500),
                Threads(count=9, limit=8),
                FileDescriptors(count=40, limit=32),
                Connections(count=5, limit=2),
                OomKill(count=1),
            ],
        ),
    ],
    ids=["ok", "at-limits", "memory", "cpu", "cpu-unknown", "threads", "fds", "connections", "oom", "all"],
)
def test_evaluate(usage, cpu_ms, ooms, expected):
    assert evaluate(usage, LIMITS, cpu_ms_per_interval=cpu_ms, new_oom_kills=ooms) == expected


def test_cpu_limit_zero_means_no_limit():
    limits = ResourceLimits(100 * MIB, 0, 8, 32, 2)
    assert evaluate(OK, limits, cpu_ms_per_interval=10**9) == []


def test_zero_connections_allowed_is_a_limit():
    limits = ResourceLimits(100 * MIB, 0, 8, 32, 0)
    assert evaluate(Usage(1, 1, 1, 1), limits) == [Connections(count=1, limit=0)]


def test_violation_types_and_plain_data():
    v = HeapMemory(used=300 * MIB, limit=256 * MIB)
    assert v.type == "memory"
    assert v.as_dict() == {
        "type": "memory",
        "used": 300 * MIB,
        "limit": 256 * MIB,
        "message": "memory 300.0 MiB over the limit of 256.0 MiB",
    }
    kinds = [c.type for c in (HeapMemory, CpuTime, Threads, FileDescriptors, Connections, OomKill)]
    assert kinds == ["memory", "cpu", "threads", "fds", "connections", "oom_kill"]
    assert FileDescriptors(count=40, limit=32).describe() == "40 open file descriptors, over the limit of 32"


def test_limits_from_settings_never_widened_by_a_plugin_override():
    settings = Settings.model_validate(
        {
            "monitoring": {"limits": {"max_memory_mb": 128, "max_fds": 50, "max_cpu_time_ms": 300}},
            "plugin": {"small": {"memory_limit_mb": 32}, "greedy": {"memory_limit_mb": 4096}},
        }
    )
    base = ResourceLimits.from_settings(settings)
    assert base == ResourceLimits(memory_bytes=128 * MIB, cpu_time_ms=300, threads=64, fds=50, connections=64)
    assert ResourceLimits.from_settings(settings, "small").memory_bytes == 32 * MIB
    assert ResourceLimits.from_settings(settings, "greedy").memory_bytes == 128 * MIB
    assert ResourceLimits.from_settings(settings, "unknown") == base
