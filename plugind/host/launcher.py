"""Daemon-side client of the fork-server: start it, ask it for children, hear when they exit.

```python
launcher = Launcher()
await launcher.start()                       # before the daemon starts any thread
spawned = await launcher.spawn(request, child_sock)   # -> Spawned(pid, steps)
status = await launcher.wait_exit(spawned.pid)        # -> ExitStatus(code, signal, oom_killed)
await launcher.kill(spawned.pid)                      # race-free: only unreaped children are signalled
await launcher.close()                                # the fork-server kills what is left and exits
```
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

import plugind
from plugind.errors import LoadError, PluginError, from_wire
from plugind.wire.frames import DEFAULT_MAX_FRAME
from plugind.wire.messages import SPARE_READY

log = logging.getLogger("plugind.launcher")

START_TIMEOUT_S = 30.0
_PKG_ROOT = str(Path(plugind.__file__).resolve().parent.parent)


@dataclass(frozen=True)
class SpawnRequest:
    """What the fork-server needs to start one plugin child (plain data)."""

    name: str
    tree: str
    entrypoint: str
    version: str = ""
    max_frame: int = DEFAULT_MAX_FRAME
    plan: dict[str, Any] | None = None  # SandboxPlan.to_wire(), or None for no sandbox


class Spawned(NamedTuple):
    """A started child: its pid (a direct child of the fork-server) and the isolation steps."""

    pid: int
    steps: dict[str, str]


@dataclass(frozen=True)
class ExitStatus:
    """How a child ended: `code` for a normal exit, `signal` if killed by one."""

    pid: int
    code: int | None
    signal: int | None
    oom_killed: bool = False

    def describe(self) -> str:
        """A short human phrase, e.g. 'exit code 3' or 'killed by SIGKILL'."""
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}" + (" (out of memory)" if self.oom_killed else "")
        return f"exit code {self.code}"


def scrubbed_env() -> dict[str, str]:
    """The fork-server's whole environment: nothing inherited, so no secret reaches a plugin."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONPATH": _PKG_ROOT,
        "PYTHONUNBUFFERED": "1",
    }


@dataclass
class _State:
    spawns: dict[int, asyncio.Future[Spawned]] = field(default_factory=dict)
    exits: dict[int, asyncio.Future[ExitStatus]] = field(default_factory=dict)


