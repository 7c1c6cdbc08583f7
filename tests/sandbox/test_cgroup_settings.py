"""Cgroup decisions as tables: backend detection and choice, v2 and v1 settings, counter parsing."""

from __future__ import annotations

import pytest

from plugind.errors import SandboxError
from plugind.sandbox.cgroups import (
    Hierarchy,
    choose_backend,
    parse_flat_keyed,
    parse_max,
    parse_mountinfo,
    v1_settings,
    v2_settings,
)
from plugind.sandbox.plan import CgroupLimits

HYBRID = """\
25 24 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
27 25 0:24 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
30 25 0:27 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
31 25 0:28 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
32 25 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
COMBINED_V1 = """\
26 25 0:23 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw,relatime shared:10 - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/pids rw,relatime shared:11 - cgroup cgroup rw,pids
"""
UNIFIED = (
    "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
)


def test_parse_mountinfo_hybrid() -> None:
    h = parse_mountinfo(HYBRID)
    assert h.v2_path == "/sys/fs/cgroup/unified"
    assert dict(h.v1_paths) == {
        "cpu": "/sys/fs/cgroup/cpu",
        "cpuacct": "/sys/fs/cgroup/cpuacct",
        "memory": "/sys/fs/cgroup/memory",
        "pids": "/sys/fs/cgroup/pids",
        "blkio": "/sys/fs/cgroup/blkio",
    }
    assert h.kind == "hybrid"


def test_parse_mountinfo_combined_controllers_and_optional_fields() -> None:
    h = parse_mountinfo(COMBINED_V1)
    assert h.v1_paths["cpu"] == h.v1_paths["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert h.kind == "v1"


def test_parse_mountinfo_unified_only() -> None:
    h = parse_mountinfo(UNIFIED)
    assert (h.v2_path, dict(h.v1_paths), h.kind) == ("/sys/fs/cgroup", {}, "v2")
    assert h.v2_options == {"rw", "nsdelegate"}  # the superblock's options, not the mount point's
    assert parse_mountinfo("").kind == "none"


FAVORDYNMODS = UNIFIED.replace("rw,nsdelegate", "rw,nsdelegate,favordynmods,memory_recursiveprot")


@pytest.mark.parametrize(
    ("backend", "mountinfo", "born"),
    [
        ("v2", UNIFIED, True),  # a move would wait out a grace period: the plugin is born in its group
        ("v2", FAVORDYNMODS, False),  # a move is cheap there: the spare is moved, no extra fork
        ("v1", HYBRID, False),  # renamed
        (None, UNIFIED, False),  # no cgroup step
    ],
)
def test_which_spares_fork_their_plugin_into_its_group(
    backend: str | None, mountinfo: str, born: bool
) -> None:
    from plugind.sandbox import contain

    assert contain.born_style(backend, parse_mountinfo(mountinfo)) is born


V2_FULL = Hierarchy("/sys/fs/cgroup", frozenset({"cpu", "memory", "pids", "io"}), {})
V2_EMPTY_HYBRID = Hierarchy(
    "/sys/fs/cgroup/unified",
    frozenset(),
    {c: f"/sys/fs/cgroup/{c}" for c in ("memory", "cpu", "cpuacct", "pids")},
)
NOTHING = Hierarchy(None, frozenset(), {})


@pytest.mark.parametrize(
    ("configured", "hier", "expected"),
    [
        ("auto", V2_FULL, "v2"),
        ("auto", V2_EMPTY_HYBRID, "v1"),
        ("v1", V2_EMPTY_HYBRID, "v1"),
        ("v2", V2_FULL, "v2"),
        ("none", NOTHING, None),
        ("none", V2_FULL, None),
    ],
    ids=["auto-v2", "auto-hybrid", "v1", "v2", "none-nothing", "none-anyway"],
)
def test_choose_backend(configured: str, hier: Hierarchy, expected: str | None) -> None:
    assert choose_backend(configured, hier) == expected


@pytest.mark.parametrize(
    ("configured", "hier", "message"),
    [
        (
            "v2",
            V2_EMPTY_HYBRID,
            r"cgroup v2 is not usable: the unified hierarchy \(/sys/fs/cgroup/unified\) offers",
        ),
        ("v1", V2_FULL, r"cgroup v1 is not usable: controllers mounted \[\]"),
        ("auto", NOTHING, "cgroup v1 is not usable"),
    ],
    ids=["v2-on-hybrid", "v1-on-v2", "auto-on-nothing"],
)
def test_choose_backend_refuses(configured: str, hier: Hierarchy, message: str) -> None:
    with pytest.raises(SandboxError, match=message) as ei:
        choose_backend(configured, hier)
    assert ei.value.step == "cgroup"
    assert ei.value.detail is not None and ei.value.detail.startswith("host cgroup layout:")


LIMITS = CgroupLimits(
    memory_bytes=256 << 20, cpu_quota_us=50_000, cpu_period_us=100_000, pids_max=64, io_weight=100
)
UNLIMITED = CgroupLimits(cpu_period_us=100_000)


def test_v2_settings() -> None:
    assert v2_settings(LIMITS) == {
        "memory.max": str(256 << 20),
        "memory.swap.max": "0",
        "cpu.max": "50000 100000",
        "pids.max": "64",
        "io.weight": "default 100",
    }
    assert v2_settings(UNLIMITED) == {"cpu.max": "max 100000", "pids.max": "max"}


def test_v1_settings() -> None:
    assert v1_settings(LIMITS) == [
        ("memory", "memory.limit_in_bytes", str(256 << 20)),
        ("memory", "memory.memsw.limit_in_bytes", str(256 << 20)),
        ("memory", "memory.oom_control", "0"),
        ("cpu", "cpu.cfs_period_us", "100000"),
        ("cpu", "cpu.cfs_quota_us", "50000"),
        ("pids", "pids.max", "64"),
        ("blkio", "blkio.bfq.weight", "100"),
    ]
    assert v1_settings(UNLIMITED) == [
        ("memory", "memory.oom_control", "0"),
        ("cpu", "cpu.cfs_period_us", "100000"),
        ("cpu", "cpu.cfs_quota_us", "-1"),
        ("pids", "pids.max", "max"),
    ]


@pytest.mark.parametrize(("weight", "v1"), [(1, "1"), (100, "100"), (500, "500"), (10000, "1000")])
def test_io_weight_clamped_to_bfq_range(weight: int, v1: str) -> None:
    assert v1_settings(CgroupLimits(io_weight=weight))[-1] == ("blkio", "blkio.bfq.weight", v1)


def test_parse_counters() -> None:
    assert parse_flat_keyed("low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n")["oom_kill"] == 1
    assert parse_flat_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 4\n") == {
        "oom_kill_disable": 0,
        "under_oom": 0,
        "oom_kill": 4,
    }
    assert parse_max("max\n") is None
    assert parse_max("9223372036854771712\n") is None  # v1 "unlimited"
    assert parse_max("1048576\n") == 1048576


def test_a_spare_is_moved_once_clone3_was_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # After the kernel (or a seccomp profile) refused clone3 once, no spare counts on it.
    from plugind.sandbox import contain

    assert contain.born_style("v2", parse_mountinfo(UNIFIED)) is True
    monkeypatch.setattr(contain, "_NO_CLONE3", ["clone3(CLONE_INTO_CGROUP, cgroup fd 9): ENOSYS"])
    assert contain.born_style("v2", parse_mountinfo(UNIFIED)) is False


def test_the_parent_lock_lives_in_one_hierarchy_every_daemon_on_the_host_picks() -> None:
    # Chosen from the mounts alone (not the backend a daemon is configured with), so that two
    # daemons of any configuration on one host contend for the same directory.
    from plugind.sandbox.cgroups import lock_root

    assert str(lock_root(parse_mountinfo(HYBRID))) == "/sys/fs/cgroup/pids"
    assert str(lock_root(parse_mountinfo(COMBINED_V1))) == "/sys/fs/cgroup/pids"
    assert str(lock_root(parse_mountinfo(UNIFIED))) == "/sys/fs/cgroup"
    no_pids = Hierarchy(None, frozenset(), {"memory": "/m", "cpu": "/c"})
    assert str(lock_root(no_pids)) == "/c"
    assert lock_root(Hierarchy(None, frozenset(), {})) is None
