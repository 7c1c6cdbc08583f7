"""The fork-server: a small single-threaded process that forks plugin children on request.

Started by `Launcher.start()` as a fresh `python -m plugind.host.forkserver --fd N` with a scrubbed
environment, before the daemon starts any thread. It pre-imports the runtime, the SDK and msgpack
(and the sandbox if present), so a child is ready to import its plugin right after `fork()`. It dies
with the daemon (PR_SET_PDEATHSIG), and its children die with it.

Control protocol on the inherited SOCK_SEQPACKET socket, one msgpack map per packet:

    daemon -> server  {"op": "spawn", "id", "name", "tree", "entrypoint", "version", "max_frame",
                       "plan": SandboxPlan.to_wire() | None}   + the child's socket end (SCM_RIGHTS)
                      {"op": "adopt", "pid"}                   the daemon handed the spare a request
                      {"op": "kill", "pid", "signal"}          only pids it forked and has not reaped
    server -> daemon  {"op": "ready", "pid", "sandbox": bool}
                      {"op": "spawned", "id", "pid", "steps", "spare"} | {"op": "spawn_failed", "id", "error"}
                      {"op": "exited", "pid", "code", "signal", "oom_killed"}
                      {"op": "spare", "pid"}  + its socket     the child forked ahead (below)
                      {"op": "warning", "message"}             something it could not do (the daemon
                                                               logs it, in its format, redacted)

SPARE_IDLE_S after an unsandboxed spawn (later if another spawn comes meanwhile), it forks a spare
child ahead of the next one: set up like any child (fds shed, PDEATHSIG, own session) and waiting on
a private socket for its request and plugin socket. That socket goes to the daemon with the
announcement and the fork-server keeps no end of it: the daemon's next unsandboxed spawn sends the
request and the plugin's socket to the spare itself (no round trip through the fork-server on the
load's path) and then says {"op": "adopt", "pid"}, from which on the spare is a child like any other
(signalled, reaped and reported). A spare that exits is reported as `exited` whether or not it was
adopted yet (the daemon may have handed it a request that the adopt message has not caught up with).
A spare is never signalled through `kill` before it is adopted, and dies with the fork-server; with
the daemon gone its socket closes and it exits. Unsandboxed spawn requests that reach the
fork-server fork.

CSPARE_IDLE_S after a sandboxed spawn (as late), it forks a pre-contained spare (see
plugind.sandbox.contain: namespaces, loopback, root, cgroup v1 group made ahead, at nice 19) for the
next sandboxed spawn whose plan it fits; any other sandboxed spawn forks anew. It is announced as
{"op": "spare", "pid", "sandboxed": true}. On cgroup v2, where a move into a group would wait
(contain.born_style), it forks the plugin into the plugin's group at hand-off and exits: the plugin
is our child with a pid of its own, and the spare is reaped unreported.

End of stream on the control socket means the daemon is gone: kill every child, reap, exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, NoReturn

import msgpack

# Pre-imported so children do not pay for them after fork().
import plugind.runtime.child as runtime
import plugind.sdk
import plugind.sdk.testing  # noqa: F401
from plugind.errors import LoadError, PluginError
from plugind.priority import SPARE_NICE, may_raise_priority
from plugind.wire.messages import SPARE_READY

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
# The spare is forked this long after an unsandboxed spawn, or after the start of whatever child came
# later (forked at once, it competed for the CPU with the child just handed over: its import, hello
# and first call); an exit, a kill or anything else but a start does not put it off. It rehearses
# at SPARE_NICE where its priority can be raised back after, and says SPARE_READY on its socket once
# it has; the daemon hands a request only to a spare that has (one still rehearsing would hold the
# load until it is done), and otherwise asks the
# fork-server, which forks. Against 50 ms and no nice: back-to-back loads 0.46x the load-to-first-
# answer (0.54x on one CPU), loads 150 ms apart the same (bench/cold.py --gap 0 / 0.15).
SPARE_IDLE_S = 0.005
# The pre-contained spare costs the fork-server only its fork (it prepares itself, at nice 19): it is
# forked this long after a sandboxed spawn (or a later start), as the unsandboxed one.
CSPARE_IDLE_S = 0.005
MAX_WARNING = 2000  # characters of one {"op": "warning"} message
SPARE_NAME = b"plugind-spare"  # the spare's comm (ps, /proc/PID/comm) until it is handed a request
MAX_PACKET = 256 * 1024
_libc = ctypes.CDLL(None, use_errno=True)


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies. Raises OSError."""
    if _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def set_comm(name: bytes) -> None:
    """Set this thread's name (/proc/self/comm, 15 bytes at most); best effort."""
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name[:15]), 0, 0, 0)


