"""Several fork-servers (LauncherPool): concurrent spawns are spread over them, and every request
about a child (exit, kill, forget) reaches the fork-server that forked it. Real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import psutil
import pytest
from host.test_launcher import call, request, spawn, write_tree

from plugind.config import Settings
from plugind.host.launcher import Launcher, SpawnRequest
from plugind.host.launchers import LauncherPool, fork_server_count, new_launcher


def test_spawns_are_spread_and_each_child_is_handled_by_its_own_fork_server(tmp_path: Path) -> None:
    tree = write_tree(tmp_path)

    async def main() -> None:
        pool = LauncherPool(2)
        await pool.start()
        pids: list[int] = []
        try:
            servers = [m.server_pid for m in pool.members]
            assert pool.alive and len(set(servers)) == 2 and len(pool.procs) == 2
            spawned = await asyncio.gather(*(spawn(pool, tree) for _ in range(4)))  # type: ignore[arg-type]
            pids = [pid for pid, _chan in spawned]
            parents = [psutil.Process(pid).ppid() for pid in pids]
            assert set(parents) == set(servers)  # both fork-servers took some
            for _pid, chan in spawned:
                assert (await call(chan, "env", None))["PYTHONUNBUFFERED"] == "1"  # type: ignore[index]
            # A kill goes to the child's own fork-server (the only one that may signal it) ...
            victim = pids[1]
            await pool.kill(victim, signal.SIGKILL)
            status = await asyncio.wait_for(pool.wait_exit(victim), 20)
            assert status.signal == signal.SIGKILL and status.pid == victim
            pool.forget(victim)
            with pytest.raises(KeyError):
                pool.wait_exit(victim)
            await pool.kill(victim)  # forgotten: no fork-server is asked, nothing happens
            # ... and a child that exits on its own is reported through it too.
            _pid, chan = spawned[2]
            chan.send({"type": "invoke", "id": 2, "hook": "exit", "data": 7, "deadline_ms": 5000})
            status = await asyncio.wait_for(pool.wait_exit(pids[2]), 20)
            assert status.code == 7
            for _pid, chan in spawned:
                chan.sock.close()
        finally:
            await pool.close()
        assert not pool.alive
        procs = [psutil.Process(p) for p in pids if psutil.pid_exists(p)]
        _gone, alive = psutil.wait_procs(procs, timeout=60)
        assert alive == []
        for server in servers:
            assert server is not None and not psutil.pid_exists(server)

    asyncio.run(main())


def test_restricted_network_plans_go_to_the_first_fork_server(tmp_path: Path) -> None:
    # Its veth address slots are picked by the fork-server: one process picks them all.
    pool = LauncherPool(3)
    pool._in_flight = [5, 0, 0]
    restricted = SpawnRequest("a", str(tmp_path), "a:plugin", plan={"network_mode": "restricted"})
    assert [pool._pick(restricted) for _ in range(3)] == [0, 0, 0]
    other = SpawnRequest("b", str(tmp_path), "b:plugin", plan={"network_mode": "none"})
    assert {pool._pick(other) for _ in range(4)} == {1, 2}  # the least busy, in turn
    assert pool._pick(request(tmp_path)) in (1, 2)


def test_a_fork_server_that_cannot_start_leaves_none_running(tmp_path: Path) -> None:
    async def main() -> None:
        pool = LauncherPool(2)
        pool.members[1].python = str(tmp_path / "no-such-python")
        with pytest.raises(Exception, match="cannot start the fork-server"):
            await pool.start()
        first = pool.members[0]
        assert first.proc is not None and first.proc.poll() is not None  # stopped again
        assert not pool.alive

    asyncio.run(main())


def test_how_many_fork_servers() -> None:
    assert fork_server_count(3) == 3 and fork_server_count(99) == 16
    assert fork_server_count(0) == max(1, min(len(os.sched_getaffinity(0)), 4))
    assert Settings().supervisor.fork_servers == 0
    assert isinstance(new_launcher(1), Launcher)
    assert isinstance(new_launcher(2), LauncherPool)
    with pytest.raises(ValueError):
        LauncherPool(0)


def test_spawn_through_a_pool_closes_nothing_of_the_callers(tmp_path: Path) -> None:
    # The caller keeps (and closes) its end of the child's socket, as with one Launcher.
    tree = write_tree(tmp_path)

    async def main() -> None:
        pool = LauncherPool(2)
        await pool.start()
        try:
            ours, theirs = socket.socketpair()
            spawned = await pool.spawn(request(tree), theirs)
            assert theirs.fileno() >= 0
            theirs.close()
            ours.close()
            await asyncio.wait_for(pool.wait_exit(spawned.pid), 20)  # its stream ended: it exits
        finally:
            await pool.close()

    asyncio.run(main())


def test_a_spawn_goes_to_a_fork_server_whose_spare_is_ready(tmp_path: Path) -> None:
    # Round robin alone would send the second spawn to the fork-server that has never spawned (so
    # has no spare) and fork there; the pool prefers the one whose spare waits.
    tree = write_tree(tmp_path)

    async def main() -> None:
        pool = LauncherPool(2)
        await pool.start()
        chans = []
        try:
            first, chan = await spawn(pool, tree)  # type: ignore[arg-type]
            chans.append(chan)
            server = next(m for m in pool.members if m.server_pid == psutil.Process(first).ppid())
            other = next(m for m in pool.members if m is not server)
            deadline = asyncio.get_running_loop().time() + 20  # a bound against a hang
            while not server.spare_ready() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            spare = server.spare_pid
            assert spare is not None and other.spare_pid is None
            second, chan = await spawn(pool, tree)  # type: ignore[arg-type]
            chans.append(chan)
            assert second == spare  # handed to the spare, not forked by the other fork-server
            for chan in chans:
                chan.sock.close()
        finally:
            await pool.close()

    asyncio.run(main())
