"""The plugin side of a child process: import the plugin, say hello, serve hooks until shutdown.

Single-threaded and blocking on purpose: the hot path is recv -> handler -> send with no event loop
in between. Calls are served in arrival order; the host may pipeline several. A handler past its
deadline is interrupted by SIGALRM (the host enforces the deadline on its side anyway) and reported
as a late HookTimeout result.

The deadline alarm (ITIMER_REAL) is armed lazily: a call re-arms it only when it is not armed or
would fire after this call's limit, and it is not disarmed after the call. Two setitimer calls per
call cost about 3 us of a round trip on a quiet machine (10 us or more under load); with the usual
equal deadlines one setitimer per deadline period now serves every call in it. When an alarm armed
for an earlier call fires while a later call is still within its limit, the handler re-arms it for
that limit; an alarm that fires between calls, or during a call without a deadline, is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import re
import signal
import socket
import stat
import sys
import time
import traceback
from collections import deque
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, Protocol

from plugind.errors import HookFailed, HookTimeout, InitializationError, PluginError, from_wire
from plugind.sdk.plugin import Handler, Plugin
from plugind.wire import messages as m
from plugind.wire.frames import DEFAULT_MAX_FRAME, BlockingChannel
from plugind.wire.polling import PollWindow
from plugind.wire.polling import getcpu as _getcpu

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
ENTRYPOINT_RE = re.compile(rf"^({_IDENT}(?:\.{_IDENT})*):({_IDENT})$")
EXEC_PREFIX = "exec:"
MAX_TRACEBACK = 8192
EXIT_INIT_FAILED = 3
EXIT_PROTOCOL = 4
ALARM_GRACE_S = 0.02
MAX_SPIN_US = 1000  # a welcome asking for more is ignored
_monotonic = time.monotonic
_RESULT = m.RESULT


class ChildHooks(Protocol):
    """What the sandbox hands the runtime: steps that must run around the plugin's import."""

    def before_plugin_import(self) -> None:
        """Apply the last isolation steps (seccomp) before plugin code is imported."""

    def after_plugin_import(self) -> None:
        """Strict mode: stack the kill filter once the plugin is imported."""


class NoHooks:
    """ChildHooks for an unsandboxed child: nothing to apply."""

    def before_plugin_import(self) -> None:
        """Nothing to do."""

    def after_plugin_import(self) -> None:
        """Nothing to do."""


class _Deadline(BaseException):
    """Raised into a handler by SIGALRM; a BaseException so `except Exception` in plugins misses it."""


class _ForwardLogs(logging.Handler):
    """Sends every log record to the host as a `log` frame."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(logging.DEBUG)
        self.runtime = runtime

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)[: m.MAX_LOG_CHARS]
            level = record.levelname.lower()
            if level not in m.LOG_LEVELS:
                level = "info"
            self.runtime.send({"type": m.LOG, "level": level, "msg": text, "logger": record.name[:256]})
        except Exception:  # a broken pipe while logging must not take the plugin down
            self.handleError(record)


class RemoteContext:
    """The SDK `Context` inside a child: each call is a ctx.* request answered by the host."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key`, or `default`. Raises ContextError if the host refuses."""
        reply = self._rt.ctx_call(m.CTX_GET, key=key)
        return reply.get("value") if reply.get("found") else default

    def set(self, key: str, value: Any) -> None:
        """Store `value` under `key`. Raises ContextError if the key is not granted or invalid."""
        self._rt.ctx_call(m.CTX_SET, key=key, value=value)

    def delete(self, key: str) -> bool:
        """Remove `key`; True if it existed. Raises ContextError if not granted."""
        return bool(self._rt.ctx_call(m.CTX_DELETE, key=key).get("found"))

    def keys(self, prefix: str = "") -> list[str]:
        """Keys starting with `prefix`, sorted."""
        return list(self._rt.ctx_call(m.CTX_KEYS, prefix=prefix).get("keys") or [])


