"""The plugin's filesystem: a private mount namespace with a tmpfs root, read-only binds, pivot_root.

`mount_ops(plan)` is the pure mount plan (table-tested); `apply(ops, newroot)` runs it in the child.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
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
    # len(PurePosixPath(path).parts), without its objects: a sandboxed spawn sorts ~20 targets.
    return len([p for p in path.split("/") if p and p != "."]) + path.startswith("/")


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


def _apply_one(op: MountOp, root: str, fds: dict[str, int] | None = None) -> None:
    if op.kind == "symlink":
        assert op.source is not None
        dst = os.path.join(root, op.target.lstrip("/"))
        _make_path(root, os.path.dirname(op.target), directory=True)
        os.symlink(op.source, dst)
    elif op.kind in ("bind", "devnode", "mask"):
        assert op.source is not None
        fd = (fds or {}).get(op.source) if op.kind == "bind" else None
        try:
            is_dir = op.kind == "bind" and stat.S_ISDIR(
                (os.stat(op.source) if fd is None else os.fstat(fd)).st_mode
            )
        except OSError as exc:
            raise c.KernelCallError(f"stat({op.source!r})", exc.errno or 2) from exc
        source = op.source if fd is None else f"/proc/self/fd/{fd}"
        if op.kind == "mask":
            source = os.path.join(root, "dev/null")  # the new root's own /dev/null
            dst = os.path.join(root, op.target.lstrip("/"))
            if not os.path.lexists(dst):
                return
            if os.path.isdir(dst):
                c.mount("tmpfs", dst, "tmpfs", c.MS_RDONLY | c.MS_NOSUID | c.MS_NODEV, "size=0")
                return
        else:
            dst = _make_path(root, op.target, directory=is_dir)
        c.mount(source, dst, None, c.MS_BIND | c.MS_REC)
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


def apply(ops: list[MountOp], newroot: str, become: Callable[[], None] | None = None) -> None:
    """In the child, inside its new mount (and pid) namespace: build the root and pivot into it.

    `become` (user namespace path) switches to the namespace's root after every bind source has
    been opened (O_PATH) with our host identity, which may traverse the daemon's own directories;
    the new root's files must be created by a uid mapped in the namespace.
    Raises KernelCallError naming the failing call.
    """
    c.mount(None, "/", None, c.MS_REC | c.MS_PRIVATE)
    fds: dict[str, int] = {}
    if become is not None:
        for op in ops:
            if op.kind == "bind" and op.source is not None and op.source not in fds:
                try:
                    fds[op.source] = os.open(op.source, os.O_PATH | os.O_CLOEXEC)
                except OSError as exc:
                    raise c.KernelCallError(f"stat({op.source!r})", exc.errno or 2) from exc
        become()
    c.mount("tmpfs", newroot, "tmpfs", c.MS_NOSUID | c.MS_NODEV, "size=1048576,mode=755")
    for op in ops:
        try:
            _apply_one(op, newroot, fds)
        except OSError as exc:
            if isinstance(exc, c.KernelCallError):
                raise
            raise c.KernelCallError(f"{op.kind} {op.target}: {exc.strerror}", exc.errno or 5) from exc
    for fd in fds.values():
        os.close(fd)
    _pivot(newroot)


# --- the shared template -------------------------------------------------------------------------
#
# Detaching the copy of the host's mount tree after pivot_root costs ~5 ms of kernel time per child.
# So the parts every plugin shares (system binds, config binds, /dev) are built ONCE into a template
# mount namespace, held by an nsfs fd. A child joins it (setns), takes a private copy (unshare),
# moves the shared mounts onto a fresh tmpfs root, adds its own tree (open_tree in the host
# namespace beforehand), /tmp and /proc, and pivots: the old root it detaches is one tiny tmpfs.

STAGE = ".newroot"
_PER_CHILD_KINDS = ("proc", "mask")


@dataclass(frozen=True)
class Split:
    """A mount plan split into the shared template and what each child mounts itself."""

    shared: tuple[MountOp, ...]
    per_child: tuple[MountOp, ...]
    tops: tuple[str, ...]  # top-level mount targets of the template, moved into each child's root
    symlinks: tuple[MountOp, ...]


def _under(path: str, parent: str) -> bool:
    return path != parent and path.startswith(parent.rstrip("/") + "/")


def split_ops(ops: list[MountOp], tree: str) -> Split | None:
    """Split `ops` for the template path; None when it does not apply (a shared mount under /tmp)."""
    shared: list[MountOp] = []
    per_child: list[MountOp] = []
    for op in ops:
        child_only = (
            op.kind in _PER_CHILD_KINDS
            or (op.kind == "tmpfs" and op.target == "/tmp")
            or (op.kind == "bind" and op.source == tree and op.target == tree)
            or (op.kind == "readonly" and op.target != "/dev")
        )
        (per_child if child_only else shared).append(op)
    mounted = [op.target for op in shared if op.kind in ("bind", "tmpfs")]
    if any(t == "/tmp" or _under(t, "/tmp") for t in mounted):
        return None
    tops = tuple(t for t in mounted if not any(_under(t, other) for other in mounted))
    symlinks = tuple(op for op in shared if op.kind == "symlink")
    return Split(tuple(shared), tuple(per_child), tops, symlinks)


_TEMPLATES: dict[tuple[MountOp, ...], int] = {}


def template_for(split: Split) -> int:
    """An fd of the template namespace for `split.shared`, built on first use.

    Raises KernelCallError if it cannot be built (callers fall back to the direct path).
    """
    fd = _TEMPLATES.get(split.shared)
    if fd is None:
        fd = _build_template(split.shared)
        _TEMPLATES[split.shared] = fd
    return fd


def _build_template(shared: tuple[MountOp, ...]) -> int:
    newroot = newroot_dir()
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the builder child
        try:
            os.close(r)
            os.close(go_w)
            c.unshare(c.CLONE_NEWNS)
            c.mount(None, "/", None, c.MS_REC | c.MS_PRIVATE)
            c.mount("tmpfs", newroot, "tmpfs", c.MS_NOSUID | c.MS_NODEV, "size=1048576,mode=755")
            for op in shared:
                _apply_one(op, newroot)
            os.mkdir(os.path.join(newroot, STAGE), 0o755)
            _pivot(newroot)
            os.write(w, b"k")
            os.read(go_r, 1)  # hold the namespace until the parent has its fd
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(w, b"e" + str(exc).encode()[:1000])
        finally:
            os._exit(0)
    os.close(w)
    os.close(go_r)
    try:
        msg = os.read(r, 2048)
        if msg[:1] != b"k":
            raise c.KernelCallError(f"mount template: {msg[1:].decode(errors='replace')}", 5)
        return os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(go_w)
        os.close(r)
        os.waitpid(pid, 0)


def _pivot(newroot: str, *, seal: bool = True) -> None:
    os.chdir(newroot)
    c.pivot_root(".", ".")
    c.umount2(".", c.MNT_DETACH)
    os.chdir("/")
    if seal:
        _seal_root()


def _seal_root() -> None:
    c.mount_setattr("/", c.MOUNT_ATTR_RDONLY | c.MOUNT_ATTR_NOSUID | c.MOUNT_ATTR_NODEV, recursive=False)


def open_tree_ro(path: str) -> int:
    """A detached, read-only, nosuid, nodev copy of the mount tree at `path` (in our namespace)."""
    fd = c.open_tree_clone(path)
    try:
        c.mount_setattr_fd(fd, _RO)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _stage_from_template(template_fd: int, split: Split) -> str:
    # Join the template, take a private copy, and stage in it what every child shares: the
    # symlinks and the template's top mounts moved in. Returns the stage (the root-to-be).
    c.setns(template_fd, c.CLONE_NEWNS)
    c.unshare(c.CLONE_NEWNS)
    stage = "/" + STAGE
    c.mount("tmpfs", stage, "tmpfs", c.MS_NOSUID | c.MS_NODEV, "size=1048576,mode=755")
    for op in split.symlinks:
        _apply_one(op, stage)
    for top in split.tops:
        dst = _make_path(stage, top, directory=os.path.isdir(top))
        c.mount(top, dst, None, c.MS_MOVE)
    return stage


def apply_from_template(template_fd: int, split: Split, tree: str, tree_fd: int) -> None:
    """In the child: join the template, take a private copy, assemble our root, pivot into it.

    Raises KernelCallError naming the failing call.
    """
    stage = _stage_from_template(template_fd, split)
    for op in split.per_child:
        if op.kind == "bind" and op.target == tree:
            c.move_mount_fd(tree_fd, _make_path(stage, tree, directory=True))
        else:
            _apply_one(op, stage)
    os.close(tree_fd)
    _pivot(stage)


def _is_tree_op(op: MountOp, tree: str) -> bool:
    return op.kind == "bind" and op.source == tree and op.target == tree


def plugin_independent(split: Split, tree: str) -> tuple[tuple[MountOp, ...], tuple[MountOp, ...]]:
    """What of `split` does not depend on the plugin's tree: (shared, per-child ops but the tree's).
    Two plans with equal values build the same root but for the tree (a pre-contained spare's fit)."""
    return split.shared, tuple(op for op in split.per_child if not _is_tree_op(op, tree))


def _in_proc(op: MountOp) -> bool:
    return op.target == "/proc" or _under(op.target, "/proc")


def prebuild_from_template(template_fd: int, split: Split, tree: str, *, with_proc: bool = True) -> None:
    """In a pre-contained spare: `apply_from_template` without the plugin's tree, pivoted, the new
    root left writable; `finish_with_tree` adds the tree at hand-off and makes the root read-only.
    Without `with_proc`, /proc is left an empty directory, for `mount_proc` (a spare that is not
    in the pid namespace its plugin will be: a procfs shows the pid namespace of its mounter).
    Raises KernelCallError naming the failing call."""
    stage = _stage_from_template(template_fd, split)
    for op in split.per_child:
        if _is_tree_op(op, tree):
            continue
        if not with_proc and _in_proc(op):
            if op.kind == "proc":
                _make_path(stage, op.target, directory=True)
            continue
        _apply_one(op, stage)
    _pivot(stage, seal=False)


def mount_proc(split: Split) -> None:
    """In a plugin whose root a spare prebuilt without /proc (`prebuild_from_template`), inside its
    pid namespace: /proc, and the read-only and hidden parts of it. Raises KernelCallError."""
    for op in split.per_child:
        if _in_proc(op):
            _apply_one(op, "/")


def finish_with_tree(tree: str, tree_fd: int) -> None:
    """At hand-off, in the spare's prebuilt root: mount the plugin's tree (`open_tree_ro`, made in
    the host's namespace) at its path, then make the root read-only, as `_pivot` does."""
    c.move_mount_fd(tree_fd, _make_path("/", tree, directory=True))
    os.close(tree_fd)
    _seal_root()


__all__ = [
    "MountOp",
    "Split",
    "apply",
    "apply_from_template",
    "finish_with_tree",
    "mount_ops",
    "mount_proc",
    "newroot_dir",
    "open_tree_ro",
    "plugin_independent",
    "prebuild_from_template",
    "split_ops",
    "template_for",
]
