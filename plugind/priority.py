"""The priority a spare child prepares at while it waits, and whether it can be given back.

Used by the fork-server (the unsandboxed spare) and by the sandbox (the pre-contained spare); no
import beyond the standard library, so the fork-server's heap stays small.
"""

from __future__ import annotations

import resource

SPARE_NICE = 19  # a spare's priority while it prepares: a plugin starting meanwhile gets the CPU first
_CAP_SYS_NICE = 23


def may_raise_priority(nice: int) -> bool:
    """Whether this process (or a child of it, which inherits its capabilities and limits), once at
    SPARE_NICE, may be given the priority `nice` back: raising a priority needs CAP_SYS_NICE or an
    RLIMIT_NICE that allows it (setpriority(2): EACCES otherwise), and a unit may grant neither
    (systemd's CapabilityBoundingSet=, docker's --cap-drop). Without it a spare prepares at its own
    priority: one stuck at nice 19 would make its plugin the slowest process on the host."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    if int(line.split()[1], 16) & (1 << _CAP_SYS_NICE):
                        return True
                    break
    except (OSError, ValueError):
        pass
    soft, _hard = resource.getrlimit(resource.RLIMIT_NICE)  # 20 - nice is the floor it allows
    return soft == resource.RLIM_INFINITY or 20 - nice <= soft


__all__ = ["SPARE_NICE", "may_raise_priority"]
