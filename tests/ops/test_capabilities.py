"""The capabilities every deployment grants are exactly the ones the sandbox's steps need.

The needs are the table in plugind/sandbox/steps.py (which tests/sandbox/test_capabilities.py
holds against the kernel); here the systemd unit, the docker run lines and the Kubernetes
DaemonSet are held against the table, so none of them can drift from it in either direction.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ops.miniyaml import load_all
from ops.test_systemd import UNIT, parse_unit
from plugind.config import load_config
from plugind.sandbox import steps
from plugind.sandbox.plan import build_plan

REPO = Path(__file__).resolve().parents[2]
# A container has no /dev/kmsg unless given one: the best-effort CAP_SYSLOG is documented, not granted.
CONTAINER_NEEDS = {c.removeprefix("CAP_") for c in steps.every_capability(best_effort=False)}


def unit_values(key: str) -> list[str]:
    return [v for k, v in parse_unit(UNIT.read_text())["Service"] if k == key]


def docker_run_caps(text: str) -> tuple[set[str], list[str]]:
    """(--cap-add values, --cap-drop values) of the `docker run -d` command in `text`."""
    lines = [line.strip().lstrip("#").strip() for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("docker run -d"))
    command = []
    for line in lines[start:]:
        command.append(line.rstrip("\\"))
        if not line.endswith("\\"):
            break
    joined = " ".join(command)
    return set(re.findall(r"--cap-add[= ](\S+)", joined)), re.findall(r"--cap-drop[= ](\S+)", joined)


def test_the_table_names_real_capabilities_of_real_steps():
    import prctl

    known = [(n, name) for n, name in enumerate(steps.CAPABILITY_NAMES) if hasattr(prctl, name)]
    assert len(known) >= 38  # python-prctl 1.8 stops at CAP_AUDIT_READ; the newer three are not in it
    for number, name in known:
        assert getattr(prctl, name) == number, name
    for step, needs in steps.CAPABILITIES.items():
        assert step in steps.STEPS or step in steps.HOST_DUTIES, step
        for need in needs:
            assert need.capability in steps.CAPABILITY_NAMES, need
            assert need.when in steps.WHEN, need


def test_unit_bounds_exactly_what_the_steps_need():
    (line,) = unit_values("CapabilityBoundingSet")
    granted = line.split()
    assert len(granted) == len(set(granted))
    assert set(granted) == steps.every_capability()


def test_unit_lets_the_daemon_read_the_kernel_log_for_seccomp_kills():
    # CAP_SYSLOG alone is not enough: ProtectKernelLogs= hides /dev/kmsg, and the closed device
    # policy ProtectClock= implies refuses it unless allowed.
    assert unit_values("ProtectKernelLogs") == []
    assert "/dev/kmsg r" in unit_values("DeviceAllow")
    assert unit_values("ProtectClock") == ["yes"]
    assert "ProtectKernelLogs=      unset: it hides /dev/kmsg" in UNIT.read_text()


def test_the_shipped_configuration_needs_nothing_the_unit_lacks():
    settings = load_config(REPO / "config" / "plugins.toml", env=False)
    plan = build_plan(settings, "example", "/", resolve=lambda _host: ["192.0.2.1"])
    needed = {need.capability for _step, need in steps.needs_for(plan)}
    assert "CAP_SYS_CHROOT" in needed  # the mount template: what the Debian guest's unit lacked
    (line,) = unit_values("CapabilityBoundingSet")
    assert needed <= set(line.split())


@pytest.mark.parametrize("path", ["Dockerfile", "docs/operations.md"])
def test_docker_run_adds_exactly_what_the_steps_need(path):
    added, dropped = docker_run_caps((REPO / path).read_text())
    assert dropped == ["ALL"]
    assert added == CONTAINER_NEEDS


def test_kubernetes_adds_exactly_what_the_steps_need():
    (ds,) = [d for d in load_all((REPO / "deploy/kubernetes/daemonset.yaml").read_text())]
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    caps = container["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    assert len(caps["add"]) == len(set(caps["add"]))
    assert set(caps["add"]) == CONTAINER_NEEDS


def test_operations_doc_lists_the_same_capabilities():
    text = (REPO / "docs/operations.md").read_text()
    section = text.split("### Capabilities", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(CAP_[A-Z_]+)`", section))
    assert steps.every_capability() <= listed
