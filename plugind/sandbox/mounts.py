"""The plugin's filesystem: a private mount namespace with a tmpfs root, read-only binds, pivot_root.

`mount_ops(plan)` is the pure mount plan (table-tested); `apply(ops, newroot)` runs it in the child.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from plugind.sandbox import _libc as c
from plugind.sandbox.plan import SandboxPlan

DEV_NODES = ("null", "zero", "full", "random", "urandom")
DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}
# /proc entries that leak or change host state: read-only, or hidden under /dev/null (Docker's list).
PROC_READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")
PROC_MASKED = (
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/kallsyms",
    "/proc/acpi",
    "/proc/scsi",
)


@dataclass(frozen=True)
class MountOp:
    """One step of the mount plan; targets are paths inside the new root."""

    kind: str  # bind | symlink | tmpfs | proc | devnode | devlink | readonly | mask
    target: str
    source: str | None = None
    writable: bool = False
    data: str | None = None


def _depth(path: str) -> int:
    return len(Path(path).parts)


def mount_ops(plan: SandboxPlan) -> list[MountOp]:
    """The ordered mount plan for `plan`: parents before children, /proc and /dev last."""
    ops: list[MountOp] = [
        MountOp("tmpfs", "/tmp", writable=True, data=f"size={plan.tmp_size_bytes},mode=1777"),
    ]
    for b in plan.binds:
        if b.symlink is not None:
            ops.append(MountOp("symlink", b.target, source=b.symlink))
        else:
            ops.append(MountOp("bind", b.target, source=b.source, writable=b.writable))
    ops.sort(key=lambda op: _depth(op.target))  # stable: config order kept within a depth
    ops.append(MountOp("tmpfs", "/dev", data="size=65536,mode=755"))
    ops += [MountOp("devnode", f"/dev/{n}", source=f"/dev/{n}", writable=True) for n in DEV_NODES]
    ops += [MountOp("devlink", f"/dev/{n}", source=t) for n, t in DEV_LINKS.items()]
    ops.append(MountOp("readonly", "/dev"))
    ops.append(MountOp("proc", "/proc"))
    ops += [MountOp("readonly", p) for p in PROC_READ_ONLY]
    ops += [MountOp("mask", p, source="/dev/null") for p in PROC_MASKED]
    return ops


def newroot_dir() -> str:
    """A host directory to mount the new root on (only ever mounted inside the private namespace)."""
    for base in ("/run/plugind", os.path.join(tempfile.gettempdir(), f"plugind-{os.geteuid()}")):
        path = os.path.join(base, "newroot")
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            return path
        except OSError:
            continue
    raise OSError("no directory for the sandbox root (tried /run/plugind and the temp dir)")


def _make_path(root: str, target: str, *, directory: bool) -> str:
    """Create `target` under `root` component by component, refusing to follow any symlink."""
    cur = root
    parts = [p for p in Path(target).parts if p != "/"]
    for i, part in enumerate(parts):
        if part in (".", ".."):
            raise c.KernelCallError(f"mkdir({target!r}): '..' in mount target", 22)
        cur = os.path.join(cur, part)
        last = i == len(parts) - 1
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            if last and not directory:
                os.close(os.open(cur, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
            else:
                os.mkdir(cur, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise c.KernelCallError(f"mount target {target!r}: {cur} is a symlink", 40)  # ELOOP
    return cur


_RO = c.MOUNT_ATTR_RDONLY | c.MOUNT_ATTR_NOSUID | c.MOUNT_ATTR_NODEV
_RW = c.MOUNT_ATTR_NOSUID | c.MOUNT_ATTR_NODEV


def _apply_one(op: MountOp, root: str) -> None:
    if op.kind == "symlink":
        assert op.source is not None
        dst = os.path.join(root, op.target.lstrip("/"))
        _make_path(root, os.path.dirname(op.target), directory=True)
        os.symlink(op.source, dst)
    elif op.kind in ("bind", "devnode", "mask"):
        assert op.source is not None
        try:
            is_dir = stat.S_ISDIR(os.stat(op.source).st_mode)
        except OSError as exc:
            raise c.KernelCallError(f"stat({op.source!r})", exc.errno or 2) from exc
        if op.kind == "mask":
            dst = os.path.join(root, op.target.lstrip("/"))
            if not os.path.lexists(dst):
                return
            if os.path.isdir(dst):
                c.mount("tmpfs", dst, "tmpfs", c.MS_RDONLY | c.MS_NOSUID | c.MS_NODEV, "size=0")
                return
        else:
            dst = _make_path(root, op.target, directory=is_dir)
        c.mount(op.source, dst, None, c.MS_BIND | c.MS_REC)
        if op.kind == "bind":
            c.mount_setattr(dst, _RW if op.writable else _RO, recursive=True)
    elif op.kind == "tmpfs":
        dst = _make_path(root, op.target, directory=True)
        flags = c.MS_NOSUID | c.MS_NODEV | (0 if op.target == "/dev" else c.MS_NOEXEC)
        if op.target == "/dev":
            flags = c.MS_NOSUID | c.MS_NOEXEC
        c.mount("tmpfs", dst, "tmpfs", flags, op.data)
    elif op.kind == "devlink":
        assert op.source is not None
        os.symlink(op.source, os.path.join(root, op.target.lstrip("/")))
    elif op.kind == "proc":
        dst = _make_path(root, op.target, directory=True)
        c.mount("proc", dst, "proc", c.MS_NOSUID | c.MS_NODEV | c.MS_NOEXEC)
    elif op.kind == "readonly":
        dst = os.path.join(root, op.target.lstrip("/"))
        if not os.path.lexists(dst):
            return
        if op.target != "/dev":
            c.mount(dst, dst, None, c.MS_BIND | c.MS_REC)
        c.mount_setattr(dst, c.MOUNT_ATTR_RDONLY | c.MOUNT_ATTR_NOSUID, recursive=op.target != "/dev")
    else:  # pragma: no cover - the plan only produces the kinds above
        raise ValueError(op.kind)


def apply(ops: list[MountOp], newroot: str) -> None:
    """In the child, inside its new mount (and pid) namespace: build the root and pivot into it.

    Raises KernelCallError naming the failing call.
    """
    c.mount(None, "/", None, c.MS_REC | c.MS_PRIVATE)
    c.mount("tmpfs", newroot, "tmpfs", c.MS_NOSUID | c.MS_NODEV, "size=1048576,mode=755")
    for op in ops:
        try:
            _apply_one(op, newroot)
        except OSError as exc:
            if isinstance(exc, c.KernelCallError):
                raise
            raise c.KernelCallError(f"{op.kind} {op.target}: {exc.strerror}", exc.errno or 5) from exc
    os.chdir(newroot)
    c.pivot_root(".", ".")
    c.umount2(".", c.MNT_DETACH)
    os.chdir("/")
    c.mount_setattr("/", c.MOUNT_ATTR_RDONLY | c.MOUNT_ATTR_NOSUID | c.MOUNT_ATTR_NODEV, recursive=False)


__all__ = ["MountOp", "apply", "mount_ops", "newroot_dir"]
