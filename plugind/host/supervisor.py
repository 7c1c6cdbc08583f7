"""One Supervisor per plugin: owns its child process through spawn, handshake, calls, heartbeats,
crashes, restarts and shutdown.

Life of a child ("incarnation"): spawn through the launcher -> wait for `hello` (serving ctx.* and
log frames meanwhile) -> `running`: invokes with request ids, several in flight, each with its own
deadline; pings every heartbeat interval -> it ends by exit report from the fork-server, end of
stream, a protocol violation (killed at once) or a missed heartbeat (killed; excused while a call
is inside its deadline, unless the process is stopped: plugind/host/liveness.py). Then the restart
policy decides: `never`, `on-failure` (default) or `always`, with exponential backoff and a circuit
breaker (`max_restarts` within `restart_window_secs` -> `failed`).

Events for the registry, through `on_event(name, kind, detail: dict)`: crashed, oom_killed,
protocol_violation, hung, restarting, recovered, circuit_open.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plugind.config import Settings
from plugind.errors import (
    BudgetExceeded,
    ContextError,
    HookFailed,
    HookTimeout,
    InitializationError,
    NotLoaded,
    PluginCrashed,
    PluginError,
    ProtocolViolation,
    from_wire,
)
from plugind.host import heartbeats
from plugind.host.budgets import PluginBudgets, ReportThrottle
from plugind.host.context import ContextProxy, PluginContext
from plugind.host.launcher import ExitStatus, Launcher, SpawnRequest
from plugind.host.poll import LOOP_POLLING, LoopPoller, poller_for
from plugind.monitor.metrics import flush_observations
from plugind.sandbox.cgroups import CgroupHandle, cgroup_for
from plugind.sandbox.plan import build_plan
from plugind.sandbox.seccomp_audit import seccomp_kill
from plugind.wire import messages as m
from plugind.wire.frames import (
    HEADER,
    MAX_CONTAINERS,
    SMALL_FRAME,
    FrameEncoder,
    RecvBuffer,
    check_containers,
    check_outgoing,
    holds_timestamp,
)
from plugind.wire.limits import depth_message, too_deep
from plugind.wire.polling import PollWindow, getcpu

log = logging.getLogger("plugind.host.supervisor")
plugin_log = logging.getLogger("plugind.plugin")

EventCallback = Callable[[str, str, Any], None]
EOF_EXIT_WAIT_S = 1.0
LOG_LINES_PER_SEC = 200
EXPIRY_SLACK_S = 1e-6
# Error types a plugin may report for a hook; anything else is wrapped in HookFailed.
_REMOTE_ERRORS = (HookFailed, HookTimeout, ContextError)
# The reasons a plugin runtime gives for a failed start (plugind/runtime/child.py); any other is
# reported as "init_failed".
_FATAL_REASONS = frozenset(("bad_entrypoint", "import_failed", "on_load_failed", "exec_failed"))
# Put in place of a result's data nested past MAX_DEPTH (see _Connection.buffer_updated): no
# decoded value is ever this object, so a plugin cannot send it.
_TOO_DEEP = object()
# What proves the runtime serves (its one thread answers calls and pings in order): not a log line
# (any thread of the plugin's may write one) nor bytes of a frame never finished, which kept a
# plugin that answered nothing excused from its heartbeat for good.
_PROOF_OF_LIFE = frozenset((m.RESULT, m.PONG))
# Likewise for a result's data holding a msgpack timestamp (extension type -1).
_TIMESTAMP = object()
_INVOKE = m.INVOKE
_RESULT = m.RESULT
_pack_header = HEADER.pack


@dataclass
class _Incarnation:
    """One child process and its connection."""

    gen: int
    pid: int | None = None
    transport: asyncio.Transport | None = None
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    deadlines: dict[int, float] = field(default_factory=dict)
    # The calls' deadlines as a heap of (when, call id, hook, timeout_s), and one timer for the
    # earliest: cheaper than a call_later per call. Entries of answered calls (no longer in
    # `pending`) are dropped lazily, so the timer may fire for nothing and re-arm.
    expiries: list[tuple[float, int, str, float]] = field(default_factory=list)
    expiry_timer: asyncio.TimerHandle | None = None
    pings: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    next_id: int = 1
    hello: asyncio.Future[dict[str, Any]] | None = None
    exited: asyncio.Future[ExitStatus] | None = None
    fatal: PluginError | None = None
    violation: ProtocolViolation | None = None
    hung: str | None = None
    heard: float = 0.0  # loop time of the last result or pong (what only a serving runtime sends)
    eof: bool = False
    eof_timer: asyncio.TimerHandle | None = None
    proxy: ContextProxy | None = None
    log_window: float = 0.0
    log_count: int = 0
    log_dropped: int = 0
    log_bytes: int = 0
    reading_paused: bool = False  # replies over the buffered_bytes budget: the plugin must read first
    paused: asyncio.Future[None] | None = None
    started: float = 0.0  # time.time() at spawn, to tell its kernel log records from older ones
    # Invoke frames written while other calls are in flight wait here for the end of the loop turn
    # and go out in one write (see Supervisor._cork); every other frame flushes them first.
    corked: list[bytes] = field(default_factory=list)
    # The event loop its connection lives on, set at spawn. The hot path uses it rather than
    # asyncio.get_running_loop(), which makes a getpid() system call every time (CPython 3.11's
    # fork check): one or two per call otherwise.
    loop: asyncio.AbstractEventLoop | None = None


class _Connection(asyncio.BufferedProtocol):
    """Feeds frames from one child into its supervisor. The receive hot path: the transport receives
    straight into a RecvBuffer (see there why not `data_received`)."""

    def __init__(self, sup: Supervisor, inc: _Incarnation, max_frame: int) -> None:
        self.sup = sup
        self.inc = inc
        self.buf = RecvBuffer(max_frame, watch_depth=True)
        # The transport calls get_buffer once per read: hand it the RecvBuffer's own method.
        self.get_buffer = self.buf.get_buffer  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inc.transport = transport  # type: ignore[assignment]  # a stream transport (any loop)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buf.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        inc, buf = self.inc, self.buf
        if inc.violation is not None:
            return
        try:
            msgs = buf.buffer_updated(nbytes)
        except ProtocolViolation as exc:
            self.sup._violation(inc, exc)
            return
        unbounded = buf.unbounded
        if unbounded:
            # Frames too big for their size alone to rule out a value nested past the limit, or
            # holding a timestamp's header: the exact walks. A result with such a value fails its
            # call and the plugin lives; a timestamp in any other message is a violation.
            for msg in unbounded:
                if msg["type"] == m.RESULT and msg.get("ok") is True:
                    if too_deep(msg.get("data")):
                        msg["data"] = _TOO_DEEP
                    elif holds_timestamp(msg.get("data")):
                        msg["data"] = _TIMESTAMP
                elif holds_timestamp(msg):
                    self.sup._violation(inc, ProtocolViolation(
                        "msgpack extension type -1 (timestamp) is not part of the protocol",
                        detail=f"timestamp in a {str(msg['type'])[:40]} message"))
                    return
        on_message = self.sup._on_message
        alive = False
        for msg in msgs:
            alive = alive or msg["type"] in _PROOF_OF_LIFE
            on_message(inc, msg)
            if inc.violation is not None:
                return
        if alive:
            inc.heard = time.monotonic()  # the event loop's clock (asyncio's loop.time())

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()
        self.sup._on_eof(self.inc)

    def pause_writing(self) -> None:
        if self.inc.paused is None:
            self.inc.paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.inc.reading_paused and self.inc.transport is not None:
            self.inc.reading_paused = False
            with contextlib.suppress(RuntimeError):  # closing meanwhile
                self.inc.transport.resume_reading()
        fut, self.inc.paused = self.inc.paused, None
        if fut is not None and not fut.done():
            fut.set_result(None)


class Supervisor:
    """Owns one plugin's child process. See the module docstring for the life cycle."""

    # invoke() fails a call with HookTimeout at its deadline (the expiry timer, armed before its
    # first await), so the hook registry puts no timeout scope of its own around it.
    enforces_deadline = True

    def __init__(
        self,
        name: str,
        tree: str | Path,
        manifest: Any,
        settings: Settings,
        launcher: Launcher,
        context: PluginContext | None,
        on_event: EventCallback | None = None,
    ) -> None:
        self.name = name
        # Absolute (the fork-server runs in /); a sandbox plan resolves it (build_plan), and no
        # check depends on this string, so no realpath (an lstat per component) here.
        self.tree = os.path.abspath(tree)
        self.manifest = manifest
        self.settings = settings
        self.launcher = launcher
        self.context = context
        self.on_event = on_event
        self.state = "stopped"
        self.pid: int | None = None
        self.hooks: dict[str, int] = {}
        self.restarts = 0
        self.isolation: dict[str, str] = {}
        self.cgroup: CgroupHandle | None = None  # the live plugin's cgroup, for the monitor
        self.plan: Any = None
        self.last_exit: ExitStatus | None = None
        self.last_error: str | None = None
        self.hello_ms: float | None = None
        self._inc: _Incarnation | None = None
        self._gen = 0
        self._restart_times: deque[float] = deque()
        self._heartbeat: heartbeats.Beat | None = None  # its membership of the heartbeat sweep
        self._restart_task: asyncio.Task[None] | None = None
        self._watchers: set[asyncio.Task[None]] = set()
        sup = settings.supervisor
        self.max_frame = sup.max_frame_bytes
        self.spin_us = sup.spin_us
        self._host_poll = PollWindow(sup.host_spin_us / 1e6)
        self._poller: LoopPoller | None = None  # the event loop's, once a call polls
        self._plugin_cpu: object = None  # the CPU the plugin answered the last call on
        # The poll budget the plugin said, in its last pong, it took from the welcome (our
        # poll_budget_us()): None before its first pong, or for a plugin that does not say.
        self.plugin_poll_us: int | None = None
        self._encoder = FrameEncoder()  # event loop thread only
        # The last timeout_s object and its deadline_ms (round(timeout_s * 1000, 3)): calls without a
        # deadline of their own pass the very float object of the hook's configured timeout, and
        # round() with digits costs ~0.25 us. An identity check: 5 and 5.0 are equal but encode apart.
        self._timeout_s: object = None
        self._deadline_ms: float = 0.0
        self.restart_policy = settings.override_for(name).restart or sup.restart
        self.budgets = PluginBudgets.for_plugin(settings, name)
        self._budget_reports = ReportThrottle()
        # Upgrades (plugind.host.upgrade): `instance` names this instance's cgroup apart from the
        # other version's; `successor` takes the calls that reach this one after it stopped.
        self.instance = ""
        self.successor: Supervisor | None = None
        # Awaited before every spawn (first start and each restart): the registry checks there that
        # the tree is still the verified bundle and the policy still admits it; raising refuses.
        self.before_spawn: Callable[[bool], Awaitable[None]] | None = None
        # Called with the pid once an incarnation has said hello, before its start returns (the
        # registry begins a load's audit entry there, so its fsync runs beside the rest of the start).
        self.on_hello: Callable[[int], None] | None = None
        self._host_stopping = False  # see host_stopping()

    # ------------------------------------------------------------------ life cycle
    def host_stopping(self) -> None:
        """The daemon has begun to stop (a signal): from now on an exit of the plugin is part of the
        stop (under a unit whose KillMode sends SIGTERM to every process of its group, the plugin
        and the fork-server get it too), so it is logged, never restarted nor reported as a crash."""
        self._host_stopping = True

    async def start(self) -> None:
        """Spawn the child and wait for its hello.

        Raises InitializationError (import or on_load failed, bad hello, no hello in time, protocol
        violation during start-up), SandboxError (an isolation step failed) or LoadError (launcher).
        """
        if self.state not in ("stopped", "failed"):
            raise InitializationError(f"plugin {self.name!r} is already {self.state}", plugin=self.name)
        self.state = "starting"
        self._restart_times.clear()
        try:
            await self._spawn()
        except BaseException:
            self.state = "failed"
            raise
        self.state = "running"
        self._end_heartbeat()  # one left over from before a failure must not ping alongside
        self._heartbeat = heartbeats.join(self)

    def _end_heartbeat(self) -> None:
        """Stop pinging (plugind/host/heartbeats.py): the plugin is failed or being stopped."""
        beat, self._heartbeat = self._heartbeat, None
        if beat is not None:
            beat.cancel()

    async def stop(self, reason: str = "unload") -> None:
        """Shut the child down: `shutdown` frame (it runs on_unload), SIGTERM after
        `shutdown_grace_secs`, SIGKILL after another grace period. Never raises for a dead child."""
        if self.state == "stopped" and self._inc is None:
            return
        self.state = "stopping"
        self._end_heartbeat()
        task, self._restart_task = self._restart_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        inc = self._inc
        if inc is not None and inc.exited is not None and not inc.exited.done():
            grace = self.settings.supervisor.shutdown_grace_secs
            self._send(inc, {"type": m.SHUTDOWN, "reason": reason[:1024]})
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    async with asyncio.timeout(grace):
                        await asyncio.shield(inc.exited)
                    break
                except TimeoutError:
                    log.warning("plugin %s did not exit in %.1fs; sending %s", self.name, grace,
                                sig.name, extra={"plugin": self.name})
                    await self._kill(inc, sig)
            await asyncio.shield(inc.exited)
        if inc is not None:
            await self._settle(inc)
        self._inc = None
        self.pid = None
        self.state = "stopped"

    async def _settle(self, inc: _Incarnation) -> None:
        # Let the exit watcher of this incarnation finish its bookkeeping.
        watchers = [t for t in self._watchers if t is not asyncio.current_task()]
        if watchers:
            await asyncio.gather(*watchers, return_exceptions=True)

    def _plan(self) -> dict[str, Any] | None:
        # Pure: builds the sandbox plan (raises SandboxError/ConfigError when the manifest asks for
        # more than the operator allows). Sandboxing enabled always gets a plan: never fail open.
        if not self.settings.sandboxing.enabled:
            return None
        requires = getattr(self.manifest, "requires", None)
        req = {"network": list(getattr(requires, "network", ()) or ()),
               "memory_mb": getattr(requires, "memory_mb", None)}
        self.plan = build_plan(self.settings, self.name, self.tree, req, instance=self.instance)
        return dict(self.plan.to_wire())

    def poll_budget_us(self) -> int:
        """How long the plugin may poll for its next call (the welcome's spin_us): supervisor.spin_us,
        or 0 for a plugin whose cgroup holds it to less than one CPU. Polling is charged to the
        quota, and a plugin throttled for it stalls: under a 50% quota, 8 pipelined calls in flight
        went from 73k to 44k calls/s with polling on (bench/hooks.py --sandbox)."""
        plan = self.plan
        if plan is not None and plan.cgroup_backend != "none":
            quota, period = plan.limits.cpu_quota_us, plan.limits.cpu_period_us
            if quota is not None and quota < period:
                return 0
        return self.spin_us

    async def _spawn(self) -> None:
        """Start one incarnation and wait for its hello. Raises as `start` does."""
        loop = asyncio.get_running_loop()
        if self.before_spawn is not None:
            await self.before_spawn(self._gen > 0)
        plan = self._plan() if self.plan is None else dict(self.plan.to_wire())
        self._gen += 1
        inc = _Incarnation(self._gen, hello=loop.create_future(), started=time.time(), loop=loop)
        inc.proxy = self.context.proxy_for(self.name, self.settings.override_for(self.name).context_grants,
                                           self.budgets.context) if self.context is not None else None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        started = time.perf_counter()
        try:
            request = SpawnRequest(self.name, self.tree, str(self.manifest.entrypoint),
                                   str(getattr(self.manifest, "version", "") or ""), self.max_frame, plan)
            # The request is sent before this task first yields: the child starts before anything
            # else waiting on the loop (the state-file write a load begins next to it) runs. What
            # the child writes meanwhile waits in the socket until the connection below reads it.
            spawned = await self.launcher.spawn(request, theirs)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        inc.pid = spawned.pid
        inc.exited = self.launcher.wait_exit(spawned.pid)
        self._inc = inc
        self.pid = spawned.pid
        try:
            await loop.create_unix_connection(lambda: _Connection(self, inc, self.max_frame), sock=ours)
        except BaseException:
            if inc.transport is not None:
                inc.transport.abort()
            else:
                ours.close()
            await asyncio.shield(self._kill(inc, signal.SIGKILL))
            await asyncio.shield(inc.exited)
            raise
        self.isolation = spawned.steps
        self.cgroup = cgroup_for(self.plan) if self.plan is not None else None
        watcher = asyncio.create_task(self._watch(inc), name=f"watch-{self.name}-{spawned.pid}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        timeout = self.settings.supervisor.hello_timeout_secs
        assert inc.hello is not None
        try:
            async with asyncio.timeout(timeout):
                hello = await asyncio.shield(inc.hello)
        except TimeoutError:
            await self._kill(inc, signal.SIGKILL)
            await asyncio.shield(inc.exited)
            raise InitializationError(
                f"plugin {self.name!r} did not say hello within {timeout:g}s "
                "(raise [supervisor] hello_timeout_secs if its import is slow)",
                plugin=self.name, reason="no_hello") from None
        except PluginError:
            await self._kill(inc, signal.SIGKILL)
            await asyncio.shield(inc.exited)
            raise
        self.hello_ms = (time.perf_counter() - started) * 1000
        if self.on_hello is not None:
            self.on_hello(spawned.pid)
        self.hooks = dict(hello["hooks"])
        self.plugin_poll_us = None  # this incarnation has not said yet
        self._send(inc, {"type": m.WELCOME, "api": m.API_VERSION, "max_frame": self.max_frame,
                         "spin_us": self.poll_budget_us()})
        log.info("plugin %s ready (pid %d, %.1f ms)", self.name, spawned.pid, self.hello_ms,
                 extra={"plugin": self.name})

    # ------------------------------------------------------------------ calls
    async def invoke(self, hook: str, data: Any, timeout_s: float) -> Any:
        """Call `hook` with `data` in the plugin; return its result.

        Raises HookTimeout (no result within `timeout_s`), HookFailed (the handler raised or the data
        cannot be sent), PluginCrashed (the child died or is restarting), ProtocolViolation (it broke
        the protocol and was killed), NotLoaded (stopped).
        """
        inc = self._inc
        if self.state != "running" or inc is None or inc.transport is None or inc.transport.is_closing():
            if self.successor is not None:  # replaced by an upgrade: the new version answers
                return await self.successor.invoke(hook, data, timeout_s)
            raise self._unavailable()
        if len(inc.pending) >= self.budgets.pending_calls:
            # Each call in flight holds its data in the daemon until the plugin answers.
            raise self._over_budget(BudgetExceeded(
                f"plugin {self.name!r} already has {len(inc.pending)} calls in flight, its budget: retry "
                f"later, or raise [plugin.{self.name}.budgets] pending_calls", plugin=self.name,
                budget="pending_calls", limit=self.budgets.pending_calls))
        call_id = inc.next_id
        inc.next_id += 1
        cpu = getcpu()
        try:
            # m.invoke's message, built inline (the same map, key for key).
            if timeout_s is not self._timeout_s:
                self._deadline_ms = round(timeout_s * 1000, 3)
                self._timeout_s = timeout_s
            body = self._encoder.body({"type": _INVOKE, "id": call_id, "hook": hook, "data": data,
                                       "deadline_ms": self._deadline_ms, "cpu": cpu})
            size = len(body)
            if size > self.max_frame:
                check_outgoing(size, self.max_frame)
            if size > MAX_CONTAINERS:
                check_containers(body)  # the plugin would take the frame for a violation
        except ProtocolViolation as exc:
            raise HookFailed(f"cannot send data to hook {hook!r}: {exc.message}", plugin=self.name,
                             hook=hook, error_type="TypeError") from None
        # FrameEncoder.frame_parts's buffers: one joined buffer for a small frame, apart beyond.
        frame = (_pack_header(size) + body,) if size <= SMALL_FRAME else (_pack_header(size), body)
        loop = inc.loop or asyncio.get_running_loop()
        pending = inc.pending
        # The frame goes out first, the bookkeeping below (all before this call's first await)
        # while the plugin works: a reply is read in a later loop turn, so it finds the call set up.
        written = inc.paused is None
        if written:
            if pending or inc.corked or size > SMALL_FRAME:
                self._write(inc, frame, bool(pending))
            else:  # a lone small call: written at once (_write's own choice, without the call)
                inc.transport.write(frame[0])
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        pending[call_id] = fut
        when = loop.time() + timeout_s
        inc.deadlines[call_id] = when
        expiries = inc.expiries
        while expiries and expiries[0][1] not in pending:
            heapq.heappop(expiries)  # answered calls (deadlines mostly come in order)
        heapq.heappush(expiries, (when, call_id, hook, timeout_s))
        if len(expiries) > 64 and len(expiries) > 2 * len(pending):
            # Answered calls behind a live earlier deadline: keep the heap in proportion.
            expiries[:] = [e for e in expiries if e[1] in pending]
            heapq.heapify(expiries)
        timer = inc.expiry_timer
        if timer is None or when < timer.when():
            if timer is not None:
                timer.cancel()
            inc.expiry_timer = loop.call_at(when, self._expire_due, inc)
        poll, sent, polling, window = self._host_poll, 0.0, False, 0.0
        try:
            if not written:
                # The plugin is not reading: wait for room, but never past this call's deadline.
                if inc.paused is not None:
                    waiters: set[asyncio.Future[Any]] = {fut, inc.paused}
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if not fut.done() and inc.transport is not None and not inc.transport.is_closing():
                    self._write(inc, frame, len(pending) > 1)
                    written = True
            if written and poll.budget:
                sent = time.monotonic()
                window = poll.window
                # Not for a plugin on this CPU: it needs the CPU we would poll on. Not while other
                # calls are in flight either: their answers keep the loop busy. Not for a REST
                # request's call (LOOP_POLLING, see plugind.host.poll).
                if window and len(pending) == 1 and self._plugin_cpu != cpu and LOOP_POLLING.get():
                    poller = self._poller
                    if poller is None:
                        poller = self._poller = poller_for(loop)
                    poller.begin(window)
                    polling = True
            # The hook metrics of calls answered earlier (observe_ok defers them), written while
            # this call is in the plugin rather than on a caller's path.
            flush_observations()
            reply = await fut
        finally:
            pending.pop(call_id, None)
            inc.deadlines.pop(call_id, None)
            if polling:
                self._poller.end()  # type: ignore[union-attr]  # set when polling
            if sent:
                took, polled = time.monotonic() - sent, window if polling else 0.0
                if took > polled:  # else the window stays as it is (PollWindow.update): no call
                    poll.update(polled, took)
        if reply["ok"]:
            data = reply["data"]
            if data is _TOO_DEEP or data is _TIMESTAMP:  # marked on receipt
                raise HookFailed(depth_message(f"the value hook {hook!r} of plugin {self.name!r} "
                                               "returned") if data is _TOO_DEEP else
                                 f"hook {hook!r} of plugin {self.name!r} returned a msgpack "
                                 "timestamp (extension type -1), which the protocol does not "
                                 "carry", plugin=self.name, hook=hook, error_type="ValueError")
            return data
        raise self._remote_error(hook, reply["error"])

    async def drain(self) -> int:
        """Wait until every call in flight has its answer, its error or its deadline (the expiry
        timer fails it then). Returns how many calls were waited for. Never raises."""
        waited: set[int] = set()
        inc = self._inc
        loop = asyncio.get_running_loop()
        while inc is not None and inc.pending:
            waited.update(inc.pending)
            live = [f for f in inc.pending.values() if not f.done()]
            if not live:
                await asyncio.sleep(0)  # answered: let their invoke() take them out of `pending`
                continue
            # The expiry timer fails each call at its deadline; the bound is only a backstop.
            bound = max(inc.deadlines.values(), default=loop.time()) - loop.time() + 1.0
            done, _ = await asyncio.wait(live, timeout=max(bound, 0.0))
            if not done:
                break
        return len(waited)

    def _expire_due(self, inc: _Incarnation) -> None:
        """The expiry timer: fail every call past its deadline, re-arm for the next live one."""
        inc.expiry_timer = None
        loop = asyncio.get_running_loop()
        # The loop runs a timer up to its clock resolution early; count that as due.
        now = loop.time() + EXPIRY_SLACK_S
        expiries, pending = inc.expiries, inc.pending
        while expiries:
            when, call_id, hook, timeout_s = expiries[0]
            if call_id in pending and when > now:
                inc.expiry_timer = loop.call_at(when, self._expire_due, inc)
                return
            heapq.heappop(expiries)
            if call_id in pending:
                self._expire(inc, call_id, hook, timeout_s)

    def _expire(self, inc: _Incarnation, call_id: int, hook: str, timeout_s: float) -> None:
        fut = inc.pending.pop(call_id, None)
        inc.deadlines.pop(call_id, None)
        if fut is not None and not fut.done():
            fut.set_exception(HookTimeout(
                f"hook {hook!r} of plugin {self.name!r} did not answer within {timeout_s:g}s",
                plugin=self.name, hook=hook, timeout_s=timeout_s))

    def _remote_error(self, hook: str, error: Any) -> PluginError:
        err = from_wire(error)
        if not isinstance(err, _REMOTE_ERRORS):
            err = HookFailed(f"hook {hook!r} of plugin {self.name!r} failed: {err.message}"[:2000],
                             plugin=self.name, hook=hook, error_type=type(err).__name__)
        err.plugin = self.name
        if isinstance(err, HookFailed | HookTimeout):
            err.hook = hook
        return err

    def _unavailable(self) -> PluginError:
        if self.state in ("restarting", "failed", "starting"):
            why = f": {self.last_error}" if self.last_error else ""
            status = self.last_exit
            return PluginCrashed(f"plugin {self.name!r} is {self.state}{why}", plugin=self.name,
                                 exit_code=status.code if status else None,
                                 signal=status.signal if status else None)
        return NotLoaded(f"plugin {self.name!r} is {self.state}", plugin=self.name)

    # ------------------------------------------------------------------ receiving
    def _send(self, inc: _Incarnation, msg: dict[str, Any]) -> None:
        if inc.transport is not None and not inc.transport.is_closing():
            if inc.corked:
                self._flush(inc)  # frames go out in the order they were made
            inc.transport.write(self._encoder.frame(msg))

    def _write(self, inc: _Incarnation, frame: tuple[bytes, ...], others: bool) -> None:
        """Write an invoke frame (the transport is open): corked while `others` calls are in flight."""
        if inc.corked or (others and len(frame) == 1):
            self._cork(inc, frame)
        elif len(frame) == 1:
            inc.transport.write(frame[0])  # type: ignore[union-attr]  # checked open by the caller
        else:
            inc.transport.writelines(frame)  # type: ignore[union-attr]

    def _cork(self, inc: _Incarnation, frame: tuple[bytes, ...]) -> None:
        """Hold an invoke frame until the end of this loop turn, then write it with every other one
        made meanwhile, in one write.

        Only while other calls are in flight: with 8 calls in flight, the replies that come in one
        read wake their callers in one loop turn, and their next calls (one write each, one wake-up
        of the plugin each) go out together, read by the plugin in one receive. A lone call is
        written at once, so a sequential caller waits for no loop turn."""
        if not inc.corked:
            (inc.loop or asyncio.get_running_loop()).call_soon(self._flush, inc)
        inc.corked.extend(frame)

    def _flush(self, inc: _Incarnation) -> None:
        """Write the corked frames (nothing if already flushed, or once the connection is gone: the
        calls they carry are failed by whoever closed it)."""
        corked = inc.corked
        if not corked:
            return
        transport = inc.transport
        if transport is not None and not transport.is_closing():
            transport.write(corked[0] if len(corked) == 1 else b"".join(corked))
        corked.clear()

    def _on_message(self, inc: _Incarnation, msg: dict[str, Any]) -> None:
        if msg["type"] == _RESULT:
            # The hot path: a well-formed result for a call in flight, checked inline by the rules of
            # check_from_plugin; anything else goes the long way below.
            call_id, ok = msg.get("id"), msg.get("ok")
            fut = inc.pending.get(call_id) if type(call_id) is int else None
            if fut is not None and ((ok is True and "data" in msg)
                                    or (ok is False and isinstance(msg.get("error"), dict))):
                self._plugin_cpu = msg.get("cpu")
                if not fut.done():
                    fut.set_result(msg)
                    if self._poller is not None:
                        self._poller.answered()
                return
        try:
            kind = m.check_from_plugin(msg)
        except ProtocolViolation as exc:
            self._violation(inc, exc)
            return
        if kind == m.RESULT:
            fut = inc.pending.get(msg["id"])
            if fut is not None:
                if not fut.done():
                    fut.set_result(msg)
            elif msg["id"] >= inc.next_id:
                self._violation(inc, ProtocolViolation(
                    f"result for call {msg['id']} that was never made", detail="unknown result id"))
            else:
                log.debug("late result for call %d of %s dropped", msg["id"], self.name,
                          extra={"plugin": self.name})
        elif kind in m.CTX_TYPES:
            self._answer_ctx(inc, kind, msg)
        elif kind == m.LOG:
            self._plugin_log(inc, msg)
        elif kind == m.PONG:
            if inc is self._inc:
                poll_us = msg.get("poll_us")
                self.plugin_poll_us = poll_us if type(poll_us) is int else None
            ping = inc.pings.pop(msg["id"], None)
            if ping is not None and not ping.done():
                ping.set_result(None)
        elif kind == m.HELLO:
            self._on_hello(inc, msg)
        elif kind == m.FATAL:
            err = from_wire(msg["error"])
            # The reason is one the runtime gives, else the host's own: a plugin's word decides
            # nothing (a "shutting_down" from it answered its load 503, and became a metric label).
            reason = getattr(err, "reason", None)
            inc.fatal = InitializationError(f"plugin {self.name!r} failed to start: {err.message}"[:2000],
                                            plugin=self.name,
                                            reason=reason if isinstance(reason, str)
                                            and reason in _FATAL_REASONS else "init_failed")

    def _on_hello(self, inc: _Incarnation, msg: dict[str, Any]) -> None:
        assert inc.hello is not None
        if inc.hello.done():
            self._violation(inc, ProtocolViolation("second hello", detail="duplicate hello"))
            return
        if msg["api"] != m.API_VERSION:
            inc.hello.set_exception(InitializationError(
                f"plugin {self.name!r} speaks protocol api {msg['api']}, this host speaks api "
                f"{m.API_VERSION}; rebuild it against a matching SDK", plugin=self.name,
                reason="api_mismatch"))
        elif msg["name"] != self.name:
            inc.hello.set_exception(InitializationError(
                f"plugin {self.name!r} introduced itself as {msg['name']!r}", plugin=self.name,
                reason="bad_hello"))
        else:
            inc.hello.set_result(msg)

    def _answer_ctx(self, inc: _Incarnation, kind: str, msg: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"type": m.CTX_REPLY, "id": msg["id"]}
        try:
            self._check_buffered(inc)
            if inc.proxy is None:
                raise ContextError("this host has no context store", plugin=self.name)
            reply.update(inc.proxy.handle(kind, msg))
            reply["ok"] = True
        except (ContextError, BudgetExceeded) as exc:
            exc.plugin = self.name
            if isinstance(exc, BudgetExceeded):
                self._over_budget(exc)
            reply["ok"] = False
            reply["error"] = exc.to_wire()
        self._send(inc, reply)

    def _check_buffered(self, inc: _Incarnation) -> None:
        """Raise BudgetExceeded (and stop reading from the plugin until it has read its replies) when
        the replies queued for it are over its buffered_bytes budget: a plugin that asks without
        reading the answers must not grow the daemon's write buffer without end."""
        transport = inc.transport
        if transport is None:
            return
        queued = transport.get_write_buffer_size()
        if queued <= self.budgets.buffered_bytes:
            return
        if not inc.reading_paused and inc.paused is not None:
            inc.reading_paused = True  # resume_writing resumes it once the buffer has drained
            transport.pause_reading()
        raise BudgetExceeded(
            f"plugin {self.name!r} has {queued} bytes of replies it has not read, over its budget of "
            f"{self.budgets.buffered_bytes}: read the replies before asking again", plugin=self.name,
            budget="buffered_bytes", limit=self.budgets.buffered_bytes)

    def _over_budget(self, exc: BudgetExceeded) -> BudgetExceeded:
        """Report `exc` as a violation of this plugin (the first refusal of a budget, then at most one
        per REPORT_EVERY_S with the count it stands for); returns `exc` for the caller to raise."""
        budget = str(exc.budget)
        refused = self._budget_reports.refused(budget, time.monotonic())
        if refused:
            self._emit("budget_exceeded", {"budget": budget, "limit": exc.limit, "refused": refused,
                                           "message": exc.message})
        return exc

    def _plugin_log(self, inc: _Incarnation, msg: dict[str, Any]) -> None:
        # Bounded in lines and in bytes per second so a chatty plugin cannot flood the daemon's log.
        now = time.monotonic()
        if now - inc.log_window >= 1.0:
            if inc.log_dropped:
                limit = self.budgets.log_bytes_per_sec
                plugin_log.warning("%d log lines from plugin %s dropped (over %d lines or %d bytes a second)",
                                   inc.log_dropped, self.name, LOG_LINES_PER_SEC, limit,
                                   extra={"plugin": self.name})
                self._over_budget(BudgetExceeded(
                    f"plugin {self.name!r} logged more than {LOG_LINES_PER_SEC} lines or {limit} bytes in "
                    f"a second; {inc.log_dropped} lines were dropped (raise [plugin.{self.name}.budgets] "
                    "log_bytes_per_sec)", plugin=self.name, budget="log_bytes", limit=limit))
            inc.log_window, inc.log_count, inc.log_dropped, inc.log_bytes = now, 0, 0, 0
        text = msg["msg"][: m.MAX_LOG_CHARS]
        inc.log_count += 1
        inc.log_bytes += len(text.encode("utf-8", "surrogatepass"))
        if inc.log_count > LOG_LINES_PER_SEC or inc.log_bytes > self.budgets.log_bytes_per_sec:
            inc.log_dropped += 1
            return
        plugin_log.log(m.LOG_LEVELS[msg["level"]], "%s", text,
                       extra={"plugin": self.name, "plugin_logger": msg.get("logger")})

    # ------------------------------------------------------------------ failures
    def _fail_calls(self, inc: _Incarnation, err: PluginError) -> None:
        for fut in list(inc.pending.values()) + list(inc.pings.values()):
            if not fut.done():
                fut.set_exception(err)
        inc.pending.clear()
        inc.pings.clear()
        inc.expiries.clear()
        if inc.expiry_timer is not None:
            inc.expiry_timer.cancel()
            inc.expiry_timer = None

    def _violation(self, inc: _Incarnation, exc: ProtocolViolation) -> None:
        """The child broke the protocol: record why, fail its calls, kill it. Never raises."""
        if inc.violation is not None:
            return
        inc.violation = exc
        detail = exc.detail or exc.message
        self.last_error = f"protocol violation: {detail}"
        log.error("plugin %s violated the protocol (%s); killing it", self.name, detail,
                  extra={"plugin": self.name})
        err = ProtocolViolation(f"plugin {self.name!r} violated the protocol: {exc.message}",
                                plugin=self.name, detail=detail)
        self._fail_calls(inc, err)
        if inc.hello is not None and not inc.hello.done():
            inc.hello.set_exception(InitializationError(
                f"plugin {self.name!r} violated the protocol during start-up: {exc.message}",
                plugin=self.name, reason="protocol_violation"))
        if inc.transport is not None:
            inc.transport.abort()
        self._emit("protocol_violation", {"type": "protocol", "detail": detail, "pid": inc.pid})
        self._spawn_task(self._kill(inc, signal.SIGKILL))

    def _on_eof(self, inc: _Incarnation) -> None:
        if inc.eof:
            return
        inc.eof = True
        # A child that closes its socket but lives on is of no use: give it a moment to exit.
        if inc.exited is not None and not inc.exited.done():
            loop = asyncio.get_running_loop()
            inc.eof_timer = loop.call_later(
                EOF_EXIT_WAIT_S, lambda: self._spawn_task(self._kill(inc, signal.SIGKILL)))

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _kill(self, inc: _Incarnation, sig: int) -> None:
        if inc.pid is not None and inc.exited is not None and not inc.exited.done():
            with contextlib.suppress(PluginError):
                await self.launcher.kill(inc.pid, sig)

    async def _watch(self, inc: _Incarnation) -> None:
        """Wait for the child's exit report, then clean up and apply the restart policy."""
        assert inc.exited is not None
        status = await asyncio.shield(inc.exited)
        if inc.eof_timer is not None:
            inc.eof_timer.cancel()
        if inc.transport is not None:
            inc.transport.abort()
        self.last_exit = status
        if inc.pid is not None:
            self.launcher.forget(inc.pid)
        how = status.describe()
        syscall = None
        if status.signal == signal.SIGSYS and inc.pid is not None:
            kill = await asyncio.to_thread(seccomp_kill, inc.pid, inc.started)
            if kill is not None:
                syscall = kill.name or str(kill.syscall)
                how = f"{how} in {kill.describe()}, which its seccomp filter forbids"
        if inc.hung is not None:  # the calls it fails say why it was killed
            how = f"{how}, found hung: {inc.hung}"
        crash = PluginCrashed(f"plugin {self.name!r} exited ({how})", plugin=self.name,
                              exit_code=status.code, signal=status.signal)
        self._fail_calls(inc, inc.violation or crash)
        if inc.hello is not None and not inc.hello.done():
            inc.hello.set_exception(inc.fatal or InitializationError(
                f"plugin {self.name!r} exited before saying hello ({status.describe()})",
                plugin=self.name, reason="init_failed"))
        if self._inc is not inc:
            return
        if status.oom_killed:  # also while it restarts (its on_load over the limit): still a kill
            self._emit("oom_killed", {"pid": inc.pid})
        if self.state != "running":
            return
        clean = status.code == 0 and inc.violation is None and inc.hung is None
        if self._host_stopping:  # part of the stop (see host_stopping): not a crash, no restart
            log.info("plugin %s exited while plugind stops (%s)", self.name, how, extra={"plugin": self.name})
            clean = True
        elif not clean:
            self.last_error = self.last_error if inc.violation else (inc.hung or how)
            detail = {"pid": inc.pid, "exit_code": status.code, "signal": status.signal,
                      "reason": self.last_error}
            if syscall is not None:
                detail["syscall"] = syscall
            self._emit("crashed", detail)
        if not self._host_stopping and (self.restart_policy == "always"
                                        or (self.restart_policy == "on-failure" and not clean)):
            self._restart_task = asyncio.create_task(self._restart_loop(), name=f"restart-{self.name}")
        else:
            self._inc = None
            self.pid = None
            self.state = "stopped" if clean else "failed"
            self._end_heartbeat()

    async def _restart_loop(self) -> None:
        sup = self.settings.supervisor
        loop = asyncio.get_running_loop()
        self.state = "restarting"
        while True:
            now = loop.time()
            while self._restart_times and now - self._restart_times[0] > sup.restart_window_secs:
                self._restart_times.popleft()
            if len(self._restart_times) >= sup.max_restarts:
                self.state = "failed"
                self._inc = None
                self.pid = None
                self._end_heartbeat()  # nothing to ping until someone starts it again
                self._emit("circuit_open", {"restarts": len(self._restart_times),
                                            "window_s": sup.restart_window_secs,
                                            "reason": self.last_error})
                log.error("plugin %s restarted %d times in %gs; giving up", self.name,
                          len(self._restart_times), sup.restart_window_secs, extra={"plugin": self.name})
                return
            delay = min(sup.backoff_max_secs, sup.backoff_initial_secs * 2 ** len(self._restart_times))
            self._restart_times.append(now)
            self.restarts += 1
            self._emit("restarting", {"attempt": self.restarts, "delay_s": delay, "reason": self.last_error})
            await asyncio.sleep(delay)
            try:
                await self._spawn()
            except PluginError as exc:
                self.last_error = str(exc)
                log.warning("restart of plugin %s failed: %s", self.name, exc, extra={"plugin": self.name})
                continue
            self.state = "running"
            self._emit("recovered", {"pid": self.pid, "attempt": self.restarts})
            return

    def _found_hung(self, inc: _Incarnation, why: str) -> None:
        """The heartbeat sweep found the running `inc` unresponsive: record why and kill it (its exit
        watcher then applies the restart policy; the calls it fails say why)."""
        inc.hung = why
        self.last_error = why
        log.error("plugin %s is hung (%s); killing it", self.name, why, extra={"plugin": self.name})
        self._emit("hung", {"pid": inc.pid, "detail": why})
        self._spawn_task(self._kill(inc, signal.SIGKILL))

    def _emit(self, kind: str, detail: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(self.name, kind, detail)
        except Exception:  # a broken listener must not break supervision
            log.exception("on_event listener failed for %s", kind, extra={"plugin": self.name})


__all__ = ["Supervisor"]