class Launcher:
    """Asyncio client of one fork-server process."""

    def __init__(self, *, python: str = sys.executable) -> None:
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        self.server_pid: int | None = None
        self.sandbox_available = False
        self.spare_pid: int | None = None  # the fork-server's spare child (forkserver.py), if any
        self._spare_chan: socket.socket | None = None  # the spare's socket: its request goes there
        self._spare_ready = False  # it said SPARE_READY on it
        self.sandboxed_spare_pid: int | None = None  # its pre-contained spare (sandbox/contain.py)
        self._ctl: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._state = _State()
        self._next_id = 0
        self._dead: str | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    @property
    def alive(self) -> bool:
        """True while the fork-server is running and answering."""
        return self._ctl is not None and self._dead is None

    async def start(self) -> None:
        """Start the fork-server and wait until it has pre-imported everything.

        Raises LoadError if it cannot start or does not become ready within 30 s.
        """
        if self._ctl is not None:
            raise LoadError("launcher already started", reason="launcher")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [self.python, "-P", "-s", "-m", "plugind.host.forkserver", "--fd", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env=scrubbed_env(),
                cwd="/",
                stdin=subprocess.DEVNULL,
                # Its own session: a Ctrl-C or a group-wide SIGTERM meant for the daemon must not kill
                # the fork-server (and every plugin with it) before the daemon has unloaded them.
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise LoadError(f"cannot start the fork-server: {exc}", reason="launcher") from exc
        finally:
            theirs.close()
        ours.setblocking(False)
        self._ctl = ours
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        self._loop.add_reader(ours.fileno(), self._on_readable)
        try:
            hello = await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT_S)
        except (TimeoutError, PluginError) as exc:
            await self.close()
            raise LoadError(f"the fork-server did not become ready: {exc}", reason="launcher") from exc
        self.server_pid = int(hello["pid"])
        self.sandbox_available = bool(hello.get("sandbox"))
        log.debug("fork-server %d ready (sandbox module: %s)", self.server_pid, self.sandbox_available)

    # -- receiving
    def _on_readable(self) -> None:
        assert self._ctl is not None
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self._ctl, 65536, 1)
            except BlockingIOError:
                return
            except OSError as exc:
                self._server_gone(f"control socket error: {exc}")
                return
            if not data:
                for fd in fds:
                    os.close(fd)
                self._server_gone("the fork-server exited")
                return
            try:
                msg = msgpack.unpackb(data, raw=False)
                if fds and msg.get("op") == "spare" and not msg.get("sandboxed"):
                    self._new_spare(int(msg["pid"]), fds.pop())
                self._dispatch(msg)
            except Exception as exc:  # a bug in the fork-server must not take the daemon down
                log.error("bad message from the fork-server: %s", exc)
            finally:
                for fd in fds:  # one no message of ours carries
                    os.close(fd)

    def _new_spare(self, pid: int, fd: int) -> None:
        self._drop_spare()
        os.set_inheritable(fd, False)  # received by recvmsg: not close-on-exec by itself
        chan = socket.socket(fileno=fd)
        chan.setblocking(False)
        self._spare_chan = chan
        self._spare_ready = False
        self.spare_pid = pid

    def _drop_spare(self) -> None:
        chan, self._spare_chan = self._spare_chan, None
        self.spare_pid = None
        self._spare_ready = False
        if chan is not None:
            chan.close()  # an unused spare reads the end of its socket and exits

    def spare_ready(self) -> bool:
        """Whether there is a spare that has said it is ready (rehearsed) and has not been used: the
        next unsandboxed spawn goes to it. Never blocks."""
        chan = self._spare_chan
        if chan is None or self._spare_ready:
            return chan is not None
        try:
            said = chan.recv(16)
        except BlockingIOError:
            return False  # still rehearsing
        except OSError:
            said = b""
        if said != SPARE_READY:  # gone (end of its socket), or not what a spare says
            self._drop_spare()
            return False
        self._spare_ready = True
        return True

    def _dispatch(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "spawned":
            pid = int(msg["pid"])
            if self.sandboxed_spare_pid in (pid, msg.get("spare")):  # used (see forkserver.spawn)
                self.sandboxed_spare_pid = None
            self._expect_exit(pid)
            fut = self._state.spawns.pop(int(msg["id"]), None)
            if fut is not None and not fut.done():
                fut.set_result(Spawned(pid, {str(k): str(v) for k, v in msg.get("steps", {}).items()}))
            else:  # the caller gave up (cancelled): nobody owns this child, so it must not live
                task = asyncio.ensure_future(self.kill(pid))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        elif op == "spawn_failed":
            fut = self._state.spawns.pop(int(msg["id"]), None)
            if fut is not None and not fut.done():
                fut.set_exception(from_wire(msg.get("error")))
        elif op == "exited":
            status = ExitStatus(int(msg["pid"]), msg.get("code"), msg.get("signal"),
                                bool(msg.get("oom_killed")))
            exit_fut = self._state.exits.get(status.pid)
            if status.pid == self.spare_pid:  # died unused: the next spawn goes to the fork-server
                self._drop_spare()
            # None: a child the daemon never took (a spare that died unused, or one dropped before
            # its exit came): no record, which a later child given the same pid would inherit.
            if exit_fut is not None and not exit_fut.done():
                exit_fut.set_result(status)
        elif op == "spare" and msg.get("sandboxed"):
            self.sandboxed_spare_pid = int(msg["pid"])
        elif op == "spare" and self.spare_pid != int(msg["pid"]):
            log.warning("fork-server announced spare %s without its socket; not used", msg["pid"])
        elif op == "ready" and self._ready is not None and not self._ready.done():
            self._ready.set_result(msg)
        elif op == "warning":
            log.warning("fork-server: %s", msg.get("message", ""))

    def _server_gone(self, why: str) -> None:
        if self._dead is not None:
            return
        self._dead = why
        if self._loop is not None and self._ctl is not None:
            self._loop.remove_reader(self._ctl.fileno())
        self._drop_spare()  # it died with the fork-server
        if self.proc is not None and self.proc.poll() is None:
            log.error("fork-server lost: %s", why)
        err = LoadError(f"fork-server unavailable: {why}", reason="launcher")
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(err)
        for fut in self._state.spawns.values():
            if not fut.done():
                fut.set_exception(err)
        self._state.spawns.clear()
        # Its children died with it (PR_SET_PDEATHSIG).
        for pid, exit_fut in self._state.exits.items():
            if not exit_fut.done():
                exit_fut.set_result(ExitStatus(pid, None, signal.SIGKILL))

    # -- sending
    async def _send(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        if not self.alive:
            raise LoadError(f"fork-server unavailable: {self._dead or 'not started'}", reason="launcher")
        assert self._ctl is not None and self._loop is not None
        data = msgpack.packb(msg, use_bin_type=True)
        while True:
            try:
                if fds:
                    socket.send_fds(self._ctl, [data], fds)
                else:
                    self._ctl.send(data)
                return
            except BlockingIOError:
                writable = self._loop.create_future()
                self._loop.add_writer(self._ctl.fileno(), writable.set_result, None)
                try:
                    await writable
                finally:
                    self._loop.remove_writer(self._ctl.fileno())
            except OSError as exc:
                self._server_gone(f"control socket error: {exc}")
                raise LoadError(f"fork-server unavailable: {exc}", reason="launcher") from exc

    async def spawn(self, request: SpawnRequest, child_sock: socket.socket) -> Spawned:
        """Start one child serving `request` on `child_sock` (the caller closes its copy afterwards).

        Raises SandboxError when a configured isolation step fails, LoadError otherwise.
        """
        assert self._loop is not None or not self.alive
        self._next_id += 1
        req_id = self._next_id
        msg = {"op": "spawn", "id": req_id, "name": request.name, "tree": request.tree,
               "entrypoint": request.entrypoint, "version": request.version,
               "max_frame": request.max_frame, "plan": request.plan}
        if request.plan is None and self.alive and self.spare_ready():
            spawned = await self._hand_to_spare(msg, child_sock)
            if spawned is not None:
                return spawned
        fut: asyncio.Future[Spawned] = asyncio.get_running_loop().create_future()
        self._state.spawns[req_id] = fut
        try:
            await self._send(msg, [child_sock.fileno()])
        except BaseException:
            self._state.spawns.pop(req_id, None)
            raise
        return await fut

    async def _hand_to_spare(self, msg: dict[str, Any], child_sock: socket.socket) -> Spawned | None:
        # The spare forked ahead gets the request and the plugin's socket from us directly, then the
        # fork-server hears that it is a plugin now (`adopt`; it forks another spare once idle).
        # None when the spare is gone (its exit is reported): the fork-server forks instead.
        pid, chan = self.spare_pid, self._spare_chan
        assert pid is not None and chan is not None and self._loop is not None
        try:
            socket.send_fds(chan, [msgpack.packb(msg, use_bin_type=True)], [child_sock.fileno()])
        except OSError:  # it exited (EPIPE, ECONNRESET) or cannot take it (EAGAIN): fork instead
            return None
        finally:
            self._drop_spare()  # used once, whatever happened
        self._expect_exit(pid)
        # Sent before anything else can be (this coroutine does not yield on the way unless the
        # control socket is full), so no kill for this pid overtakes it.
        await self._send({"op": "adopt", "pid": pid})
        return Spawned(pid, {})

    def _expect_exit(self, pid: int) -> None:
        # A child of ours from now on: its exit is waited for. A finished record of an earlier child
        # with this pid (not forgotten yet) is that child's, not this one's: replaced.
        fut = self._state.exits.get(pid)
        if fut is None or fut.done():
            assert self._loop is not None
            self._state.exits[pid] = self._loop.create_future()

    def wait_exit(self, pid: int) -> asyncio.Future[ExitStatus]:
        """A future resolved with the exit status of child `pid` (already resolved if it has exited).

        Raises KeyError for a pid this launcher did not spawn.
        """
        fut = self._state.exits[pid]
        return fut

    def forget(self, pid: int) -> None:
        """Drop the record of an exited child (the supervisor calls this once it has the status)."""
        fut = self._state.exits.get(pid)
        if fut is not None and fut.done():
            del self._state.exits[pid]

    async def kill(self, pid: int, sig: int = signal.SIGKILL) -> None:
        """Signal child `pid` through the fork-server, which signals only children it has not reaped,
        so a recycled pid is never hit. A dead fork-server means the child is already gone."""
        if not self.alive:
            return
        await self._send({"op": "kill", "pid": pid, "signal": int(sig)})

    async def close(self) -> None:
        """Stop the fork-server; it kills and reaps every child it still has."""
        self._drop_spare()
        if self._ctl is not None:
            if self._loop is not None and self._dead is None:
                self._loop.remove_reader(self._ctl.fileno())
            self._dead = self._dead or "closed"
            self._ctl.close()
        proc = self.proc
        if proc is not None:
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(loop.run_in_executor(None, proc.wait), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await loop.run_in_executor(None, proc.wait)
        for pid, exit_fut in self._state.exits.items():
            if not exit_fut.done():
                exit_fut.set_result(ExitStatus(pid, None, signal.SIGKILL))


__all__ = [
    "ExitStatus",
    "Launcher",
    "SpawnRequest",
    "Spawned",
    "scrubbed_env",
]
