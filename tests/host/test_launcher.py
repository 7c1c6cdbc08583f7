"""The fork-server and its asyncio client: real processes, real fds over SCM_RIGHTS, real signals."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from plugind.host.launcher import ExitStatus, Launcher, SpawnRequest
from plugind.wire import BlockingChannel

PLUGIN = '''
import logging
import os
from plugind.sdk import Plugin
plugin = Plugin()
AT_IMPORT = [logging.getLogger().level, logging.getLogger("plugin").level]

@plugin.hook("levels")
def levels(data, ctx):
    return {"import": AT_IMPORT, "now": [logging.getLogger().level, logging.getLogger("plugin").level]}

@plugin.hook("env")
def env(data, ctx):
    return dict(os.environ)

@plugin.hook("exit")
def leave(code, ctx):
    os._exit(code)

@plugin.hook("modules")
def modules(prefixes, ctx):
    import sys
    return sorted(m for m in sys.modules if m.partition(".")[0] in prefixes)
'''


def write_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "demo.py").write_text(textwrap.dedent(PLUGIN))
    return tree


def request(tree: Path) -> SpawnRequest:
    return SpawnRequest("demo", str(tree), "demo:plugin", "1.0")


async def spawn(launcher: Launcher, tree: Path) -> tuple[int, BlockingChannel]:
    ours, theirs = socket.socketpair()
    try:
        spawned = await launcher.spawn(request(tree), theirs)
    finally:
        theirs.close()
    assert spawned.steps == {}
    chan = BlockingChannel(ours)
    ours.settimeout(20)
    hello = await asyncio.to_thread(chan.recv)
    assert hello is not None and hello["type"] == "hello" and hello["pid"] == spawned.pid
    return spawned.pid, chan


async def rehearsed_spare(launcher: Launcher) -> int | None:
    """The pid of the spare once it has rehearsed (the next spawn goes to it), or None after 20 s."""
    deadline = asyncio.get_running_loop().time() + 20  # a bound against a hang
    while not launcher.spare_ready():
        if asyncio.get_running_loop().time() > deadline:
            return None
        await asyncio.sleep(0.01)
    return launcher.spare_pid


async def call(chan: BlockingChannel, hook: str, data: object) -> object:
    chan.send({"type": "invoke", "id": 1, "hook": hook, "data": data, "deadline_ms": 5000})
    reply = await asyncio.to_thread(chan.recv)
    assert reply is not None
    return reply["data"]


def test_fork_server_is_single_threaded_scrubbed_and_forks_ready_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLUGIN_TRUST_KEY", "ab" * 32)
    monkeypatch.setenv("PLUGIND_API_TOKEN", "secret-token")
    tree = write_tree(tmp_path)

    async def main() -> None:
        launcher = Launcher()
        await launcher.start()
        try:
            assert launcher.alive and launcher.server_pid is not None
            server = psutil.Process(launcher.server_pid)
            assert server.ppid() == os.getpid()
            assert server.num_threads() == 1
            environ = server.environ()
            assert "PLUGIN_TRUST_KEY" not in environ and "PLUGIND_API_TOKEN" not in environ
            assert server.cwd() == "/"
            pid, chan = await spawn(launcher, tree)
            assert psutil.Process(pid).ppid() == launcher.server_pid
            env = await call(chan, "env", None)
            assert isinstance(env, dict)
            assert not {"PLUGIN_TRUST_KEY", "PLUGIND_API_TOKEN"} & set(env)
            assert os.getsid(pid) == pid  # own session: a terminal's ^C does not reach plugins
            chan.send({"type": "invoke", "id": 2, "hook": "exit", "data": 5, "deadline_ms": 1000})
            status = await asyncio.wait_for(launcher.wait_exit(pid), 20)
            assert status == ExitStatus(pid, 5, None, False)
            assert status.describe() == "exit code 5"
            assert not psutil.pid_exists(pid)  # reaped, not a zombie
            chan.sock.close()
        finally:
            await launcher.close()
        assert not psutil.pid_exists(launcher.server_pid)

    asyncio.run(main())


def test_the_fork_server_heap_holds_no_daemon_only_libraries(tmp_path: Path) -> None:
    # A child starts as a copy of the fork-server: what the server imported, the child has, and every
    # page of that heap is copied into each child's page tables by fork() and torn down at its exit.
    # pydantic (the daemon's settings) and pyroute2 (the fork-server's own restricted-network set-up,
    # imported when first used) would double the heap; a plugin needs neither.
    tree = write_tree(tmp_path)
    heavy = ["pydantic", "pydantic_core", "pydantic_settings", "pyroute2"]

    async def main() -> None:
        launcher = Launcher()
        await launcher.start()
        try:
            _pid, chan = await spawn(launcher, tree)
            assert await call(chan, "modules", heavy) == []
            assert await call(chan, "modules", ["plugind"])  # the runtime itself is pre-imported
            chan.sock.close()
        finally:
            await launcher.close()

    asyncio.run(main())


def test_the_fork_server_holds_nothing_open_but_its_socket_and_wake_up_pipe() -> None:
    # Whatever its start ran (the imports, the rehearsal of a plugin's start on a socketpair of its
    # own) left nothing open: every fd beyond stdio is inherited by each child it forks. Looked at
    # once it said ready (its start done) and before any spawn (after one, it forks a spare, whose
    # socket it holds for a moment).
    async def main() -> None:
        launcher = Launcher()
        await launcher.start()
        try:
            server = launcher.server_pid
            assert server is not None
            held = [os.readlink(f"/proc/{server}/fd/{fd}") for fd in os.listdir(f"/proc/{server}/fd")
                    if int(fd) > 2]
            assert sorted(h.partition(":")[0] for h in held) == ["pipe", "pipe", "socket"]
        finally:
            await launcher.close()

    asyncio.run(main())


def test_kill_through_the_fork_server_and_close_leaves_nothing(tmp_path: Path) -> None:
    tree = write_tree(tmp_path)

    async def main() -> None:
        launcher = Launcher()
        await launcher.start()
        pids = []
        try:
            pid, chan = await spawn(launcher, tree)
            await launcher.kill(pid, signal.SIGKILL)
            status = await asyncio.wait_for(launcher.wait_exit(pid), 20)
            assert status.signal == signal.SIGKILL and status.code is None
            assert status.describe() == "killed by SIGKILL"
            launcher.forget(pid)
            with pytest.raises(KeyError):
                launcher.wait_exit(pid)
            await launcher.kill(pid)  # a reaped pid is never signalled again: no error, no effect
            chan.sock.close()
            for _ in range(3):
                p, c = await spawn(launcher, tree)
                pids.append(p)
                c.sock.close()
        finally:
            await launcher.close()
        procs = [psutil.Process(p) for p in pids if psutil.pid_exists(p)]
        _gone, alive = psutil.wait_procs(procs, timeout=60)
        assert alive == []
        assert not launcher.alive

    asyncio.run(main())


def test_what_the_fork_server_cannot_do_is_logged_by_the_daemon_not_written_to_stderr(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    # A bare line on stderr would break the daemon's log format (one JSON object per line under
    # journald) and skip its redaction; the fork-server tells the daemon, which logs it.
    tree = write_tree(tmp_path)

    async def main() -> None:
        launcher = Launcher()
        await launcher.start()
        try:
            await launcher._send({"op": "kill", "pid": "not-a-pid"})  # a request it cannot act on
            for _ in range(200):
                if any("fork-server" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
            _pid, chan = await spawn(launcher, tree)  # and it still serves
            assert isinstance(await call(chan, "env", None), dict)
            chan.sock.close()
        finally:
            await launcher.close()

    with caplog.at_level("WARNING", logger="plugind.launcher"):
        asyncio.run(main())
    said = [r for r in caplog.records if r.name == "plugind.launcher" and "fork-server" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"
    assert "bad request" in said[0].getMessage() and "not-a-pid" in said[0].getMessage()
    assert "fork-server" not in capfd.readouterr().err


def test_a_cancelled_spawn_does_not_leave_a_child(tmp_path: Path) -> None:
    tree = write_tree(tmp_path)

    async def main() -> None:
        launcher = Launcher()
        await launcher.start()
        try:
            ours, theirs = socket.socketpair()
            task = asyncio.create_task(launcher.spawn(request(tree), theirs))
            await asyncio.sleep(0)  # the request is on its way
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            theirs.close()
            ours.settimeout(20)
            chan = BlockingChannel(ours)
            # The orphan may get as far as its hello, then it is killed: the stream ends.
            while (msg := await asyncio.to_thread(chan.recv)) is not None:
                assert msg["type"] == "hello"
            server = psutil.Process(launcher.server_pid)
            deadline = asyncio.get_running_loop().time() + 60  # a bound against a hang
            def plugins() -> list[psutil.Process]:  # the spare forked ahead is no plugin
                return [p for p in server.children() if p.pid != launcher.spare_pid]

            # One listing judged: a spare forked after it (and not yet announced) is no plugin either.
            while (left := plugins()) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            assert left == []
        finally:
            await launcher.close()

    asyncio.run(main())


def test_the_next_unsandboxed_spawn_is_served_by_a_spare_forked_ahead(tmp_path: Path) -> None:
    tree = write_tree(tmp_path)

    async def main() -> None:
        launcher = Launcher()
        await launcher.start()
        try:
            first, chan1 = await spawn(launcher, tree)
            deadline = asyncio.get_running_loop().time() + 20  # a bound against a hang
            while launcher.spare_pid is None and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            spare = launcher.spare_pid
            assert spare is not None and spare != first
            proc = psutil.Process(spare)
            assert proc.ppid() == launcher.server_pid
            # Its set-up (fds shed, then its own session) runs while the fork-server goes on.
            while os.getsid(spare) != spare and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            assert os.getsid(spare) == spare
            assert proc.name() == "plugind-spare"  # told apart from plugins in ps
            # It holds nothing of the fork-server's or of other plugins: stdio and its own socket.
            fds = {f: os.readlink(f"/proc/{spare}/fd/{f}") for f in os.listdir(f"/proc/{spare}/fd")}
            assert [f for f, target in fds.items() if int(f) > 2] == [
                f for f, target in fds.items() if target.startswith("socket:") and int(f) > 2]
            assert len([f for f in fds if int(f) > 2]) == 1
            while not launcher.spare_ready() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)  # it has rehearsed (else the spawn forks: see below)
            second, chan2 = await spawn(launcher, tree)
            assert second == spare
            assert await call(chan2, "env", None) == await call(chan1, "env", None)
            # It rehearsed at nice 19 where it could come back, and serves at the priority of any plugin.
            assert proc.nice() == psutil.Process(first).nice() == psutil.Process(launcher.server_pid).nice()
            assert proc.name() == psutil.Process(first).name() == psutil.Process(launcher.server_pid).name()
            await launcher.kill(second, signal.SIGKILL)
            status = await asyncio.wait_for(launcher.wait_exit(second), 20)
            assert status.signal == signal.SIGKILL
            for chan in (chan1, chan2):
                chan.sock.close()
        finally:
            await launcher.close()
        assert not psutil.pid_exists(launcher.server_pid)
        _gone, alive = psutil.wait_procs(
            [psutil.Process(p) for p in (first, spare) if psutil.pid_exists(p)], timeout=20)
        assert alive == []

    asyncio.run(main())


def test_a_start_sets_the_log_levels_before_the_plugins_import(tmp_path: Path) -> None:
    # A plugin's module runs with the levels its records are forwarded at (root INFO, `plugin`
    # DEBUG), in a child forked for it as in a spare (which set them while it waited).
    tree = write_tree(tmp_path)
    want = {"import": [logging.INFO, logging.DEBUG], "now": [logging.INFO, logging.DEBUG]}

    async def main() -> None:
        launcher = Launcher()
        await launcher.start()
        try:
            first, chan1 = await spawn(launcher, tree)
            spare = await rehearsed_spare(launcher)
            second, chan2 = await spawn(launcher, tree)
            assert spare is not None and second == spare != first
            assert await call(chan1, "levels", None) == want
            assert await call(chan2, "levels", None) == want
            for pid, chan in ((first, chan1), (second, chan2)):
                await launcher.kill(pid, signal.SIGKILL)
                await asyncio.wait_for(launcher.wait_exit(pid), 20)
                chan.sock.close()
        finally:
            await launcher.close()

    asyncio.run(main())


def test_a_stream_of_other_messages_does_not_hold_the_spare_off(tmp_path: Path) -> None:
    # The spare is forked a moment after the last start, whatever else the fork-server is sent
    # meanwhile (exits, kills): a wait restarted by every message let a steady stream of them keep
    # it from ever being forked.
    tree = write_tree(tmp_path)

    async def main() -> None:
        launcher = Launcher()
        await launcher.start()
        try:
            first, chan = await spawn(launcher, tree)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20  # a bound against a hang
            sent = 0
            while launcher.spare_pid is None and loop.time() < deadline:
                await launcher.kill(os.getpid(), 0)  # not its child: ignored, but a message to read
                sent += 1
                await asyncio.sleep(0.001)
            assert launcher.spare_pid is not None, f"no spare while {sent} messages came"
            assert launcher.spare_pid != first
            chan.sock.close()
        finally:
            await launcher.close()

    asyncio.run(main())


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return "gone"


def test_the_daemon_hands_the_spare_its_request_itself_and_forks_when_it_died(tmp_path: Path) -> None:
    tree = write_tree(tmp_path)

    async def wait_for_spare(launcher: Launcher, but: set[int]) -> int:
        deadline = asyncio.get_running_loop().time() + 20  # a bound against a hang
        while (launcher.spare_pid in (None, *but) or not launcher.spare_ready()) and (
                asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.01)
        assert launcher.spare_pid is not None and launcher.spare_pid not in but
        return launcher.spare_pid

    async def main() -> None:
        launcher = Launcher()
        await launcher.start()
        server = launcher.server_pid
        assert server is not None
        chans = []
        try:
            first, chan = await spawn(launcher, tree)
            chans.append(chan)
            spare = await wait_for_spare(launcher, {first})
            # The fork-server stopped: a spawn the spare serves does not go through it.
            os.kill(server, signal.SIGSTOP)
            try:
                second, chan = await asyncio.wait_for(spawn(launcher, tree), 20)
                chans.append(chan)
                assert second == spare
                assert await call(chan, "env", None) == await call(chans[0], "env", None)
            finally:
                os.kill(server, signal.SIGCONT)
            # Adopted by the fork-server meanwhile: signalled through it, its exit reported.
            await launcher.kill(second, signal.SIGKILL)
            assert (await asyncio.wait_for(launcher.wait_exit(second), 20)).signal == signal.SIGKILL

            # A spare that died before the daemon heard of it: the spawn falls back to a fork.
            spare = await wait_for_spare(launcher, {first, second})
            os.kill(spare, signal.SIGKILL)
            for _ in range(2000):  # a blocking wait: the event loop must not hear of its exit yet
                if _state(spare) in ("Z", "gone"):
                    break
                time.sleep(0.005)
            assert launcher.spare_pid == spare
            third, chan = await spawn(launcher, tree)
            chans.append(chan)
            assert third not in (first, second, spare)
            assert await call(chan, "env", None) == await call(chans[0], "env", None)
            # The dead spare's exit is reported (before third's, which comes after it); the daemon,
            # which dropped it, keeps no record of it for a later child with its pid to inherit.
            await launcher.kill(third, signal.SIGKILL)
            assert (await asyncio.wait_for(launcher.wait_exit(third), 20)).signal == signal.SIGKILL
            with pytest.raises(KeyError):
                launcher.wait_exit(spare)
        finally:
            for chan in chans:
                chan.sock.close()
            await launcher.close()
        assert not psutil.pid_exists(server)

    asyncio.run(main())


DAEMON = '''
import asyncio, json, socket, sys, time
from plugind.host.launcher import Launcher, SpawnRequest

async def main():
    launcher = Launcher()
    await launcher.start()
    ours, theirs = socket.socketpair()
    spawned = await launcher.spawn(SpawnRequest("demo", sys.argv[1], "demo:plugin"), theirs)
    print(json.dumps([launcher.server_pid, spawned.pid]), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
'''


def test_sigkill_of_the_daemon_takes_fork_server_and_plugins_down(tmp_path: Path) -> None:
    tree = write_tree(tmp_path)
    script = tmp_path / "daemon.py"
    script.write_text(DAEMON)
    daemon = subprocess.Popen([sys.executable, str(script), str(tree)], stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout is not None
        server_pid, plugin_pid = json.loads(daemon.stdout.readline())
        procs = [psutil.Process(server_pid), psutil.Process(plugin_pid)]
        daemon.kill()
        daemon.wait()
        _gone, alive = psutil.wait_procs(procs, timeout=10)
        assert alive == []
    finally:
        if daemon.poll() is None:
            daemon.kill()
        daemon.wait()


def test_wait_exit_of_an_unknown_pid() -> None:
    with pytest.raises(KeyError):
        Launcher().wait_exit(12345)


def test_a_new_child_never_inherits_the_exit_of_an_earlier_one_with_its_pid() -> None:
    async def main() -> None:
        launcher = Launcher()
        launcher._loop = asyncio.get_running_loop()
        first = launcher._loop.create_future()
        launcher._state.spawns[1] = first
        launcher._dispatch({"op": "spawned", "id": 1, "pid": 4242, "steps": {}})
        assert (await first).pid == 4242
        launcher._dispatch({"op": "exited", "pid": 4242, "code": 0})
        assert launcher.wait_exit(4242).result() == ExitStatus(4242, 0, None)
        # Not forgotten yet when the pid comes round again: the new child's exit is its own.
        second = launcher._loop.create_future()
        launcher._state.spawns[2] = second
        launcher._dispatch({"op": "spawned", "id": 2, "pid": 4242, "steps": {}})
        await second
        assert not launcher.wait_exit(4242).done()
        launcher._dispatch({"op": "exited", "pid": 4242, "signal": 9})
        assert launcher.wait_exit(4242).result() == ExitStatus(4242, None, 9)
        # The exit of a child the daemon never took (a spare it dropped) leaves no record.
        launcher._dispatch({"op": "exited", "pid": 4343, "signal": 9})
        with pytest.raises(KeyError):
            launcher.wait_exit(4343)

    asyncio.run(main())
