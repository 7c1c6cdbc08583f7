"""Taking one resource sample of a plugin: cgroup counters where present, psutil and /proc for the rest.

Blocking (it reads /proc and cgroupfs): call it from the monitor's thread, never on the event loop.
A process that vanished between the listing and the read is not an error: `sample_plugin` returns None.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import psutil

from plugind.monitor.violations import ResourceLimits

log = logging.getLogger("plugind.monitor")

# The kernel names a socket's protocol in the `system.sockprotoname` xattr of its inode: a few
# microseconds per socket, in any network namespace. (Reading /proc/PID/net/tcp instead walks the
# kernel's whole socket hash table: ~9 ms per plugin per sweep, measured by bench/monitor.py.)
_INET_PROTOCOLS_B = (b"TCP", b"UDP", b"MPTCP", b"SCTP", b"RAW", b"PING")


class CgroupUsageLike(Protocol):
    memory_bytes: int
    memory_limit: int | None
    cpu_usec: int
    pids: int
    oom_kills: int


class CgroupLike(Protocol):
    def usage(self) -> Any: ...


@dataclass(frozen=True)
class MonitoredPlugin:
    """What the registry's `source()` hands the monitor for each loaded plugin."""

    name: str
    pid: int
    cgroup: CgroupLike | None = None
    limits: ResourceLimits | None = None  # None: the monitor uses [monitoring.limits]


@dataclass(frozen=True)
class Sample:
    """One plugin's resource use at `taken_at` (time.monotonic())."""

    name: str
    pid: int
    taken_at: float
    memory_bytes: int
    cpu_seconds: float
    threads: int
    fds: int
    connections: int
    oom_kills: int = 0
    source: str = "psutil"  # "cgroup" when memory/cpu/threads came from cgroup counters
    extra: dict[str, int] = field(default_factory=dict)


def _fds_and_connections(pid: int) -> tuple[int, int]:
    """Open fds of `pid` and how many of them are network (TCP, UDP, ...) sockets, listeners included."""
    fd_dir = f"/proc/{pid}/fd"
    names = os.listdir(fd_dir)
    inet = 0
    for fd in names:
        path = f"{fd_dir}/{fd}"
        try:
            if not os.readlink(path).startswith("socket:"):
                continue
            proto = os.getxattr(path, "system.sockprotoname")
        except OSError:
            continue  # closed meanwhile, or a kernel without the xattr: not counted
        if proto.startswith(_INET_PROTOCOLS_B):
            inet += 1
    return len(names), inet


def _processes(plugin: MonitoredPlugin) -> list[int]:
    """The pids to count fds and connections for: the cgroup's processes when it can list them."""
    lister = getattr(plugin.cgroup, "pids", None)
    if callable(lister):
        try:
            pids = [int(p) for p in lister()]
        except (OSError, ValueError, TypeError):
            pids = []
        if pids:
            if plugin.pid not in pids:
                pids.append(plugin.pid)  # e.g. not yet attached: still count the plugin itself
            return pids
    return [plugin.pid]


def sample_plugin(plugin: MonitoredPlugin) -> Sample | None:
    """Sample one plugin now; None when its process is gone. Never raises for a vanished process."""
    now = time.monotonic()
    usage = None
    # Only a handle with usage() (plugind.sandbox.cgroups.CgroupHandle) gives counters; anything
    # else (None, a bare path) means psutil for everything.
    read_usage = getattr(plugin.cgroup, "usage", None)
    if callable(read_usage):
        try:
            usage = read_usage()
        except OSError as exc:  # removed under us, or the controller is missing
            log.debug("cgroup usage unreadable: %s", exc, extra={"plugin": plugin.name})
    try:
        if usage is None:
            proc = psutil.Process(plugin.pid)
            with proc.oneshot():
                mem = proc.memory_info().rss
                times = proc.cpu_times()
                cpu = times.user + times.system
                threads = proc.num_threads()
        else:
            # The group's counters: no psutil.Process (a read of /proc/PID/stat and its objects)
            # unless pids.current is missing; a process gone is found by its fd listing below.
            mem = int(usage.memory_bytes)
            cpu = usage.cpu_usec / 1e6
            # pids.current counts tasks, i.e. every thread of every process in the group.
            threads = int(usage.pids) or psutil.Process(plugin.pid).num_threads()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    fds = conns = 0
    for pid in _processes(plugin):
        try:
            n, inet = _fds_and_connections(pid)
            fds += n
            conns += inet
        except (FileNotFoundError, ProcessLookupError):
            if pid == plugin.pid:
                return None
        except PermissionError as exc:
            log.debug("cannot read fds of pid %d: %s", pid, exc, extra={"plugin": plugin.name})
    return Sample(
        name=plugin.name,
        pid=plugin.pid,
        taken_at=now,
        memory_bytes=mem,
        cpu_seconds=cpu,
        threads=threads,
        fds=fds,
        connections=conns,
        oom_kills=int(usage.oom_kills) if usage is not None else 0,
        source="cgroup" if usage is not None else "psutil",
    )


__all__ = ["MonitoredPlugin", "Sample", "sample_plugin"]