def _comm() -> bytes:
    with open("/proc/self/comm", "rb") as f:
        return f.read().rstrip(b"\n")


def _load_sandbox() -> ModuleType | None:
    try:
        import plugind.sandbox.contain as contain  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        import plugind.sandbox.plan  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return None
    return contain



def run_plugin(req: dict[str, Any], sock_fd: int, hooks: Any = None) -> None:
    """In a forked child: run the plugin a spawn request names, on `sock_fd` (never returns while it
    runs)."""
    runtime.run_child(
        sock_fd,
        str(req["tree"]),
        str(req["entrypoint"]),
        name=str(req.get("name")),
        version=str(req.get("version") or ""),
        max_frame=int(req.get("max_frame") or runtime.DEFAULT_MAX_FRAME),
        hooks=hooks,
    )


class ForkServer:
    """The server loop; one instance per process."""

    def __init__(self, ctl: socket.socket, contain: ModuleType | None) -> None:
        self.ctl = ctl
        self.contain = contain
        self.children: dict[int, Any] = {}  # pid -> sandbox plan (or None)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.spare: int | None = None  # the pid of the spare whose socket the daemon holds
        # When to fork the next spare (time.monotonic()), None: none wanted. A child's start puts a
        # pending one off (`_started`); nothing else does.
        self.spare_due: float | None = None
        # The pre-contained spare for sandboxed spawns (contain.ContainedSpare), prepared like the
        # last sandboxed plan that allows one (`proto`), CSPARE_IDLE_S after the last start.
        self.cspare: Any = None
        self.proto: Any = None
        self.cspare_due: float | None = None
        self.pid = os.getpid()
        self.comm = _comm()

    def send(self, msg: dict[str, Any]) -> None:
        """Send one control message (blocking; the daemon reads promptly)."""
        self.ctl.sendall(msgpack.packb(msg, use_bin_type=True))

    def warn(self, message: str) -> None:
        """Tell the daemon something went wrong here: it logs it as its own log lines are logged (one
        JSON object per line under journald, secrets redacted), never as a bare line on stderr."""
        with contextlib.suppress(OSError):
            self.send({"op": "warning", "message": message[:MAX_WARNING]})

    def _child_setup(self) -> None:
        # In the child, right after fork: drop the server's own fds and signal plumbing.
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the server ignores it (main()); a plugin does not
        for fd in (self.wake_r, self.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):  # spawn_contained already closed every fd but the child's
            self.ctl.close()
        if self.cspare is not None:
            with contextlib.suppress(OSError):
                self.cspare.chan.close()

    def make_spare(self) -> None:
        """Fork a spare child for the next unsandboxed spawn (no-op if there is one)."""
        if self.spare is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        # Named before the fork, so the spare bears its name from its first instant (a `ps` or a test
        # listing the fork-server's children never sees it as a plugin); it takes ours back when it
        # becomes one.
        comm = self.comm
        set_comm(SPARE_NAME)
        try:
            pid = os.fork()
        except BaseException:
            ours.close()
            theirs.close()
            raise
        finally:
            if os.getpid() == self.pid:
                set_comm(comm)
        if pid == 0:
            ours.close()
            self._spare_main(theirs, comm)
        theirs.close()
        self.spare = pid
        try:
            socket.send_fds(self.ctl, [msgpack.packb({"op": "spare", "pid": pid}, use_bin_type=True)],
                            [ours.fileno()])
        finally:
            ours.close()  # the daemon's now: the spare gets its request from the daemon alone

    def _spare_main(self, chan: socket.socket, comm: bytes) -> NoReturn:
        # In the spare: the set-up of any unsandboxed child, then wait for the request.
        try:
            self._child_setup()
            set_pdeathsig()
            # The rehearsal at the lowest priority, where it can be raised back after (a start that
            # comes meanwhile, forked by the fork-server, gets the CPU first), else at ours.
            nice = os.getpriority(os.PRIO_PROCESS, 0)
            lowered = nice < SPARE_NICE and may_raise_priority(nice)
            if lowered:
                os.setpriority(os.PRIO_PROCESS, 0, SPARE_NICE)
            runtime.rehearse()  # while it waits: the pages a plugin's start touches, copied now
            if lowered:
                try:
                    os.setpriority(os.PRIO_PROCESS, 0, nice)
                except OSError:  # never serve a plugin at nice 19
                    os._exit(0)
            os.setsid()
            try:  # rehearsed: a request handed over now is served at once (the daemon asks first)
                chan.send(SPARE_READY)
            except OSError:  # the daemon dropped us
                os._exit(0)
            data, fds, _flags, _addr = socket.recv_fds(chan, MAX_PACKET, 1)
            chan.close()
            if len(fds) != 1 or not data:  # the fork-server is gone or gave up on us
                os._exit(0)
            req = msgpack.unpackb(data, raw=False)
            set_comm(comm)
            run_plugin(req, fds[0])
        finally:
            os._exit(127)

    def make_contained_spare(self) -> None:
        """Prepare a pre-contained spare for the next sandboxed spawn like `proto` (see
        plugind.sandbox.contain); no-op if there is one or nothing to prepare it like."""
        if self.cspare is not None or self.proto is None or self.contain is None:
            return
        comm = self.comm

        def run(payload: bytes, sock_fd: int, hooks: Any) -> NoReturn:
            set_comm(comm)
            run_plugin(msgpack.unpackb(payload, raw=False), sock_fd, hooks)
            os._exit(0)

        set_comm(SPARE_NAME)
        try:
            spare = self.contain.prepare_spare(self.proto, self._child_setup, run, runtime.rehearse)
        finally:
            if os.getpid() == self.pid:
                set_comm(comm)
        self.cspare = spare
        self.send({"op": "spare", "pid": spare.pid, "sandboxed": True})
        self._rehearse_spawn(spare)

    def _rehearse_spawn(self, spare: Any) -> None:
        # Our pages are copy-on-write too once the spare is forked: run, on throwaway values, the
        # Python of the next sandboxed spawn (its request decoded, its plan rebuilt and checked, the
        # spare's fit, its payload packed), so that we copy them now, while idle, and not on that
        # load's path. Changes nothing; never raises (a rehearsal that fails only warms less).
        from plugind.sandbox.plan import SandboxPlan  # type: ignore[import-not-found,unused-ignore]

        with contextlib.suppress(Exception):
            proto = self.proto
            req = {"op": "spawn", "id": 0, "name": proto.name, "tree": proto.tree, "entrypoint": "",
                   "version": "", "max_frame": 0, "plan": proto.to_wire()}
            req = msgpack.unpackb(msgpack.packb(req, use_bin_type=True), raw=False)
            plan = SandboxPlan.from_wire(req["plan"])
            self.contain.spare_fits(spare, plan)  # type: ignore[union-attr]
            msgpack.packb(req, use_bin_type=True)

    def take_spare_report(self, spare: Any) -> None:
        """Read the pre-contained spare's report of its preparation; if it failed (or died before
        reporting), say so and discard it (the next sandboxed spawn forks anew)."""
        try:
            self.contain.take_report(spare)  # type: ignore[union-attr]
        except Exception as exc:
            self.cspare = None
            self.warn(f"sandboxed spare failed: {exc}")
            self.contain.discard_spare(spare)  # type: ignore[union-attr]

    def _use_contained_spare(self, plan: Any, req: dict[str, Any], sock_fd: int) -> Any:
        # The spare's Spawned for `plan`, or None (no spare, it does not fit, or the hand-off failed:
        # the spare is discarded and the caller forks anew, which reports any real error).
        spare = self.cspare
        if spare is None or not self.contain.spare_fits(spare, plan):  # type: ignore[union-attr]
            return None  # an unfit spare stays for a later plan it fits (it served nobody yet)
        self.cspare = None  # used once, whatever happens next
        try:
            return self.contain.use_spare(spare, plan, msgpack.packb(req, use_bin_type=True),  # type: ignore[union-attr]
                                          sock_fd)
        except Exception as exc:
            self.warn(f"sandboxed spare not used: {exc!r}")
            self.contain.discard_spare(spare)  # type: ignore[union-attr]
            return None

    def spawn(self, req: dict[str, Any], sock_fd: int) -> None:
        """Fork one plugin child; answer with its pid and isolation steps."""
        name = str(req.get("name"))
        plan_wire = req.get("plan")

        def run(hooks: Any = None) -> NoReturn:
            try:
                self._child_setup()
                set_pdeathsig()
                if hooks is None:
                    os.setsid()
                run_plugin(req, sock_fd, hooks)
            finally:
                os._exit(127)

        spare_pid = None  # the pre-contained spare that served it, if one did
        try:
            if plan_wire is not None and self.contain is not None:
                from plugind.sandbox.plan import SandboxPlan  # type: ignore[import-not-found,unused-ignore]

                plan = SandboxPlan.from_wire(plan_wire)
                spare = self.cspare
                spawned = self._use_contained_spare(plan, req, sock_fd)
                if spawned is None:
                    spawned = self.contain.spawn_contained(plan, run, [sock_fd])
                else:
                    spare_pid = spare.pid
                pid, steps = int(spawned.pid), dict(spawned.steps)
                self.children[pid] = plan
                if self.cspare is None and self.contain.spare_capable(plan):
                    self.proto = plan  # prepared like this one, CSPARE_IDLE_S from now
                    self.cspare_due = time.monotonic()
            else:
                pid = os.fork()
                if pid == 0:
                    run()
                steps = {}
                if plan_wire is not None:
                    steps["sandbox"] = "degraded: plugind.sandbox.contain is not available"
                self.children[pid] = None
        except PluginError as exc:
            self.send({"op": "spawn_failed", "id": req.get("id"), "error": exc.to_wire()})
            return
        except Exception as exc:
            err = LoadError(f"fork-server could not start plugin {name!r}: {type(exc).__name__}: {exc}",
                            plugin=name, reason="spawn_failed")
            self.send({"op": "spawn_failed", "id": req.get("id"), "error": err.to_wire()})
            return
        finally:
            os.close(sock_fd)
        # "spare": the pre-contained spare that served it (a born-style spare's plugin, on cgroup
        # v2, is a child it forked into the plugin's cgroup, with a pid of its own: use_spare).
        self.send({"op": "spawned", "id": req.get("id"), "pid": pid, "steps": steps, "spare": spare_pid})
        if plan_wire is None or self.contain is None:
            self.spare_due = time.monotonic()  # forked SPARE_IDLE_S from now (serve)
        self._started()

    def adopt(self, pid: int) -> None:
        """The daemon handed the spare `pid` a request: a plugin child from now on. A spare reaped
        before this arrived was reported then (`reap`), and a pid that is not the spare is ignored
        (it could be another process's by now)."""
        if pid != self.spare:
            return
        self.spare = None
        self.children[pid] = None
        self.spare_due = time.monotonic()  # another, SPARE_IDLE_S from now
        self._started()

    def _started(self) -> None:
        # A child has just started (a spawn, or the spare handed a request): a spare wanted is forked
        # only once it has had its idle time after this start.
        now = time.monotonic()
        if self.spare_due is not None:
            self.spare_due = now + SPARE_IDLE_S
        if self.cspare_due is not None:
            self.cspare_due = now + CSPARE_IDLE_S

    def kill(self, pid: int, sig: int) -> None:
        """Signal a child we forked and have not reaped (so the pid cannot have been recycled)."""
        if pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def reap(self) -> None:
        """Collect every exited child and report the ones we spawned."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.spare:  # exited before its adoption (it may have had its request)
                self.spare = None
                self.children[pid] = None  # reported below, as a child
                self.spare_due = time.monotonic() + SPARE_IDLE_S
            if self.cspare is not None and pid == self.cspare.pid:  # died unused: the next spawn forks
                spare, self.cspare = self.cspare, None
                with contextlib.suppress(OSError):  # what it said, if it failed its preparation
                    spare.chan.setblocking(False)
                    if (said := spare.chan.recv(4096)) and b'"error"' in said:
                        self.warn(f"sandboxed spare failed: {said.decode(errors='replace')}")
                self.contain.discard_spare(spare, reaped=True)  # type: ignore[union-attr]
                continue
            if pid not in self.children:
                continue
            plan = self.children.pop(pid)
            # Without a pid namespace, descendants are still in the child's process group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            oom = False
            if plan is not None and self.contain is not None:
                oom_check: Callable[[Any], bool] | None = getattr(self.contain, "oom_killed", None)
                with contextlib.suppress(Exception):
                    oom = bool(oom_check(plan)) if oom_check else False
                with contextlib.suppress(Exception):
                    self.contain.cleanup(plan)
            code = os.waitstatus_to_exitcode(status)
            # Killed by the OOM killer: SIGKILL, with a kill in its group's counter. One of its own
            # children OOM-killed earlier does not make any later exit of the plugin an OOM kill.
            oom = oom and code == -signal.SIGKILL
            self.send({"op": "exited", "pid": pid, "code": code if code >= 0 else None,
                       "signal": -code if code < 0 else None, "oom_killed": oom})

    def shutdown(self) -> None:
        """Kill and reap every child (the daemon went away)."""
        if self.cspare is not None:
            spare, self.cspare = self.cspare, None
            self.contain.discard_spare(spare)  # type: ignore[union-attr]
        if self.spare is not None:
            pid, self.spare = self.spare, None
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid, plan in list(self.children.items()):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            if plan is not None and self.contain is not None:
                with contextlib.suppress(Exception):  # best effort; the next start removes stale groups
                    self.contain.cleanup(plan)
        self.children.clear()

    def handle(self, data: bytes, fds: list[int]) -> None:
        """Act on one control packet."""
        try:
            req = msgpack.unpackb(data, raw=False)
        except Exception:
            req = None
        op = req.get("op") if isinstance(req, dict) else None
        if op == "spawn" and len(fds) == 1:
            assert isinstance(req, dict)
            self.spawn(req, fds[0])
            return
        for fd in fds:
            os.close(fd)
        if op == "kill" and isinstance(req, dict):
            self.kill(int(req["pid"]), int(req.get("signal") or signal.SIGKILL))
        elif op == "adopt" and isinstance(req, dict):
            self.adopt(int(req["pid"]))

    def _make_due_spare(self) -> bool:
        """Fork the spare (the pre-contained one first) whose time has come, if any; whether one was."""
        now = time.monotonic()
        if self.cspare_due is not None and self.cspare is None and now >= self.cspare_due:
            self.cspare_due = None
            try:
                self.make_contained_spare()
            except Exception as exc:  # no spare: the next sandboxed spawn forks anew
                self.warn(f"no sandboxed spare: {exc!r}")
            return True
        if self.spare_due is not None and self.spare is None and now >= self.spare_due:
            self.spare_due = None
            try:
                self.make_spare()
            except OSError as exc:  # no spare: the next spawn forks, as it would anyway
                self.warn(f"no spare child: {exc!r}")
            return True
        return False

    def serve(self) -> None:
        """Loop until the daemon closes the control socket."""
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.send({"op": "ready", "pid": os.getpid(), "sandbox": self.contain is not None})
        while True:
            if self._make_due_spare():
                continue
            dues = [due for due, free in ((self.spare_due, self.spare is None),
                                          (self.cspare_due, self.cspare is None)) if due is not None and free]
            idle = max(0.0, min(dues) - time.monotonic()) if dues else None
            waiting = [self.ctl.fileno(), self.wake_r]
            preparing = self.cspare if self.cspare is not None and not self.cspare.ready else None
            if preparing is not None:  # its report, read as soon as it comes rather than at hand-off
                waiting.append(preparing.chan.fileno())
            try:
                readable, _, _ = select.select(waiting, [], [], idle)
            except InterruptedError:
                continue
            if not readable:
                continue  # a spare is due (at the top)
            if self.wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self.wake_r, 512):
                        pass
                self.reap()
            if preparing is not None and preparing is self.cspare and preparing.chan.fileno() in readable:
                self.take_spare_report(preparing)
            if self.ctl.fileno() in readable:
                data, fds, _flags, _addr = socket.recv_fds(self.ctl, MAX_PACKET, 4)
                if not data:
                    self.shutdown()
                    return
                try:
                    self.handle(data, fds)
                except ConnectionError:  # the daemon is gone: handled by main()
                    raise
                except Exception as exc:  # a malformed request must not take every plugin down
                    self.warn(f"bad request: {exc!r}")
            self.reap()


def main(argv: list[str] | None = None) -> None:
    """Entry point: `python -m plugind.host.forkserver --fd N`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "--fd" or not args[1].isdigit():
        print("usage: python -m plugind.host.forkserver --fd N", file=sys.stderr)
        sys.exit(2)
    ppid = os.getppid()
    set_pdeathsig()
    if os.getppid() != ppid:  # the daemon died before we could ask to follow it
        sys.exit(1)
    # A terminal's Ctrl-C, or a unit's SIGTERM sent to every process of its group (KillMode=
    # control-group, systemd-run's default), is for the daemon: it stops its plugins through this
    # server, which then ends when the control socket closes (or with the daemon: PDEATHSIG).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctl = socket.socket(fileno=int(args[1]))
    ctl.setblocking(True)
    server = ForkServer(ctl, _load_sandbox())
    # A plugin's start and first call, rehearsed once here on throwaway objects: what every child
    # would otherwise make or rewrite for itself (its first compile and import, the interpreter's
    # caches, the specialised bytecode of the runtime's code) is made once, here, and shared. Each
    # sandboxed start then takes ~35 fewer copy-on-write faults (1,101 -> 1,064, median of 200)
    # and each plugin ~70 KiB less memory of its own. Leaves no fd, thread, signal handler or timer.
    runtime.rehearse()
    # Everything imported so far is shared with every plugin child: keep the collector from touching
    # (and so copying) those pages in the children, and from scanning them in each one.
    gc.freeze()
    try:
        server.serve()
    except (BrokenPipeError, ConnectionError):
        server.shutdown()


if __name__ == "__main__":
    main()
