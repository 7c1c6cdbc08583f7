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

# /proc/<pid>/net/* is the view of the process's own network namespace (psutil reads /proc/net,
# the daemon's namespace, and would see no connection of a sandboxed plugin).
_NET_TABLES = ("tcp", "tcp6", "udp", "udp6")


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


def _socket_inodes(pid: int) -> tuple[int, set[str]]:
    """Number of open fds and the inodes of its sockets, from one pass over /proc/PID/fd."""
    fd_dir = f"/proc/{pid}/fd"
    names = os.listdir(fd_dir)
    inodes: set[str] = set()
    for fd in names:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return len(names), inodes


def _count_connections(pid: int, inodes: set[str]) -> int:
    """inet sockets of `pid` (TCP in any state but LISTEN, plus UDP), in its own network namespace."""
    if not inodes:
        return 0
    count = 0
    for table in _NET_TABLES:
        try:
            with open(f"/proc/{pid}/net/{table}", encoding="ascii", errors="replace") as fh:
                next(fh, None)  # header
                for line in fh:
                    cols = line.split()
                    # cols[3] is the state (0A = LISTEN for tcp), cols[9] the inode
                    listening = table.startswith("tcp") and len(cols) > 3 and cols[3] == "0A"
                    if len(cols) > 9 and cols[9] in inodes and not listening:
                        count += 1
        except FileNotFoundError:
            continue  # no IPv6 in this namespace
    return count


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
    if plugin.cgroup is not None:
        try:
            usage = plugin.cgroup.usage()
        except OSError as exc:  # removed under us, or the controller is missing
            log.debug("cgroup usage unreadable: %s", exc, extra={"plugin": plugin.name})
    try:
        proc = psutil.Process(plugin.pid)
        with proc.oneshot():
            if usage is None:
                mem = proc.memory_info().rss
                times = proc.cpu_times()
                cpu = times.user + times.system
                threads = proc.num_threads()
            else:
                mem = int(usage.memory_bytes)
                cpu = usage.cpu_usec / 1e6
                # pids.current counts tasks, i.e. every thread of every process in the group.
                threads = int(usage.pids) or proc.num_threads()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    fds = conns = 0
    for pid in _processes(plugin):
        try:
            n, inodes = _socket_inodes(pid)
            fds += n
            conns += _count_connections(pid, inodes)
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
