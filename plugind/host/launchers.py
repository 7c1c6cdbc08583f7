"""Several fork-servers behind one `Launcher` interface, so that loads run side by side.

One fork-server starts one child at a time: a sandboxed spawn keeps it busy for its whole set-up
(fork, the plugin's cgroup made and joined, the child's namespaces, mounts and seccomp reported back),
about 15-20 ms of which only a third is its own CPU; the rest is waiting on the kernel and the child.
Concurrent loads queued behind it (the load of 1,000 plugins took 28 s, nearly all of it in that
queue). `LauncherPool` starts `[supervisor] fork_servers` of them and sends each spawn to the one
with the fewest spawns in flight; every later request about a child (its exit, a signal) goes to the
fork-server that forked it, the only process that may signal or reap it.

Plugins whose sandbox sets up a restricted network all go to the first fork-server: it picks their
veth address slots, and two processes picking at once could take the same one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

from plugind.host.launcher import ExitStatus, Launcher, Spawned, SpawnRequest

MAX_FORK_SERVERS = 16


def fork_server_count(configured: int) -> int:
    """`[supervisor] fork_servers`: 0 (the default) means one per CPU this process may run on, at
    most 4; anything else is taken as it is (1-16)."""
    if configured > 0:
        return min(configured, MAX_FORK_SERVERS)
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))


class LauncherPool:
    """`count` fork-servers; the same methods as `Launcher` (see plugind/host/launcher.py)."""

    def __init__(self, count: int, *, python: str = sys.executable) -> None:
        if count < 1:
            raise ValueError(f"a launcher pool needs at least one fork-server, not {count}")
        self.members = [Launcher(python=python) for _ in range(count)]
        self._owner: dict[int, Launcher] = {}  # child pid -> the fork-server that forked it
        self._in_flight = [0] * count
        self._next = 0  # round robin among the least busy

    @property
    def alive(self) -> bool:
        """True while every fork-server runs (the daemon stops when one dies)."""
        return all(m.alive for m in self.members)

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The first fork-server's process."""
        return self.members[0].proc

    @property
    def procs(self) -> list[subprocess.Popen[bytes]]:
        """Every fork-server's process."""
        return [m.proc for m in self.members if m.proc is not None]

    @property
    def server_pid(self) -> int | None:
        return self.members[0].server_pid

    @property
    def sandbox_available(self) -> bool:
        return all(m.sandbox_available for m in self.members)

    async def start(self) -> None:
        """Start every fork-server, side by side (no thread: call it before the daemon starts any).
        Raises LoadError, with none left running, when one cannot start."""
        results = await asyncio.gather(*(m.start() for m in self.members), return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            await self.close()
            raise failed

    def _pick(self, request: SpawnRequest) -> int:
        plan = request.plan or {}
        if plan.get("network_mode") == "restricted":
            return 0
        least = min(self._in_flight)
        n = len(self.members)
        order = [(self._next + step) % n for step in range(n)]
        idle = [i for i in order if self._in_flight[i] == least]
        # Among the least busy, one with a spare of the kind this spawn takes, ready: the spawn is
        # then a hand-off, not a fork (round robin alone sent a second load to a fork-server that
        # had never spawned, and so had no spare, while another's waited).
        sandboxed = request.plan is not None
        ready = [i for i in idle if (self.members[i].sandboxed_spare_pid is not None if sandboxed
                                     else self.members[i].spare_ready())]
        i = (ready or idle)[0]
        self._next = (i + 1) % n
        return i

    async def spawn(self, request: SpawnRequest, child_sock: socket.socket) -> Spawned:
        """Start one child on the least busy fork-server. Raises as `Launcher.spawn`."""
        i = self._pick(request)
        member = self.members[i]
        self._in_flight[i] += 1
        try:
            spawned = await member.spawn(request, child_sock)
        finally:
            self._in_flight[i] -= 1
        self._owner[spawned.pid] = member
        return spawned

    def _member(self, pid: int) -> Launcher:
        member = self._owner.get(pid)
        if member is None:
            raise KeyError(pid)
        return member

    def wait_exit(self, pid: int) -> asyncio.Future[ExitStatus]:
        """As `Launcher.wait_exit`. Raises KeyError for a pid this pool did not spawn."""
        return self._member(pid).wait_exit(pid)

    def forget(self, pid: int) -> None:
        """As `Launcher.forget`: drops the record of an exited child."""
        member = self._owner.get(pid)
        if member is None:
            return
        member.forget(pid)
        fut = self._owner_future(member, pid)
        if fut is None:
            del self._owner[pid]

    @staticmethod
    def _owner_future(member: Launcher, pid: int) -> asyncio.Future[ExitStatus] | None:
        try:
            return member.wait_exit(pid)
        except KeyError:
            return None

    async def kill(self, pid: int, sig: int = signal.SIGKILL) -> None:
        """As `Launcher.kill`, through the fork-server that forked `pid` (none: nothing to signal)."""
        member = self._owner.get(pid)
        if member is not None:
            await member.kill(pid, sig)

    async def close(self) -> None:
        """Stop every fork-server; each kills and reaps the children it still has."""
        await asyncio.gather(*(m.close() for m in self.members))


def new_launcher(configured: int) -> Launcher | LauncherPool:
    """A single `Launcher` for one fork-server, else a `LauncherPool` (see `fork_server_count`)."""
    count = fork_server_count(configured)
    return Launcher() if count == 1 else LauncherPool(count)


__all__ = ["MAX_FORK_SERVERS", "LauncherPool", "fork_server_count", "new_launcher"]
