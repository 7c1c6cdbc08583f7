"""build_plan: the global settings merged with [plugin.NAME], never wider; targets; wire round trip."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import pytest

from plugind.config import PluginOverride, Settings
from plugind.errors import ConfigError, SandboxError
from plugind.sandbox.plan import (
    MIB,
    Bind,
    CgroupLimits,
    SandboxPlan,
    Target,
    build_plan,
    cpu_quota_us,
    narrower,
    parse_target,
    system_binds,
)


def fake_dns(host: str) -> list[str]:
    return {"api.example.com": ["192.0.2.10", "192.0.2.11"], "v6.example.com": ["2001:db8::1"]}.get(host, [])


def settings(**plugin: PluginOverride) -> Settings:
    s = Settings()
    s.plugin = dict(plugin)
    return s


@pytest.mark.parametrize(
    ("global_value", "override", "expected"),
    [
        (256, None, 256),
        (256, 128, 128),
        (256, 512, 256),  # never wider than the operator
        (0, 512, 512),  # no global limit: the plugin's own limit applies
        (0, None, None),
        (256, 0, 256),  # 0 in an override means "unset", not "unlimited"
    ],
    ids=["global", "narrower", "wider-clamped", "no-global", "none", "zero-override"],
)
def test_narrower(global_value: int, override: int | None, expected: int | None) -> None:
    assert narrower(global_value, override) == expected


@pytest.mark.parametrize(
    ("percent", "period", "quota"),
    [
        (50, 100_000, 50_000),
        (200, 100_000, 200_000),
        (0.5, 100_000, 1000),
        (0, 100_000, None),
        (25, 10_000, 2500),
    ],
    ids=["half", "two-cpus", "kernel-minimum", "unlimited", "short-period"],
)
def test_cpu_percent_to_quota(percent: float, period: int, quota: int | None) -> None:
    assert cpu_quota_us(percent, period) == quota


def test_defaults_give_the_default_jail(tmp_path: Path) -> None:
    plan = build_plan(Settings(), "alpha", tmp_path)
    assert plan.namespaces == ("mount", "pid", "ipc", "uts", "net")
    assert plan.limits == CgroupLimits(256 * MIB, 50_000, 100_000, 64, 100)
    assert plan.network_mode == "none" and plan.allowed_targets == ()
    assert plan.tmp_size_bytes == 16 * MIB
    assert plan.cgroup_name == "plugind/alpha"
    assert plan.binds[-1] == Bind(str(tmp_path), str(tmp_path))  # the plugin's tree, read-only
    assert all(not b.writable for b in plan.binds)


@pytest.mark.parametrize(
    ("instance", "group", "cgroup_name"),
    [("", "alpha", "plugind/alpha"), ("7", "alpha@7", "plugind/alpha@7")],
    ids=["first-instance", "second-instance"],
)
def test_an_instance_gets_a_cgroup_of_its_own(
    tmp_path: Path, instance: str, group: str, cgroup_name: str
) -> None:
    # An upgrade runs two versions of a plugin at once: neither may touch the other's group.
    plan = build_plan(Settings(), "alpha", tmp_path, instance=instance)
    assert (plan.group, plan.cgroup_name) == (group, cgroup_name)
    assert SandboxPlan.from_wire(plan.to_wire()) == plan


def test_override_narrows_every_limit(tmp_path: Path) -> None:
    s = settings(alpha=PluginOverride(memory_limit_mb=64, cpu_quota_percent=10, max_pids=8))
    plan = build_plan(s, "alpha", tmp_path)
    assert plan.limits == CgroupLimits(64 * MIB, 10_000, 100_000, 8, 100)
    other = build_plan(s, "beta", tmp_path)
    assert other.limits.memory_bytes == 256 * MIB


def test_override_cannot_widen(tmp_path: Path) -> None:
    s = settings(alpha=PluginOverride(memory_limit_mb=4096, cpu_quota_percent=400, max_pids=10_000))
    assert build_plan(s, "alpha", tmp_path).limits == CgroupLimits(256 * MIB, 50_000, 100_000, 64, 100)


def test_manifest_needing_more_memory_than_allowed_fails(tmp_path: Path) -> None:
    with pytest.raises(
        SandboxError, match="plugin alpha requires 512 MiB of memory but at most 256 MiB"
    ) as ei:
        build_plan(Settings(), "alpha", tmp_path, {"memory_mb": 512})
    assert ei.value.step == "plan" and ei.value.plugin == "alpha"
    assert build_plan(Settings(), "alpha", tmp_path, {"memory_mb": 128}).limits.memory_bytes == 256 * MIB


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.5:443", [Target("10.0.0.5/32", 443, "10.0.0.5:443")]),
        ("10.1.0.0/16", [Target("10.1.0.0/16", None, "10.1.0.0/16")]),
        ("10.1.0.0/16:53", [Target("10.1.0.0/16", 53, "10.1.0.0/16:53")]),
        ("[2001:db8::5]:8443", [Target("2001:db8::5/128", 8443, "[2001:db8::5]:8443")]),
        ("2001:db8::/32", [Target("2001:db8::/32", None, "2001:db8::/32")]),
        (
            "api.example.com:443",
            [
                Target("192.0.2.10/32", 443, "api.example.com:443"),
                Target("192.0.2.11/32", 443, "api.example.com:443"),
            ],
        ),
    ],
    ids=["host-port", "cidr", "cidr-port", "v6-port", "v6-cidr", "domain"],
)
def test_parse_target(text: str, expected: list[Target]) -> None:
    assert parse_target(text, fake_dns) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.5:99999", "port must be 1-65535"),
        ("10.0.0.5:http", "port must be 1-65535"),
        ("api.example.com", "a domain needs a port"),
        ("nowhere.example.com:80", "nowhere.example.com does not resolve"),
        ("bad host!:80", "not a host:port, CIDR or domain:port"),
    ],
    ids=["port-range", "port-name", "domain-no-port", "unresolvable", "garbage"],
)
def test_parse_target_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as ei:
        parse_target(text, fake_dns)
    assert ei.value.key == "allowed_targets"


def restricted(targets: list[str], **plugin: PluginOverride) -> Settings:
    s = settings(**plugin)
    s.sandboxing.network.mode = "restricted"
    s.sandboxing.network.allowed_targets = targets
    return s


def test_restricted_targets_from_global_list(tmp_path: Path) -> None:
    plan = build_plan(
        restricted(["10.0.0.0/8:443", "api.example.com:443"]), "alpha", tmp_path, resolve=fake_dns
    )
    assert [(t.network, t.port) for t in plan.allowed_targets] == [
        ("10.0.0.0/8", 443),
        ("192.0.2.10/32", 443),
        ("192.0.2.11/32", 443),
    ]
    assert any(b.source == "/etc/resolv.conf" for b in plan.binds) or not Path("/etc/resolv.conf").exists()


def test_override_targets_narrow_within_the_global_list(tmp_path: Path) -> None:
    s = restricted(["10.0.0.0/8:443"], alpha=PluginOverride(allowed_targets=["10.2.3.4:443"]))
    plan = build_plan(s, "alpha", tmp_path, resolve=fake_dns)
    assert [(t.network, t.port) for t in plan.allowed_targets] == [("10.2.3.4/32", 443)]


@pytest.mark.parametrize(
    "override",
    ["10.2.3.4:80", "11.0.0.1:443", "10.0.0.0/7:443", "api.example.com:443"],
    ids=["other-port", "outside", "wider-cidr", "unlisted-domain"],
)
def test_override_targets_cannot_widen(tmp_path: Path, override: str) -> None:
    s = restricted(["10.0.0.0/8:443"], alpha=PluginOverride(allowed_targets=[override]))
    msg = r"is not within the operator's sandboxing\.network\.allowed_targets"
    with pytest.raises(ConfigError, match=msg):
        build_plan(s, "alpha", tmp_path, resolve=fake_dns)


def test_override_targets_need_restricted_mode(tmp_path: Path) -> None:
    s = settings(alpha=PluginOverride(allowed_targets=["10.0.0.1:80"]))
    with pytest.raises(
        ConfigError, match=r"\[plugin.alpha\] allowed_targets needs sandboxing.network.mode"
    ) as ei:
        build_plan(s, "alpha", tmp_path)
    assert ei.value.key == "plugin.alpha.allowed_targets"


def test_host_network_drops_the_net_namespace(tmp_path: Path) -> None:
    s = Settings()
    s.sandboxing.network.mode = "host"
    assert "net" not in build_plan(s, "alpha", tmp_path).namespaces


def test_none_network_needs_a_net_namespace(tmp_path: Path) -> None:
    s = Settings()
    s.sandboxing.namespaces.net = False
    with pytest.raises(ConfigError, match=r"needs sandboxing\.namespaces\.net = true"):
        build_plan(s, "alpha", tmp_path)


def test_config_paths_become_binds(tmp_path: Path) -> None:
    s = Settings()
    s.sandboxing.filesystem.read_only_paths = [Path("/srv/ro")]
    s.sandboxing.filesystem.writable_paths = [Path("/srv/rw")]
    s.sandboxing.filesystem.bind_mounts = [
        {"source": Path("/srv/src"), "target": Path("/data"), "writable": True}
    ]
    binds = build_plan(s, "alpha", tmp_path).binds
    assert Bind("/srv/ro", "/srv/ro") in binds
    assert Bind("/srv/rw", "/srv/rw", writable=True) in binds
    assert Bind("/srv/src", "/data", writable=True) in binds


def test_system_binds_keep_top_level_symlinks_and_skip_missing() -> None:
    binds = system_binds("none", exists=lambda p: p in ("/usr", "/etc/ld.so.cache"))
    sources = [b.source for b in binds]
    assert "/usr" in sources and "/etc/ld.so.cache" in sources
    assert "/etc/shadow" not in sources and "/etc/passwd" not in sources and "/root" not in sources
    assert "/etc/resolv.conf" not in sources  # no network, no resolver config
    for b in binds:
        if Path(b.source).is_symlink() and b.source in ("/bin", "/lib", "/lib64", "/sbin"):
            assert b.symlink is not None


def test_wire_round_trip(tmp_path: Path) -> None:
    plan = build_plan(restricted(["10.0.0.0/8:443"]), "alpha", tmp_path, resolve=fake_dns)
    assert SandboxPlan.from_wire(plan.to_wire()) == plan


def test_to_wire_is_asdict_field_for_field(tmp_path: Path) -> None:
    # to_wire spells the fields out (asdict's deep copy was slow); it must stay exactly asdict.
    s = restricted(["10.0.0.0/8:443", "api.example.com:443"])
    s.sandboxing.filesystem.writable_paths = [str(tmp_path)]
    plan = build_plan(s, "alpha", tmp_path, {"memory_mb": 64}, resolve=fake_dns, instance="2")
    assert plan.allowed_targets and plan.binds and plan.limits.memory_bytes
    wire = plan.to_wire()
    assert wire == asdict(plan)
    assert {k: type(v) for k, v in wire.items()} == {k: type(v) for k, v in asdict(plan).items()}
    assert SandboxPlan.from_wire(wire) == plan


def test_cached_system_binds_are_what_the_checks_give() -> None:
    # Kept between loads while / and /etc keep their identity and mtime: the same answer as checking.
    for mode in ("none", "restricted", "host"):
        first = system_binds(mode)
        assert system_binds(mode) == first == system_binds(mode, exists=os.path.lexists)
        first.append(Bind("/x", "/x"))  # a caller's list: never the cache itself
        assert Bind("/x", "/x") not in system_binds(mode)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "../evil"}, "invalid plugin name"),
        ({"tree": "relative/tree"}, "plugin tree must be an absolute path"),
        ({"cgroup_parent": "../../escape"}, "invalid cgroup parent"),
        (
            {"binds": [{"source": "/x", "target": "/a/../../b", "writable": False, "symlink": None}]},
            "bind target",
        ),
        ({"limits": {"bogus": 1}}, "malformed sandbox plan"),
        ({"instance": "../x"}, "invalid instance"),
        ({"instance": "a/b"}, "invalid instance"),
    ],
    ids=["name", "tree", "cgroup-parent", "bind-target", "malformed", "instance-path", "instance-slash"],
)
def test_from_wire_rejects_bad_plans(tmp_path: Path, change: dict[str, object], message: str) -> None:
    wire = build_plan(Settings(), "alpha", tmp_path).to_wire()
    wire.update(change)
    with pytest.raises(SandboxError, match=message) as ei:
        SandboxPlan.from_wire(wire)
    assert ei.value.step == "plan"
