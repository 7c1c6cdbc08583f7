"""Seccomp rule lists as data: what is allowed, denied and killed, per network mode."""

from __future__ import annotations

import socket

import pytest

from plugind.sandbox import _libc
from plugind.sandbox.seccomp import (
    ALLOWED_CALLS,
    CLONE_NS_MASK,
    DENY_CALLS,
    KILL_CALLS,
    STRICT_CALLS,
    TIOCLINUX,
    TIOCSTI,
    Rule,
    allow_rules,
    guard_rules,
    socket_families,
    strict_rules,
)

DANGEROUS = (
    "ptrace",
    "mount",
    "umount2",
    "pivot_root",
    "unshare",
    "setns",
    "kexec_load",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "process_vm_readv",
    "process_vm_writev",
    "open_by_handle_at",
    "userfaultfd",
    "io_uring_setup",
    "chroot",
)


@pytest.mark.parametrize("call", DANGEROUS)
def test_dangerous_calls_are_never_allowed(call: str) -> None:
    assert call not in ALLOWED_CALLS
    assert call not in STRICT_CALLS
    assert call in DENY_CALLS or call in KILL_CALLS
    allowed = {r.syscall for r in allow_rules("host") if r.action == "allow"}
    assert call not in allowed


def test_worst_calls_kill() -> None:
    kills = {r.syscall for r in guard_rules() if r.action == "kill"}
    assert kills == {
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "reboot",
        "swapon",
        "swapoff",
    }


def test_terminal_injection_ioctls_denied_on_low_32_bits() -> None:
    ioctl = [r for r in guard_rules() if r.syscall == "ioctl"]
    assert ioctl == [
        Rule("eperm", "ioctl", ((1, "masked_eq", 0xFFFFFFFF, TIOCSTI),)),
        Rule("eperm", "ioctl", ((1, "masked_eq", 0xFFFFFFFF, TIOCLINUX),)),
    ]


def test_clone_only_without_namespace_flags_and_clone3_enosys() -> None:
    rules = {r.syscall: r for r in allow_rules("none")}
    assert rules["clone"] == Rule("allow", "clone", ((0, "masked_eq", CLONE_NS_MASK, 0),))
    for flag in (
        "CLONE_NEWNS",
        "CLONE_NEWUSER",
        "CLONE_NEWPID",
        "CLONE_NEWNET",
        "CLONE_NEWUTS",
        "CLONE_NEWIPC",
    ):
        assert CLONE_NS_MASK & getattr(_libc, flag)
    assert rules["clone3"].action == "enosys"


@pytest.mark.parametrize(
    ("mode", "families"),
    [
        ("none", (socket.AF_UNIX,)),
        ("restricted", (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)),
        ("host", (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)),
    ],
)
def test_socket_families_by_network_mode(mode: str, families: tuple[int, ...]) -> None:
    assert socket_families(mode) == families
    socket_rules = [r for r in allow_rules(mode) if r.syscall == "socket"]
    assert {r.args[0][2] for r in socket_rules} == set(families)
    for r in socket_rules:
        if r.args[0][2] != socket.AF_UNIX:  # IP only as stream or datagram: never SOCK_RAW
            assert r.args[1][:3] == (1, "masked_eq", 0xF)
            assert r.args[1][3] in (socket.SOCK_STREAM, socket.SOCK_DGRAM)
    assert all(r.syscall != "socket" or r.args for r in allow_rules(mode))  # never unconditional


def test_strict_allows_no_socket_exec_or_fork() -> None:
    names = {r.syscall for r in strict_rules() if r.action == "allow"}
    assert not names & {"socket", "socketpair", "execve", "execveat", "fork", "vfork", "connect", "bind"}
    clone = next(r for r in strict_rules() if r.syscall == "clone")
    mask, value = clone.args[0][2], clone.args[0][3]
    assert value == _libc.CLONE_THREAD and mask & CLONE_NS_MASK == CLONE_NS_MASK  # threads only


def test_lists_have_no_duplicates_or_overlap() -> None:
    assert len(set(ALLOWED_CALLS)) == len(ALLOWED_CALLS)
    assert not set(ALLOWED_CALLS) & set(DENY_CALLS)
    assert not set(ALLOWED_CALLS) & set(KILL_CALLS)
