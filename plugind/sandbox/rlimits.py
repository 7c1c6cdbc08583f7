"""Resource limits set in the child: core dumps off, file size, open files."""

from __future__ import annotations

import resource

from plugind.sandbox.plan import SandboxPlan


def limits_for(plan: SandboxPlan) -> dict[int, int]:
    """RLIMIT_* -> value (soft = hard) for `plan`."""
    return {
        resource.RLIMIT_CORE: plan.rlimit_core,
        resource.RLIMIT_FSIZE: plan.rlimit_fsize_bytes,
        resource.RLIMIT_NOFILE: plan.rlimit_nofile,
    }


def apply(plan: SandboxPlan) -> None:
    """Set the limits in this process. Raises OSError/ValueError from setrlimit."""
    for which, value in limits_for(plan).items():
        resource.setrlimit(which, (value, value))


__all__ = ["apply", "limits_for"]
