"""The plugin sandbox: namespaces, cgroups (v2/v1), filesystem, network, capabilities, seccomp.

Public names are loaded lazily, so `from plugind.sandbox import build_plan` in the daemon does not
pay for pyseccomp and pyroute2 (the fork-server imports `plugind.sandbox.contain` itself).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CgroupHandle": "cgroups",
    "CgroupUsage": "cgroups",
    "ChildHooks": "contain",
    "SandboxPlan": "plan",
    "Spawned": "contain",
    "build_plan": "plan",
    "cgroup_for": "cgroups",
    "cleanup": "contain",
    "cleanup_stale": "cgroups",
    "oom_killed": "contain",
    "spawn_contained": "contain",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'plugind.sandbox' has no attribute {name!r}")
    return getattr(importlib.import_module(f"plugind.sandbox.{module}"), name)


__all__ = [
    "CgroupHandle",
    "CgroupUsage",
    "ChildHooks",
    "SandboxPlan",
    "Spawned",
    "build_plan",
    "cgroup_for",
    "cleanup",
    "cleanup_stale",
    "oom_killed",
    "spawn_contained",
]
