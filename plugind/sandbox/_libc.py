"""The thin ctypes layer over the Linux calls Python 3.11 lacks (unshare, setns, mount, pivot_root...)."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import signal
import threading

_libc = ctypes.CDLL(None, use_errno=True)
# The same library, called with the GIL held (clone3: the interpreter must not run between the
# fork hooks and the call, exactly as os.fork does it).
_pylibc = ctypes.PyDLL(None, use_errno=True)
_pylibc.syscall.restype = ctypes.c_long

# x86_64 syscall numbers for calls glibc 2.36 has no wrapper for.
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "mount_setattr": 442, "open_tree": 428, "move_mount": 429, "clone3": 435},
    "aarch64": {"pivot_root": 41, "mount_setattr": 442, "open_tree": 428, "move_mount": 429, "clone3": 435},
}
_NR = _SYSCALLS.get(platform.machine(), _SYSCALLS["x86_64"])

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000
CLONE_PARENT = 0x00008000
CLONE_INTO_CGROUP = 0x200000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_MOVE = 8192
MNT_DETACH = 2

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4

PR_SET_PDEATHSIG = 1
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4


class KernelCallError(OSError):
    """A failed system call; `call` names it with its arguments, for SandboxError.detail."""

    def __init__(self, call: str, err: int) -> None:
        super().__init__(err, f"{call}: {errno.errorcode.get(err, str(err))} ({os.strerror(err)})")
        self.call = call

    def __str__(self) -> str:
        return str(self.strerror)


def _check(res: int, call: str) -> int:
    if res == -1:
        raise KernelCallError(call, ctypes.get_errno())
    return res


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def unshare(flags: int) -> None:
    """unshare(2). Raises KernelCallError."""
    _check(_libc.unshare(ctypes.c_int(flags)), f"unshare({flags:#x})")


def setns(fd: int, nstype: int) -> None:
    """setns(2). Raises KernelCallError."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), f"setns({fd}, {nstype:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """mount(2). Raises KernelCallError."""
    res = _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _check(res, f"mount({source!r}, {target!r}, {fstype!r}, {flags:#x}, {data!r})")


def umount2(target: str, flags: int) -> None:
    """umount2(2). Raises KernelCallError."""
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), f"umount2({target!r}, {flags:#x})")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2). Raises KernelCallError."""
    res = _libc.syscall(ctypes.c_long(_NR["pivot_root"]), _b(new_root), _b(put_old))
    _check(res, f"pivot_root({new_root!r}, {put_old!r})")


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(path: str, attr_set: int, *, recursive: bool) -> None:
    """mount_setattr(2) (Linux 5.12+): set attributes on a mount and, if recursive, all below it.

    Raises KernelCallError.
    """
    attr = _MountAttr(attr_set, 0, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    res = _libc.syscall(
        ctypes.c_long(_NR["mount_setattr"]),
        ctypes.c_int(AT_FDCWD),
        _b(path),
        ctypes.c_uint(flags),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(res, f"mount_setattr({path!r}, set={attr_set:#x}, recursive={recursive})")


def open_tree_clone(path: str) -> int:
    """open_tree(OPEN_TREE_CLONE|AT_RECURSIVE): a detached copy of the mount tree at `path`.

    Raises KernelCallError.
    """
    flags = OPEN_TREE_CLONE | AT_RECURSIVE | os.O_CLOEXEC
    res = _libc.syscall(
        ctypes.c_long(_NR["open_tree"]), ctypes.c_int(AT_FDCWD), _b(path), ctypes.c_uint(flags)
    )
    return _check(res, f"open_tree({path!r}, OPEN_TREE_CLONE|AT_RECURSIVE)")


def mount_setattr_fd(fd: int, attr_set: int) -> None:
    """mount_setattr on a detached tree (fd from open_tree), recursively. Raises KernelCallError."""
    attr = _MountAttr(attr_set, 0, 0, 0)
    res = _libc.syscall(
        ctypes.c_long(_NR["mount_setattr"]),
        ctypes.c_int(fd),
        b"",
        ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(res, f"mount_setattr(fd {fd}, set={attr_set:#x}, recursive=True)")


def move_mount_fd(fd: int, target: str) -> None:
    """move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH): attach a detached tree.

    Raises KernelCallError.
    """
    res = _libc.syscall(
        ctypes.c_long(_NR["move_mount"]),
        ctypes.c_int(fd),
        b"",
        ctypes.c_int(AT_FDCWD),
        _b(target),
        ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
    )
    _check(res, f"move_mount(fd {fd}, {target!r})")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2) for the options python-prctl lacks (ambient capabilities). Raises KernelCallError."""
    res = _libc.prctl(
        ctypes.c_int(option),
        ctypes.c_ulong(arg2),
        ctypes.c_ulong(arg3),
        ctypes.c_ulong(arg4),
        ctypes.c_ulong(arg5),
    )
    return _check(res, f"prctl({option}, {arg2}, {arg3})")


