"""The sandbox's steps in order, and the capabilities each one needs from the daemon: plain data.

`STEPS` is the order `contain.spawn_contained` applies them in (and the keys of a plugin's isolation
report). `CAPABILITIES` says, for each step and for the host-side duties around the steps, which
capability the daemon (and so its fork-server, which inherits its sets) must hold, for which call,
and for which plans. The service unit's `CapabilityBoundingSet=`, the container's `--cap-add` list
and the Kubernetes `capabilities.add` list are checked against this table (tests/ops), and the
table against the kernel: dropping a capability it names breaks the step it names
(tests/sandbox/test_capabilities.py).

Nothing here touches the kernel except `effective_capabilities`, which reads `/proc/self/status`.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from plugind.sandbox.plan import SandboxPlan, system_binds

STEPS = (
    "pid_ns",
    "mount_ns",
    "ipc_ns",
    "uts_ns",
    "net_ns",
    "user_ns",
    "cgroup",
    "filesystem",
    "network",
    "rlimits",
    "no_new_privs",
    "capabilities",
    "seccomp",
)
# Not steps of the child, but done by the daemon for every sandboxed plugin.
HOST_DUTIES = ("monitor", "seccomp_audit")

# linux/capability.h, by number (a kernel ABI: numbers never change, new ones are appended).
CAPABILITY_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip


@dataclass(frozen=True)
class Need:
    """One capability one step needs: for which call, and for which plans (a key of `WHEN`).

    `best_effort`: without it nothing fails, a feature is missing (and the daemon says so).
    """

    capability: str
    call: str
    when: str = "always"
    best_effort: bool = False


def _own(namespace: str) -> Callable[[SandboxPlan], bool]:
    # Without a user namespace the child creates its namespaces in the daemon's user namespace,
    # with the daemon's capabilities; inside a user namespace of its own it holds every capability.
    return lambda plan: namespace in plan.namespaces and not plan.user_namespace


def _operator_binds(plan: SandboxPlan) -> bool:
    ours = {b.source for b in system_binds(plan.network_mode)} | {plan.tree}
    return any(b.symlink is None and b.source not in ours for b in plan.binds)


def _raises_a_hard_limit(plan: SandboxPlan) -> bool:
    wanted = {
        resource.RLIMIT_CORE: plan.rlimit_core,
        resource.RLIMIT_FSIZE: plan.rlimit_fsize_bytes,
        resource.RLIMIT_NOFILE: plan.rlimit_nofile,
    }
    for which, value in wanted.items():
        hard = resource.getrlimit(which)[1]
        if hard != resource.RLIM_INFINITY and value > hard:
            return True
    return False


# Which plans a need applies to: a description (for docs and messages) and the test.
WHEN: dict[str, tuple[str, Callable[[SandboxPlan], bool]]] = {
    "always": ("every sandboxed plugin", lambda plan: True),
    "pid": ("namespaces.pid without a user namespace", _own("pid")),
    "mount": ("namespaces.mount without a user namespace", _own("mount")),
    "ipc": ("namespaces.ipc without a user namespace", _own("ipc")),
    "uts": ("namespaces.uts without a user namespace", _own("uts")),
    "net": ("namespaces.net without a user namespace", _own("net")),
    "user": ("a user namespace (enable_user_namespace or namespaces.user)",
             lambda plan: plan.user_namespace),
    # As root the daemon maps the plugin's root to host nobody, another user: that needs both
    # capabilities. An unprivileged daemon maps its own ids, which the kernel allows without them.
    "user_as_root": ("a user namespace, the daemon running as root",
                     lambda plan: plan.user_namespace and os.geteuid() == 0),
    "no_user": ("no user namespace", lambda plan: not plan.user_namespace),
    "loopback": ("network mode 'none' without a user namespace",
                 lambda plan: plan.network_mode == "none" and _own("net")(plan)),
    "restricted": ("network mode 'restricted'", lambda plan: plan.network_mode == "restricted"),
    "operator_binds": ("read_only_paths, writable_paths or bind_mounts configured", _operator_binds),
    "raises_hard_limit": ("an rlimit above the daemon's own hard limit", _raises_a_hard_limit),
}  # fmt: skip

# Per step (and host duty): what the daemon needs. A step not listed here needs nothing.
CAPABILITIES: dict[str, tuple[Need, ...]] = {
    "pid_ns": (Need("CAP_SYS_ADMIN", "unshare(CLONE_NEWPID), then setns(CLONE_NEWPID) back", "pid"),),
    "mount_ns": (Need("CAP_SYS_ADMIN", "unshare(CLONE_NEWNS)", "mount"),),
    "ipc_ns": (Need("CAP_SYS_ADMIN", "unshare(CLONE_NEWIPC)", "ipc"),),
    "uts_ns": (Need("CAP_SYS_ADMIN", "unshare(CLONE_NEWUTS) and sethostname()", "uts"),),
    "net_ns": (Need("CAP_SYS_ADMIN", "unshare(CLONE_NEWNET)", "net"),),
    "user_ns": (
        Need("CAP_SETGID", "setgroups([]) and gid_map for host nobody", "user_as_root"),
        Need("CAP_SETUID", "uid_map for host nobody", "user_as_root"),
    ),
    # cgroup: the daemon writes files of the subtree delegated to it, which root owns: no capability.
    "filesystem": (
        Need("CAP_SYS_ADMIN", "mount, open_tree, move_mount, mount_setattr, pivot_root", "mount"),
        Need("CAP_SYS_CHROOT", "setns(CLONE_NEWNS) into the shared mount template", "mount"),
        Need("CAP_DAC_OVERRIDE", "reach a bind source that another user owns", "operator_binds"),
    ),
    "network": (
        Need("CAP_NET_ADMIN", "ioctl(SIOCSIFFLAGS) to bring lo up", "loopback"),
        Need("CAP_NET_ADMIN", "veth, addresses, routes and nft rules over netlink", "restricted"),
        Need("CAP_SYS_ADMIN", "setns(CLONE_NEWNET) into the plugin's namespace and back", "restricted"),
    ),
    "rlimits": (Need("CAP_SYS_RESOURCE", "setrlimit() above the hard limit", "raises_hard_limit"),),
    "capabilities": (Need("CAP_SETPCAP", "prctl(PR_CAPBSET_DROP) and the securebits", "no_user"),),
    # no_new_privs and seccomp: a process may always restrict itself (seccomp after no_new_privs).
    "monitor": (
        Need("CAP_SYS_PTRACE", "readlink /proc/PID/fd/N of a plugin (not dumpable): fd and "
             "connection counts", "always"),
    ),
    "seccomp_audit": (
        Need("CAP_SYSLOG", "read /dev/kmsg (dmesg_restrict) to name the system call behind a "
             "seccomp kill", "always", best_effort=True),
    ),
}  # fmt: skip


def applies(need: Need, plan: SandboxPlan) -> bool:
    """Whether `need` holds for `plan` (never for an unsandboxed plan)."""
    return plan.enabled and WHEN[need.when][1](plan)


def needs_for(plan: SandboxPlan) -> list[tuple[str, Need]]:
    """(step or duty, need) for every capability `plan` needs, in step order.

    Capabilities the plugins keep (`sandboxing.allowed_caps`) count too: a plugin can only keep what
    the daemon holds.
    """
    out = [
        (step, need)
        for step in (*STEPS, *HOST_DUTIES)
        for need in CAPABILITIES.get(step, ())
        if applies(need, plan)
    ]
    if plan.enabled:
        out += [
            ("capabilities", Need(cap_name(c), "kept by the plugins (sandboxing.allowed_caps)"))
            for c in plan.allowed_caps
        ]
    return out


def every_capability(*, best_effort: bool = True) -> set[str]:
    """Every capability the table names, whatever the plan: what a service unit must allow."""
    return {
        need.capability
        for needs in CAPABILITIES.values()
        for need in needs
        if best_effort or not need.best_effort
    }


def cap_name(name: str) -> str:
    """'sys_chroot', 'SYS_CHROOT' or 'CAP_SYS_CHROOT' -> 'CAP_SYS_CHROOT'."""
    return "CAP_" + name.strip().upper().removeprefix("CAP_")


def effective_capabilities(status: str | None = None) -> frozenset[str]:
    """The names in `CapEff` of /proc/self/status (or of `status`, its text)."""
    text = Path("/proc/self/status").read_text() if status is None else status
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            bits = int(value.strip(), 16)
            return frozenset(n for i, n in enumerate(CAPABILITY_NAMES) if bits >> i & 1)
    return frozenset()


def missing(
    plan: SandboxPlan, steps: Iterable[str] | None = None, have: frozenset[str] | None = None
) -> list[tuple[str, Need]]:
    """The needs of `plan` (of `steps` only, if given) whose capability is not in `have`.

    `have` defaults to this process's effective set.
    """
    have = effective_capabilities() if have is None else have
    wanted = None if steps is None else set(steps)
    return [
        (step, need)
        for step, need in needs_for(plan)
        if need.capability not in have and (wanted is None or step in wanted)
    ]


def how_to_grant(count: int = 1) -> str:
    """The advice that ends every message about a missing capability (`count` of them)."""
    return (
        f"grant {'it' if count == 1 else 'them'} in the service's CapabilityBoundingSet= (systemd), "
        "with --cap-add (docker) or in the container's securityContext.capabilities.add (Kubernetes)"
    )


def hint(lacking: Iterable[Need]) -> str:
    """For an error message: which capabilities are missing, for what, and how to grant them; or ""."""
    needs = list(lacking)
    if not needs:
        return ""
    caps = sorted({n.capability for n in needs})
    calls = "; ".join(dict.fromkeys(n.call for n in needs))
    return f"plugind lacks {', '.join(caps)}, which this step needs ({calls}): {how_to_grant(len(caps))}"


__all__ = [
    "CAPABILITIES",
    "CAPABILITY_NAMES",
    "HOST_DUTIES",
    "STEPS",
    "WHEN",
    "Need",
    "applies",
    "cap_name",
    "effective_capabilities",
    "every_capability",
    "hint",
    "how_to_grant",
    "missing",
    "needs_for",
]
