"""Resource limits set in the child: core dumps off, file size, open files."""

from __future__ import annotations

import resource

from plugind.sandbox.plan import SandboxPlan

NAMES = {
    resource.RLIMIT_CORE: "RLIMIT_CORE",
    resource.RLIMIT_FSIZE: "RLIMIT_FSIZE",
    resource.RLIMIT_NOFILE: "RLIMIT_NOFILE",
}


def limits_for(plan: SandboxPlan) -> dict[int, int]:
    """RLIMIT_* -> value (soft = hard) for `plan`."""
    return {
        resource.RLIMIT_CORE: plan.rlimit_core,
        resource.RLIMIT_FSIZE: plan.rlimit_fsize_bytes,
        resource.RLIMIT_NOFILE: plan.rlimit_nofile,
    }


def apply(plan: SandboxPlan) -> None:
    """Set the limits in this process. Raises OSError/ValueError naming the setrlimit call (raising
    a hard limit needs CAP_SYS_RESOURCE)."""
    for which, value in limits_for(plan).items():
        try:
            resource.setrlimit(which, (value, value))
        except (OSError, ValueError) as exc:
            raise type(exc)(f"setrlimit({NAMES[which]}, {value}): {exc}") from exc


__all__ = ["NAMES", "apply", "limits_for"]