def prctl_ptr(option: int, arg2: int, address: int) -> None:
    """prctl(2) whose third argument is a pointer (PR_SET_SECCOMP). Raises KernelCallError."""
    res = _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_void_p(address), None, None)
    _check(res, f"prctl({option}, {arg2}, <pointer>)")


def sethostname(name: str) -> None:
    """sethostname(2). Raises KernelCallError."""
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), f"sethostname({name!r})")


def thread_count() -> int:
    """The calling process's threads, those C code started included (which `threading` does not
    see), from /proc/self/task. Raises OSError."""
    return len(os.listdir("/proc/self/task"))


class _CloneArgs(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("pidfd", ctypes.c_uint64),
        ("child_tid", ctypes.c_uint64),
        ("parent_tid", ctypes.c_uint64),
        ("exit_signal", ctypes.c_uint64),
        ("stack", ctypes.c_uint64),
        ("stack_size", ctypes.c_uint64),
        ("tls", ctypes.c_uint64),
        ("set_tid", ctypes.c_uint64),
        ("set_tid_size", ctypes.c_uint64),
        ("cgroup", ctypes.c_uint64),
    ]


def fork_into_cgroup(cgroup_fd: int, *, sibling: bool = False) -> int:
    """os.fork(), but the child is born in the cgroup2 group open at `cgroup_fd`
    (clone3 with CLONE_INTO_CGROUP, Linux 5.7+). Returns 0 in the child, its pid in the parent.
    With `sibling`, the child is our parent's child, not ours (CLONE_PARENT: it reaps it).

    The kernel then takes only the read side of the cgroup thread-group lock, where moving a
    process after its birth (a `cgroup.procs` write) takes the write side, which waits out an RCU
    grace period when no move happened for a while. Like os.fork, it runs the interpreter's fork
    hooks (PyOS_BeforeFork, PyOS_AfterFork_*) with the GIL held; unlike it, not the C library's
    pthread_atfork handlers, nor its per-thread bookkeeping of the child's thread id: call it only
    from a single-threaded process (checked: /proc/self/task; RuntimeError otherwise, nothing
    forked). Raises KernelCallError: ENOSYS where the kernel or a seccomp filter (container
    runtimes' default profiles) refuses clone3, and whatever the kernel says of the group (EBUSY:
    it hands controllers down; EBADF: not a cgroup2 group).
    """
    try:
        threads = thread_count()
    except FileNotFoundError:  # in a root without /proc (a spare's, before its plugin mounts it)
        threads = threading.active_count()
    if threads != 1:
        raise RuntimeError(f"clone3(CLONE_INTO_CGROUP) from a process of {threads} threads: refused, "
                           "the C library's state of the child would be wrong")
    flags = CLONE_INTO_CGROUP | (CLONE_PARENT if sibling else 0)
    # A sibling's exit signal is our own (the kernel requires 0 here): SIGCHLD to the parent.
    args = _CloneArgs(flags=flags, exit_signal=0 if sibling else signal.SIGCHLD, cgroup=cgroup_fd)
    call = f"clone3(CLONE_INTO_CGROUP{'|CLONE_PARENT' if sibling else ''}, cgroup fd {cgroup_fd})"
    _pylibc.PyOS_BeforeFork()
    size = ctypes.c_size_t(ctypes.sizeof(args))
    pid = _pylibc.syscall(ctypes.c_long(_NR["clone3"]), ctypes.byref(args), size)
    if pid == 0:
        _pylibc.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    _pylibc.PyOS_AfterFork_Parent()
    if pid == -1:
        raise KernelCallError(call, err)
    return int(pid)
