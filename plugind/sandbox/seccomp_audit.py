"""Which system call got a plugin killed by its seccomp filter.

A filter's kill action ends the process with SIGSYS and no handler runs, so nothing inside the
plugin can say what it tried. The kernel does: with `kill_process` in
`/proc/sys/kernel/seccomp/actions_logged` (the default), each kill is logged to the kernel ring
buffer as an audit record of type 1326:

    audit: type=1326 audit(1795630204.648:203): ... pid=5079 comm="python" ... sig=31
    arch=c000003e syscall=175 compat=0 ip=0x7f3dfb71f829 code=0x80000000

`seccomp_kill(pid, since)` reads `/dev/kmsg` (root, or CAP_SYSLOG) for the newest such record of
`pid` logged at or after `since` (wall-clock seconds; an older record belongs to an earlier process
that had the same pid). Best effort: without access to the ring buffer, or once the record has been
overwritten, it returns None and the crash is reported with the signal alone.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass

KMSG = "/dev/kmsg"
AUDIT_SECCOMP = "type=1326"
# Records carry the wall clock with millisecond precision; allow for that and for clock steps.
CLOCK_SLACK_S = 1.0
MAX_RECORDS = 100_000  # the ring buffer holds far fewer; a bound against a reader that never ends

_RECORD = re.compile(
    r"type=1326 audit\((?P<when>\d+(?:\.\d+)?):\d+\):.*?\bpid=(?P<pid>\d+)\b.*?\bsig=(?P<sig>\d+)\b"
    r".*?\barch=(?P<arch>[0-9a-fA-F]+)\b.*?\bsyscall=(?P<nr>\d+)\b"
)


@dataclass(frozen=True)
class SeccompKill:
    """A seccomp kill the kernel logged: the call's number, its name if known, and the audit arch."""

    syscall: int
    name: str | None
    arch: int
    signal: int

    def describe(self) -> str:
        """For messages: "init_module (175)", or "syscall 999" when the name is unknown."""
        return f"{self.name} ({self.syscall})" if self.name else f"syscall {self.syscall}"


def syscall_name(arch: int, nr: int) -> str | None:
    """The name of system call `nr` on audit architecture `arch`, or None if unknown."""
    try:
        import pyseccomp

        name = pyseccomp.resolve_syscall(arch, nr)
    except Exception:  # unknown number or architecture, or libseccomp missing
        return None
    return name.decode() if isinstance(name, bytes) else str(name)


def parse_record(line: str, pid: int, since: float) -> SeccompKill | None:
    """The kill in one `/dev/kmsg` record if it is a seccomp record of `pid` at or after `since`."""
    if AUDIT_SECCOMP not in line:
        return None
    match = _RECORD.search(line)
    if match is None or int(match["pid"]) != pid or float(match["when"]) < since - CLOCK_SLACK_S:
        return None
    arch, nr = int(match["arch"], 16), int(match["nr"])
    return SeccompKill(syscall=nr, name=syscall_name(arch, nr), arch=arch, signal=int(match["sig"]))


def ring_buffer_problem(path: str = KMSG) -> str | None:
    """Why `seccomp_kill` cannot read the kernel's ring buffer here, or None when it can.

    Under systemd, `ProtectKernelLogs=yes` hides /dev/kmsg and a closed `DevicePolicy` (implied by
    `ProtectClock=yes`) refuses it unless `DeviceAllow=/dev/kmsg r`; with `dmesg_restrict = 1` the
    kernel wants CAP_SYSLOG; containers usually have no /dev/kmsg at all.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return f"open({path}): {exc.strerror}"
    os.close(fd)
    return None


def seccomp_kill(pid: int, since: float, path: str = KMSG) -> SeccompKill | None:
    """The newest seccomp kill of `pid` logged at or after `since` (time.time()), or None.

    Blocking (it reads the whole ring buffer: a few milliseconds); call it from a thread.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    found: SeccompKill | None = None
    rest = b""  # /dev/kmsg gives one record per read; a plain file (tests) gives chunks of lines
    try:
        for _ in range(MAX_RECORDS):
            try:
                chunk = os.read(fd, 8192)
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records overwritten while we read: go on
                    continue
                break  # EAGAIN: the end of the buffer (or it cannot be read)
            if not chunk:
                break
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                kill = parse_record(line.decode("utf-8", "replace"), pid, since)
                if kill is not None:
                    found = kill
        if rest:
            found = parse_record(rest.decode("utf-8", "replace"), pid, since) or found
    finally:
        os.close(fd)
    return found


__all__ = ["SeccompKill", "parse_record", "ring_buffer_problem", "seccomp_kill", "syscall_name"]
