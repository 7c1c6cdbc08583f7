"""The capability table (plugind/sandbox/steps.py) against the kernel, and the decisions made of it.

The table says which capability each sandbox step needs. Here a real daemon-side process runs the
real sandbox with one capability taken out of its bounding set: the step the table names must
fail, and its error must name the capability and say how to grant it. (tests/ops holds the unit,
the docker lines and the DaemonSet against the same table.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from plugind.config import Settings
from plugind.sandbox import steps
from plugind.sandbox.plan import build_plan

PROBE = Path(__file__).with_name("capability_probe.py")
USER_NS = {"enable_user_namespace": True}
RESTRICTED = {"network.mode": "restricted", "network.allowed_targets": ["127.0.0.1:9"]}


def plan_for(**overrides: Any) -> Any:
    s = Settings()
    for key, value in overrides.items():
        obj: Any = s.sandboxing
        *path, last = key.split("__")
        for part in path:
            obj = getattr(obj, part)
        setattr(obj, last, value)
    return build_plan(s, "probe", "/", resolve=lambda _host: ["192.0.2.1"])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, {"CAP_SYS_ADMIN", "CAP_SYS_CHROOT", "CAP_NET_ADMIN", "CAP_SETPCAP", "CAP_SYS_PTRACE",
              "CAP_SYSLOG"}),
        ({"enable_user_namespace": True}, {"CAP_SETUID", "CAP_SETGID", "CAP_SYS_PTRACE", "CAP_SYSLOG"}),
        ({"enable_user_namespace": True, "network__mode": "restricted",
          "network__allowed_targets": ["10.0.0.0/8"]},
         {"CAP_SETUID", "CAP_SETGID", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_SYSLOG"}),
        ({"namespaces__mount": False, "namespaces__net": False, "network__mode": "host"},
         {"CAP_SYS_ADMIN", "CAP_SETPCAP", "CAP_SYS_PTRACE", "CAP_SYSLOG"}),
        ({"filesystem__read_only_paths": [Path("/srv")]},
         {"CAP_SYS_ADMIN", "CAP_SYS_CHROOT", "CAP_NET_ADMIN", "CAP_SETPCAP", "CAP_SYS_PTRACE",
          "CAP_SYSLOG", "CAP_DAC_OVERRIDE"}),
        ({"rlimits__nofile": 1 << 40},
         {"CAP_SYS_ADMIN", "CAP_SYS_CHROOT", "CAP_NET_ADMIN", "CAP_SETPCAP", "CAP_SYS_PTRACE",
          "CAP_SYSLOG", "CAP_SYS_RESOURCE"}),
        ({"allowed_caps": ["net_bind_service"]},
         {"CAP_SYS_ADMIN", "CAP_SYS_CHROOT", "CAP_NET_ADMIN", "CAP_SETPCAP", "CAP_SYS_PTRACE",
          "CAP_SYSLOG", "CAP_NET_BIND_SERVICE"}),
        ({"enabled": False}, set()),
    ],
    ids=["default", "user-ns", "user-ns-restricted", "no-mount-no-net", "operator-binds",
         "rlimit-above-hard", "allowed-caps", "unsandboxed"],
)
def test_needs_follow_the_plan(overrides: dict[str, Any], expected: set[str]) -> None:
    assert {need.capability for _step, need in steps.needs_for(plan_for(**overrides))} == expected


def test_effective_set_is_read_from_proc_status() -> None:
    status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000240001\n"
    assert steps.effective_capabilities(status) == {"CAP_CHOWN", "CAP_SYS_CHROOT", "CAP_SYS_ADMIN"}
    assert steps.effective_capabilities("Name:\tx\n") == frozenset()


def test_missing_and_hint_name_the_capability_and_the_fix() -> None:
    plan = plan_for()
    have = steps.every_capability() - {"CAP_SYS_CHROOT"}
    lacking = steps.missing(plan, ["filesystem"], frozenset(have))
    assert [(s, n.capability) for s, n in lacking] == [("filesystem", "CAP_SYS_CHROOT")]
    assert steps.hint(n for _s, n in lacking) == (
        "plugind lacks CAP_SYS_CHROOT, which this step needs (setns(CLONE_NEWNS) into the shared "
        "mount template): grant it in the service's CapabilityBoundingSet= (systemd), with --cap-add "
        "(docker) or in the container's securityContext.capabilities.add (Kubernetes)"
    )
    assert steps.missing(plan, None, frozenset(steps.every_capability())) == []
    assert steps.hint([]) == ""


def probe(drop: str | None, overrides: dict[str, Any], action: str = "spawn") -> dict[str, Any]:
    """capability_probe.py in a process whose bounding set lacks `drop` (so root's exec cannot
    grant it): what a daemon started by a unit without that capability would see."""

    def drop_it() -> None:
        if drop is not None:
            import prctl

            prctl.capbset_drop(getattr(prctl, drop))

    out = subprocess.run(
        [sys.executable, str(PROBE), json.dumps(overrides), action],
        capture_output=True, text=True, timeout=120, preexec_fn=drop_it, check=False,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.root
@pytest.mark.parametrize(
    ("overrides", "inactive"), [({}, {"user_ns": "off"}), (USER_NS, {})], ids=["default", "user-ns"]
)
def test_with_every_capability_every_step_is_active(
    overrides: dict[str, Any], inactive: dict[str, str]
) -> None:
    steps_seen = probe(None, overrides)["steps"]
    assert {k: v for k, v in steps_seen.items() if v != "active"} == inactive


@pytest.mark.root
@pytest.mark.parametrize(
    ("drop", "overrides", "step"),
    [
        ("CAP_SYS_CHROOT", {}, "filesystem"),  # what the Debian 12 guest's unit left out
        ("CAP_SYS_ADMIN", {}, "pid_ns"),
        ("CAP_NET_ADMIN", {}, "network"),
        ("CAP_SETPCAP", {}, "capabilities"),
        ("CAP_SETUID", USER_NS, "user_ns"),
        ("CAP_SETGID", USER_NS, "user_ns"),
        ("CAP_NET_ADMIN", RESTRICTED, "network"),
    ],
    ids=["sys_chroot", "sys_admin", "net_admin", "setpcap", "setuid-user-ns", "setgid-user-ns",
         "net_admin-restricted"],
)
def test_without_a_capability_its_step_fails_and_says_which(
    drop: str, overrides: dict[str, Any], step: str
) -> None:
    assert any(n.capability == drop for n in steps.CAPABILITIES[step])  # the table claims it
    result = probe(drop, overrides)
    assert result.get("step") == step, result
    assert result["missing_caps"] == [drop]
    assert f"plugind lacks {drop}, which this step needs" in result["message"]
    assert "grant it in the service's CapabilityBoundingSet= (systemd)" in result["message"]


@pytest.mark.root
def test_without_sys_ptrace_the_monitor_cannot_read_a_plugins_fds() -> None:
    assert probe(None, {}, "fds")["fd0"] == "/dev/null"
    assert probe("CAP_SYS_PTRACE", {}, "fds")["error"] == "Permission denied"


@pytest.mark.root
def test_without_syslog_the_kernel_log_is_closed() -> None:
    if Path("/proc/sys/kernel/dmesg_restrict").read_text().strip() != "1":
        pytest.skip("dmesg_restrict is 0 here: /dev/kmsg needs no capability")
    assert probe(None, {}, "kmsg") == {"ok": True}
    assert probe("CAP_SYSLOG", {}, "kmsg") == {"error": "Operation not permitted"}


@pytest.mark.root
def test_the_daemon_names_what_it_lacks_at_start_up() -> None:
    assert probe(None, {}, "check") == {"problems": []}
    problems = probe("CAP_SYS_CHROOT", {}, "check")["problems"]
    assert problems == [
        "plugind lacks CAP_SYS_CHROOT (filesystem: setns(CLONE_NEWNS) into the shared mount template): "
        "every sandboxed plugin load will fail at step 'filesystem'; grant it in the service's "
        "CapabilityBoundingSet= (systemd), with --cap-add (docker) or in the container's "
        "securityContext.capabilities.add (Kubernetes)"
    ]
    # Without CAP_SYSLOG nothing fails: seccomp kills lose the system call's name, and it says so.
    (line,) = probe("CAP_SYSLOG", {}, "check")["problems"]
    assert line.startswith("plugind lacks CAP_SYSLOG (seccomp_audit: read /dev/kmsg")
    assert "reported without the system call's name" in line
    assert probe("CAP_SYS_CHROOT", {"enabled": False}, "check") == {"problems": []}