class Runtime:
    """One plugin served over one socket."""

    def __init__(self, sock: socket.socket, name: str, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.chan = BlockingChannel(sock, max_frame)
        self.name = name
        self.plugin: Plugin | None = None
        self.ctx = RemoteContext(self)
        self._queue: deque[dict[str, Any]] = deque()
        self._next_ctx_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_handler = False
        self._sending = False
        self._deadline_hit = False
        # Monotonic time past which the running handler is interrupted (None: no deadline), and when
        # the armed ITIMER_REAL fires (None: not armed); see _arm_deadline.
        self._limit: float | None = None
        self._alarm_at: float | None = None
        # Adaptive poll (see serve): the window (its budget is chan.spin_s, both set by the welcome),
        # when the last call was answered and where the host sent it from.
        self._poll = PollWindow()
        self._answered_at = 0.0
        self._host_cpu: object = None  # the CPU the host sent the last call from

    # -- sending, safe against SIGALRM landing in the middle of a frame
    def send(self, msg: dict[str, Any]) -> None:
        """Send one message whole, even if the deadline alarm fires meanwhile."""
        self._sending = True
        try:
            self.chan.send(msg)
        finally:
            self._sending = False
        if self._deadline_hit and self._in_handler:
            self._deadline_hit = False
            raise _Deadline

    def _arm_deadline(self, limit: float, now: float) -> None:
        # Record first, then arm: the kernel fires at (time of setitimer) + delay >= limit, so when
        # the alarm fires, `now >= limit` holds for the call that armed it.
        self._alarm_at = limit
        signal.setitimer(signal.ITIMER_REAL, max(limit - now, 1e-6))

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        self._alarm_at = None  # ITIMER_REAL is one-shot: it is disarmed now
        if not self._in_handler:
            return  # armed for an earlier call that has finished
        limit = self._limit
        if limit is None:
            return  # this call has no deadline
        now = time.monotonic()
        if now < limit:
            self._arm_deadline(limit, now)  # armed for an earlier call: wait for this one's limit
            return
        if self._sending:
            self._deadline_hit = True
            return
        raise _Deadline

    def _pong(self, ping_id: int) -> dict[str, Any]:
        # With the poll budget taken from the welcome (0: this runtime never polls): whether it
        # polls is otherwise only seen in timings, which say as much about the machine's load.
        return {"type": m.PONG, "id": ping_id, "poll_us": round(self._poll.budget * 1e6)}

    # -- receiving
    def _recv(self) -> dict[str, Any] | None:
        msg = self.chan.recv()
        if msg is not None:
            m.check_from_host(msg)
        return msg

    def ctx_call(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Send a ctx.* request and wait for its reply, serving pings meanwhile.

        Raises the ContextError (or other PluginError) the host answered with, or ConnectionError.
        """
        self._next_ctx_id += 1
        call_id = self._next_ctx_id
        self.send({"type": kind, "id": call_id, **fields})
        while True:
            msg = self._recv()
            if msg is None:
                raise ConnectionError("host closed the connection during a context call")
            kind_in = msg["type"]
            if kind_in == m.CTX_REPLY and msg["id"] == call_id:
                if msg.get("ok"):
                    return msg
                raise from_wire(msg.get("error"))
            if kind_in == m.PING:
                self.send(self._pong(msg["id"]))
            elif kind_in != m.CTX_REPLY:
                self._queue.append(msg)

    # -- running plugin code
    def _run(self, func: Handler, *args: Any) -> Any:
        if asyncio.iscoroutinefunction(func):
            return self._run_async(func, *args)
        return func(*args)

    def _run_async(self, func: Handler, *args: Any) -> Any:
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(func(*args))

    def _discard_loop(self) -> None:
        # An alarm may have landed inside the loop's own machinery: never reuse that loop.
        if self._loop is not None:
            loop, self._loop = self._loop, None
            try:
                for task in asyncio.all_tasks(loop):
                    task.cancel()
                loop.close()
            except Exception:  # noqa: S110 - best effort on a loop we are throwing away
                pass

    def invoke(self, msg: dict[str, Any]) -> None:
        """Run one hook call and send its result. The plugin's hot path: kept flat on purpose."""
        call_id, hook = msg["id"], msg["hook"]
        assert self.plugin is not None
        spec = self.plugin.hooks.get(hook)
        if spec is None:
            err = HookFailed(f"plugin {self.name!r} has no handler for hook {hook!r}",
                             plugin=self.name, hook=hook, error_type="LookupError")
            self.send(m.result_error(call_id, err.to_wire()))
            return
        deadline_ms = msg.get("deadline_ms")
        start = _monotonic()
        timeout_s = deadline_ms / 1000.0 if deadline_ms else 0.0
        reply: dict[str, Any]
        self._deadline_hit = False
        # A little after the host's own deadline, so the host's timeout usually speaks first.
        limit = start + timeout_s + ALARM_GRACE_S if timeout_s else None
        self._limit = limit
        self._in_handler = True
        try:
            if limit is not None:
                alarm_at = self._alarm_at
                if alarm_at is None or alarm_at > limit:
                    self._arm_deadline(limit, start)
            try:
                if spec.is_async:
                    data = self._run_async(spec.func, msg["data"], self.ctx)
                else:
                    data = spec.func(msg["data"], self.ctx)
            finally:
                self._in_handler = False
            # m.result_ok's message, built inline (the same map, key for key).
            reply = {"type": _RESULT, "id": call_id, "ok": True, "data": data, "cpu": _getcpu()}
            if timeout_s and _monotonic() - start > timeout_s:
                reply["late"] = True
        except _Deadline:
            self._in_handler = False
            self._discard_loop()
            timeout = HookTimeout(f"hook {hook!r} of plugin {self.name!r} exceeded its deadline of "
                              f"{timeout_s:g}s and was interrupted", plugin=self.name, hook=hook,
                              timeout_s=timeout_s)
            reply = m.result_error(call_id, timeout.to_wire(), late=True)
        except Exception as exc:
            self._in_handler = False
            reply = m.result_error(call_id, _failure(self.name, hook, exc).to_wire())
        try:
            # The channel's send, not self.send: the handler is over (_in_handler is False), so an
            # alarm landing meanwhile is ignored by _on_alarm and there is no deadline to report.
            self.chan.send(reply)
        except PluginError as exc:  # not encodable as msgpack, or larger than the host accepts
            # Nothing of the refused frame was sent: answer the call with an error instead, so one
            # bad result is one failed call, not a protocol violation that costs the process.
            oversized = getattr(exc, "detail", None) == "frame too large to send"
            err = HookFailed(f"hook {hook!r} of plugin {self.name!r} returned a value the wire "
                             f"cannot carry: {exc}"[:2000], plugin=self.name, hook=hook,
                             error_type="ValueError" if oversized else "TypeError")
            self.send(m.result_error(call_id, err.to_wire()))

    def run_callbacks(self, callbacks: list[Handler]) -> None:
        """Run on_load / on_unload callbacks in order. Raises whatever they raise."""
        for cb in callbacks:
            self._run(cb, self.ctx)

    def serve(self) -> int:
        """Answer the host until shutdown or end of stream; return the exit code."""
        assert self.plugin is not None
        chan = self.chan
        queue, recv, check, invoke = self._queue, chan.recv, m.check_from_host, self.invoke
        monotonic, poll, max_id, max_hook = _monotonic, self._poll, m.MAX_ID, m.MAX_HOOK_NAME
        invoke_type = m.INVOKE
        window = 0.0
        while True:
            took = -1.0  # seconds from the last answer to this message, when it was waited for
            if queue:
                msg = queue.popleft()  # checked when it was received
                kind = msg["type"]
            else:
                # Adaptive poll (plugind.wire.polling): after answering, poll for the next call
                # before sleeping, for as long as calls have lately been coming that soon.
                # Not while the host runs on this CPU (its last invoke says where): polling would
                # only take turns with the very process that is to send the next call.
                window = poll.window if self._host_cpu != _getcpu() else 0.0
                got = recv(window)
                if got is None:
                    return 0
                if poll.budget:
                    took = monotonic() - self._answered_at  # the window is updated after answering
                kind = got["type"]
                # The hot path: a well-formed invoke, checked inline by the rules of
                # check_from_host; anything else is checked there.
                call_id, deadline = got.get("id"), got.get("deadline_ms")
                hook = got.get("hook")
                if not (kind == invoke_type and type(call_id) is int and 0 <= call_id <= max_id
                        and type(hook) is str and len(hook) <= max_hook and "data" in got
                        and (deadline is None or (type(deadline) in (int, float) and deadline >= 0))):
                    check(got)
                msg = got
            if kind == invoke_type:
                invoke(msg)
                self._answered_at = monotonic()
                self._host_cpu = msg.get("cpu")
                if took >= 0.0:
                    poll.update(window, took)
                continue
            if took >= 0.0:
                poll.update(window, took)
            if kind == m.PING:
                self.send(self._pong(msg["id"]))
            elif kind == m.SHUTDOWN:
                try:
                    self.run_callbacks(self.plugin.unload_callbacks)
                except Exception:
                    logging.getLogger("plugin").exception("on_unload failed")
                return 0
            elif kind == m.WELCOME:
                max_frame = msg.get("max_frame")
                if type(max_frame) is int and max_frame > 0:
                    self.chan.max_frame = max_frame
                spin_us = msg.get("spin_us")
                if type(spin_us) is int and 0 <= spin_us <= MAX_SPIN_US:
                    chan.spin_s = poll.budget = spin_us / 1e6
            # a ctx.reply nobody waits for is ignored


def _failure(name: str, hook: str, exc: BaseException) -> HookFailed:
    tb = "".join(traceback.format_exception(exc))[-MAX_TRACEBACK:]
    return HookFailed(f"hook {hook!r} of plugin {name!r} raised {type(exc).__name__}: {exc}"[:2000],
                      plugin=name, hook=hook, error_type=type(exc).__name__, remote_traceback=tb)


def load_plugin(tree: str, entrypoint: str) -> Plugin:
    """Import `module:attr` from `tree` and return the `Plugin` it names. Raises InitializationError."""
    match = ENTRYPOINT_RE.match(entrypoint)
    if match is None:
        raise InitializationError(f"entrypoint {entrypoint!r} must look like 'module:attribute'",
                                  reason="bad_entrypoint")
    module_name, attr = match.groups()
    # The tree is the verified bundle, checked before every start: never write __pycache__ into it
    # (root ignores its read-only modes when the sandbox is off).
    sys.dont_write_bytecode = True
    sys.path.insert(0, tree)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise InitializationError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"[:2000], reason="import_failed"
        ) from exc
    obj = getattr(module, attr, None)
    if not isinstance(obj, Plugin):
        raise InitializationError(
            f"{entrypoint!r} is {type(obj).__name__}, not a plugind.sdk.Plugin", reason="bad_entrypoint"
        )
    return obj


def resolve_exec(tree: str, entrypoint: str) -> str:
    """The executable an `exec:REL` entrypoint names, checked to be a regular executable file inside
    `tree` (symlinks resolved). Raises InitializationError."""
    rel = entrypoint[len(EXEC_PREFIX):]
    root = os.path.realpath(tree)
    path = os.path.realpath(os.path.join(root, rel))
    if not rel or os.path.isabs(rel) or not path.startswith(root + os.sep):
        raise InitializationError(f"exec entrypoint {rel!r} must be a relative path inside the plugin",
                                  reason="bad_entrypoint")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InitializationError(
            f"exec entrypoint {rel!r}: {exc.strerror}", reason="bad_entrypoint"
        ) from exc
    if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
        raise InitializationError(f"exec entrypoint {rel!r} is not an executable file",
                                  reason="bad_entrypoint")
    return path


_REHEARSAL = (
    "from plugind.sdk import Plugin\n"
    "plugin = Plugin()\n"
    "@plugin.hook('rehearsal', priority=0)\n"
    "def _echo(data, ctx):\n"
    "    return data\n"
)
_REHEARSAL_MODULE = "_rehearsal_plugin"  # plugind/runtime/_rehearsal_plugin.py, _REHEARSAL's twin


def _rehearse_import() -> Plugin:
    # The import a start makes (load_plugin: a directory first on sys.path, a new FileFinder, the
    # spec, the module run), of this package's own rehearsal module, and the compile of its source
    # (an installed package may have its bytecode cached; a plugin's tree never does). Then
    # forgotten: off sys.path and out of sys.modules, so no plugin can import it by that name.
    here = os.path.dirname(__file__)
    bytecode = sys.dont_write_bytecode
    try:
        plugin = load_plugin(here, f"{_REHEARSAL_MODULE}:plugin")
        spec = sys.modules[_REHEARSAL_MODULE].__spec__
        if spec is not None and spec.origin is not None and spec.loader is not None:
            loader: Any = spec.loader
            loader.source_to_code(loader.get_data(spec.origin), spec.origin)
        return plugin
    except (InitializationError, OSError):  # its file is not visible here (a sandbox's root)
        namespace: dict[str, Any] = {"__name__": "plugind_rehearsal"}
        exec(compile(_REHEARSAL, "<rehearsal>", "exec"), namespace)  # noqa: S102 - our own source
        return namespace["plugin"]
    finally:
        sys.dont_write_bytecode = bytecode
        sys.modules.pop(_REHEARSAL_MODULE, None)
        with contextlib.suppress(ValueError):
            sys.path.remove(here)


REHEARSAL_TIMEOUT_S = 2.0


def _log_levels() -> None:
    # The levels a plugin's process logs at (its records go to the host once the forwarder is
    # attached), set only where they differ: Logger.setLevel clears the cache of every logger there
    # is, a walk that, in a fresh fork, copies the pages of all of them (~25 faults, ~0.1 ms of a
    # start). A spare sets them while it waits (rehearse), so its start skips that.
    root = logging.getLogger()
    if root.level != logging.INFO:
        root.setLevel(logging.INFO)
    ours = logging.getLogger("plugin")
    if ours.level != logging.DEBUG:
        ours.setLevel(logging.DEBUG)


def rehearse() -> None:
    """In the fork-server once at its start (what it makes is then shared by every child), and in a
    spare child before any plugin is handed to it: run once, on throwaway objects, what a
    plugin's start and first call run here (the log levels, compiling and running a module that
    builds a `Plugin`, a `Runtime`, the log forwarder, the hello, a welcome and a call through the
    frames), so that the fork-server's pages these touch are copied now, while the spare waits, and
    not during a start (each copy-on-write fault costs microseconds; a start took ~450 of them, most
    of its time).
    Touches no file and runs no plugin code; never raises (a rehearsal that fails only warms less).
    """
    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        return
    for end in (ours, theirs):  # a bound: however it goes wrong, a rehearsal never holds a spare
        end.settimeout(REHEARSAL_TIMEOUT_S)
    try:
        _log_levels()
        plugin = _rehearse_import()
        rt = Runtime(ours, "rehearsal")
        rt.plugin = plugin
        forward = _ForwardLogs(rt)
        forward.setFormatter(logging.Formatter("%(message)s"))
        host = BlockingChannel(theirs)
        rt.send(m.hello("rehearsal", "0", plugin.priorities, pid=os.getpid()))
        host.recv()
        host.send({"type": m.WELCOME, "api": m.API_VERSION, "max_frame": DEFAULT_MAX_FRAME, "spin_us": 0})
        host.send(m.invoke(1, "rehearsal", {"x": 1}, None))
        for _ in range(2):
            msg = rt._recv()
            if msg is not None and msg["type"] == m.INVOKE:
                rt.invoke(msg)
        host.recv()
    except Exception:  # noqa: S110 - best effort: the spare serves its plugin all the same
        pass
    finally:
        ours.close()
        theirs.close()


def _reap_children(signum: int, frame: FrameType | None) -> None:
    # As PID 1 of a pid namespace we inherit every orphan; reap them so none stays a zombie.
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _fatal(sock: socket.socket, name: str, err: PluginError) -> None:
    with contextlib.suppress(OSError, PluginError):
        BlockingChannel(sock).send({"type": m.FATAL, "error": err.to_wire()})
    print(f"plugind runtime [{name}]: {err}", file=sys.stderr, flush=True)


def run_child(
    sock_fd: int,
    tree: str,
    entrypoint: str,
    *,
    name: str,
    version: str = "",
    max_frame: int = DEFAULT_MAX_FRAME,
    hooks: ChildHooks | None = None,
) -> NoReturn:
    """Serve plugin `name` from `tree` over the inherited socket `sock_fd`; never returns."""
    os._exit(serve_child(sock_fd, tree, entrypoint, name=name, version=version, max_frame=max_frame,
                         hooks=hooks))


def serve_child(
    sock_fd: int,
    tree: str,
    entrypoint: str,
    *,
    name: str,
    version: str = "",
    max_frame: int = DEFAULT_MAX_FRAME,
    hooks: ChildHooks | None = None,
) -> int:
    """Body of `run_child`; returns the exit code (or execs an `exec:` plugin and does not return)."""
    hooks = hooks or NoHooks()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A handler is needed anyway: as PID 1 of a pid namespace, signals without one are dropped.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(128 + signal.SIGTERM))
    if os.getpid() == 1:
        signal.signal(signal.SIGCHLD, _reap_children)
    sock = socket.socket(fileno=sock_fd)
    sock.setblocking(True)
    if entrypoint.startswith(EXEC_PREFIX):
        return _exec_plugin(sock, tree, entrypoint, name, max_frame, hooks)
    _log_levels()  # before the plugin's import, in a spare (set while it waited) as in a fresh child
    try:
        os.chdir(tree)
        hooks.before_plugin_import()
        plugin = load_plugin(tree, entrypoint)
        hooks.after_plugin_import()
    except PluginError as exc:
        _fatal(sock, name, exc)
        return EXIT_INIT_FAILED
    except Exception as exc:
        _fatal(sock, name, InitializationError(f"{type(exc).__name__}: {exc}", plugin=name))
        return EXIT_INIT_FAILED
    if plugin.name is None:
        plugin.name = name
    rt = Runtime(sock, name, max_frame)
    rt.plugin = plugin
    signal.signal(signal.SIGALRM, rt._on_alarm)
    forward = _ForwardLogs(rt)
    forward.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger().addHandler(forward)
    try:
        rt.run_callbacks(plugin.load_callbacks)
    except Exception as exc:
        err = InitializationError(f"on_load of plugin {name!r} raised {type(exc).__name__}: {exc}"[:2000],
                                  plugin=name, reason="on_load_failed")
        _fatal(sock, name, err)
        return EXIT_INIT_FAILED
    # The plugin and its imports live as long as the process: the collector need not scan them again.
    gc.freeze()
    try:
        rt.send(m.hello(name, plugin.version or version, plugin.priorities, pid=os.getpid()))
        return rt.serve()
    except PluginError as exc:  # the host sent something we cannot parse
        print(f"plugind runtime [{name}]: {exc}", file=sys.stderr, flush=True)
        return EXIT_PROTOCOL
    except (ConnectionError, BrokenPipeError):
        return 0


def _exec_plugin(sock: socket.socket, tree: str, entrypoint: str, name: str, max_frame: int,
                 hooks: ChildHooks) -> int:
    try:
        path = resolve_exec(tree, entrypoint)
    except InitializationError as exc:
        _fatal(sock, name, exc)
        return EXIT_INIT_FAILED
    fd = sock.detach()
    os.set_inheritable(fd, True)
    env = {
        "PLUGIND_FD": str(fd),
        "PLUGIND_NAME": name,
        "PLUGIND_API": str(m.API_VERSION),
        "PLUGIND_MAX_FRAME": str(max_frame),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
    }
    os.chdir(tree)
    hooks.before_plugin_import()
    try:
        os.execve(path, [path], env)  # noqa: S606 - the plugin's own checked executable
    except OSError as exc:
        _fatal(socket.socket(fileno=fd), name,
               InitializationError(f"cannot execute {Path(path).name!r}: {exc.strerror}", plugin=name,
                                   reason="exec_failed"))
    return 127
