"""Seccomp filters: the rule lists are pure data (table-tested); `build` turns them into filters.

Two filters are stacked in `default` mode (the kernel applies the strictest answer of all):
  * the guard: allows everything except the worst calls (KILL) and ioctl TIOCSTI/TIOCLINUX (EPERM);
    a separate filter because libseccomp cannot mix an unconditional allow with argument rules;
  * the allowlist: what a Python interpreter needs; EPERM for everything else.
`strict` mode stacks a third filter once the plugin is imported: a hook-time allowlist that kills the
process on anything else (no socket, no execve, no fork).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import platform
import socket
import tempfile
import termios
from dataclasses import dataclass

import pyseccomp as sc  # imported once here: ~20 ms, paid when the fork-server pre-imports us

from plugind.sandbox import _libc

ALLOW, EPERM, ENOSYS, KILL = "allow", "eperm", "enosys", "kill"

# Namespace flags that clone(2) must never carry inside the sandbox.
CLONE_NS_MASK = (
    _libc.CLONE_NEWNS
    | _libc.CLONE_NEWCGROUP
    | _libc.CLONE_NEWUTS
    | _libc.CLONE_NEWIPC
    | _libc.CLONE_NEWUSER
    | _libc.CLONE_NEWPID
    | _libc.CLONE_NEWNET
)
TIOCSTI = termios.TIOCSTI
TIOCLINUX = 0x541C
SOCK_TYPE_MASK = 0xF

# Killing calls: loading kernel code, rebooting, swapping. A plugin has no business near them.
KILL_CALLS = (
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
)
# Denied with EPERM (they are outside the allowlist anyway; listed so the intent is visible).
DENY_CALLS = (
    "ptrace",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "userfaultfd",
    "process_vm_readv",
    "process_vm_writev",
    "open_by_handle_at",
    "name_to_handle_at",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "mknod",
    "mknodat",
    "sethostname",
    "setdomainname",
    "acct",
    "quotactl",
    "syslog",
    "lookup_dcookie",
    "kcmp",
    "fanotify_init",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "iopl",
    "ioperm",
    "pidfd_getfd",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "vhangup",
    "uselib",
    "ustat",
    "sysfs",
    "personality",
    "move_pages",
    "mbind",
    "set_mempolicy",
    "migrate_pages",
    "vmsplice",
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setfsuid",
    "setfsgid",
    "setgroups",
    "capset",
)
# What CPython, its stdlib and common pure-Python packages call.
ALLOWED_CALLS = (
    "accept",
    "accept4",
    "access",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "capget",
    "chdir",
    "chmod",
    "chown",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futex_waitv",
    "get_robust_list",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "ioctl",
    "kill",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lseek",
    "lstat",
    "madvise",
    "membarrier",
    "memfd_create",
    "mincore",
    "mkdir",
    "mkdirat",
    "mmap",
    "mprotect",
    "mremap",
    "msync",
    "munmap",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "pselect6",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_tid_address",
    "setitimer",
    "setpgid",
    "setsid",
    "setsockopt",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync_file_range",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "wait4",
    "waitid",
    "write",
    "writev",
)
# What a running hook needs in strict mode (after the plugin is imported): no socket, exec or fork.
STRICT_CALLS = (
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "recvfrom",
    "recvmsg",
    "sendto",
    "sendmsg",
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "epoll_wait",
    "epoll_pwait",
    "epoll_ctl",
    "futex",
    "mmap",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "brk",
    "clock_gettime",
    "clock_getres",
    "clock_nanosleep",
    "nanosleep",
    "gettimeofday",
    "getcpu",  # sched_getcpu() when neither rseq nor the vDSO answers (the runtime reports its CPU)
    "getpid",
    "gettid",
    "getppid",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sigaltstack",
    "exit",
    "exit_group",
    "openat",
    "open",
    "close",
    "fstat",
    "newfstatat",
    "stat",
    "lstat",
    "statx",
    "lseek",
    "getdents64",
    "fcntl",
    "dup",
    "getrandom",
    "sched_yield",
    "getcwd",
    "ioctl",
    "wait4",
    "restart_syscall",
    "set_robust_list",
    "rseq",
    "readlink",
    "readlinkat",
    "access",
    "faccessat2",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "kill",
    "tgkill",
    "uname",
    "sched_getaffinity",
    "prlimit64",
    "getrusage",
    "times",
    "sysinfo",
    "pipe2",
    "eventfd2",
    "setitimer",
    "getitimer",
    "alarm",
    "rt_sigtimedwait",
    "rt_sigpending",
    "rt_sigsuspend",
    "membarrier",
    "sched_getparam",
    "sched_getscheduler",
    "shutdown",
    "getsockopt",
    "getsockname",
    "getpeername",
    "recvmmsg",
    "sendmmsg",
    "epoll_pwait2",
    "fstatfs",
    "statfs",
)


@dataclass(frozen=True)
class Rule:
    """One seccomp rule as data: (action, syscall, argument comparisons (index, op, a, b))."""

    action: str
    syscall: str
    args: tuple[tuple[int, str, int, int], ...] = ()


def socket_families(network_mode: str) -> tuple[int, ...]:
    """Socket families a plugin may open: AF_UNIX always; IP (and route netlink) with a network."""
    if network_mode == "none":
        return (socket.AF_UNIX,)
    return (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)


def guard_rules() -> list[Rule]:
    """The first filter (default allow): kill the worst calls, refuse terminal injection."""
    rules = [Rule(KILL, name) for name in KILL_CALLS]
    for req in (TIOCSTI, TIOCLINUX):
        rules.append(Rule(EPERM, "ioctl", ((1, "masked_eq", 0xFFFFFFFF, req),)))
    return rules


def allow_rules(network_mode: str) -> list[Rule]:
    """The allowlist filter (default EPERM) for `network_mode`."""
    rules = [Rule(ALLOW, name) for name in ALLOWED_CALLS]
    rules.append(Rule(ALLOW, "clone", ((0, "masked_eq", CLONE_NS_MASK, 0),)))
    rules.append(Rule(ENOSYS, "clone3"))  # its flags live in memory we cannot inspect: libc falls back
    for family in socket_families(network_mode):
        if family == socket.AF_UNIX:
            rules.append(Rule(ALLOW, "socket", ((0, "eq", family, 0),)))
            rules.append(Rule(ALLOW, "socketpair", ((0, "eq", family, 0),)))
            continue
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):  # never SOCK_RAW / SOCK_PACKET
            args = ((0, "eq", family, 0), (1, "masked_eq", SOCK_TYPE_MASK, kind))
            rules.append(Rule(ALLOW, "socket", args))
    return rules


def strict_rules() -> list[Rule]:
    """The stacked hook-time allowlist of strict mode (default: kill the process)."""
    rules = [Rule(ALLOW, name) for name in STRICT_CALLS]
    # threads only: clone must carry CLONE_THREAD, and never a namespace flag
    mask = _libc.CLONE_THREAD | CLONE_NS_MASK
    rules.append(Rule(ALLOW, "clone", ((0, "masked_eq", mask, _libc.CLONE_THREAD),)))
    rules.append(Rule(ENOSYS, "clone3"))
    return rules


# --- building filters (libseccomp) ------------------------------------------------------------------

_OPS = {"eq": sc.EQ, "masked_eq": sc.MASKED_EQ}
_ACTIONS = {
    ALLOW: sc.ALLOW,
    EPERM: sc.ERRNO(errno.EPERM),
    ENOSYS: sc.ERRNO(errno.ENOSYS),
    KILL: sc.KILL_PROCESS,
}


def _arch_extra() -> list[int]:
    # Filter the 32-bit compat entry points too: int 0x80 from a 64-bit process is still a syscall.
    return [sc.Arch.X86] if platform.machine() == "x86_64" else []


# libseccomp's binary-tree layout (SCMP_FLTATR_CTL_OPTIMIZE = 2, libseccomp >= 2.5): the same rules and
# the same answer for every call, with the syscall number found in ~log2(n) comparisons rather than
# down a linear chain. The kernel emulates a new filter for every syscall number of every
# architecture when it is loaded (seccomp's action cache), and runs it on every call of the plugin:
# the 479-instruction linear allowlist took ~0.78 ms to load, this one ~0.3 ms.
OPTIMIZE_BINARY_TREE = 2


def _build(default: str, rules: list[Rule], *, optimize: bool = True) -> sc.SyscallFilter:
    f = sc.SyscallFilter(_ACTIONS[default])
    if optimize:
        with contextlib.suppress(OSError, ValueError, RuntimeError):  # older libseccomp: linear, same rules
            f.set_attr(sc.Attr.CTL_OPTIMIZE, OPTIMIZE_BINARY_TREE)
    for arch in _arch_extra():
        f.add_arch(arch)
    for rule in rules:
        # libseccomp: EQ compares with datum a; MASKED_EQ is (arg & a) == b.
        args = [sc.Arg(i, _OPS[op], a, b) for i, op, a, b in rule.args]
        try:
            f.add_rule(_ACTIONS[rule.action], rule.syscall, *args)
        except (OSError, ValueError, RuntimeError):
            # Unknown on one architecture (e.g. arch_prctl on x86) or socket args on x86's
            # socketcall multiplexer: that architecture keeps the default action for it.
            continue
    return f


def compile_bpf(f: sc.SyscallFilter) -> bytes:
    """The filter as raw BPF (libseccomp generates it on every load: do it once, before the fork)."""
    with tempfile.TemporaryFile() as tmp:
        f.export_bpf(tmp)
        tmp.seek(0)
        return tmp.read()


def build(mode: str, network_mode: str) -> list[bytes]:
    """The BPF programs to load (in order) before the plugin is imported."""
    return [compile_bpf(_build(ALLOW, guard_rules())), compile_bpf(_build(EPERM, allow_rules(network_mode)))]


def build_strict() -> bytes:
    """The kill filter strict mode stacks after the plugin is imported."""
    return compile_bpf(_build(KILL, strict_rules()))


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2


def load(programs: list[bytes]) -> None:
    """Install the BPF programs in this process (no_new_privs must already be set).

    Raises KernelCallError naming the refused call.
    """
    for _buf, fprog in sock_fprogs(programs):
        _libc.prctl_ptr(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


def sock_fprogs(programs: list[bytes]) -> list[tuple[ctypes.Array[ctypes.c_char], _SockFprog]]:
    """The struct sock_fprog of each program, with the buffer it points into (keep both alive)."""
    out = []
    for prog in programs:
        buf = ctypes.create_string_buffer(prog, len(prog))
        out.append((buf, _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))))
    return out


__all__ = [
    "ALLOWED_CALLS",
    "DENY_CALLS",
    "KILL_CALLS",
    "Rule",
    "allow_rules",
    "build",
    "build_strict",
    "compile_bpf",
    "guard_rules",
    "load",
    "sock_fprogs",
    "socket_families",
    "strict_rules",
]
