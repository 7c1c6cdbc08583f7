"""Namespaces: which flags a plan asks for (pure) and the calls that enter them (ctypes)."""

from __future__ import annotations

import os

from plugind.sandbox import _libc as c
from plugind.sandbox.plan import SandboxPlan

FLAGS = {
    "mount": c.CLONE_NEWNS,
    "ipc": c.CLONE_NEWIPC,
    "uts": c.CLONE_NEWUTS,
    "net": c.CLONE_NEWNET,
    "pid": c.CLONE_NEWPID,
    "user": c.CLONE_NEWUSER,
}


def child_flags(plan: SandboxPlan) -> int:
    """The unshare(2) flags the child applies to itself (everything but pid and user)."""
    flags = 0
    for name in plan.namespaces:
        if name not in ("pid", "user"):
            flags |= FLAGS[name]
    return flags


def enter_pid_namespace_for_children() -> int:
    """unshare(CLONE_NEWPID): our next fork lands as PID 1 of a new pid namespace.

    Only where *children* go changes; returns an fd of our own namespace for
    `restore_pid_namespace`, so the caller never changes namespace. Raises KernelCallError.
    """
    fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        c.unshare(c.CLONE_NEWPID)
    except BaseException:
        os.close(fd)
        raise
    return fd


def restore_pid_namespace(fd: int) -> None:
    """Send later children to our own pid namespace again (setns), and close `fd`."""
    try:
        c.setns(fd, c.CLONE_NEWPID)
    finally:
        os.close(fd)


def unshare(flags: int) -> None:
    """Enter new namespaces. Raises KernelCallError."""
    if flags:
        c.unshare(flags)


def write_id_maps(pid: int, inside_uid: int, outside_uid: int, outside_gid: int) -> None:
    """User namespace maps for `pid`: setgroups deny, then gid_map, then uid_map (in that order)."""
    with open(f"/proc/{pid}/setgroups", "w") as f:
        f.write("deny")
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(f"{inside_uid} {outside_gid} 1")
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(f"{inside_uid} {outside_uid} 1")


__all__ = [
    "FLAGS",
    "child_flags",
    "enter_pid_namespace_for_children",
    "restore_pid_namespace",
    "unshare",
    "write_id_maps",
]
