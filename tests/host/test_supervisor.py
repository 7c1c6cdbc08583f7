"""Supervisor against real plugin children: one scenario plugin per failure mode.

Each test runs its own event loop and fork-server; at the end no child of the fork-server may be
left (zombie or alive), checked with psutil.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
import uvloop
from cgroup_host import group_dirs

from plugind.config import PluginOverride, Settings
from plugind.daemon import event_loop_factory
from plugind.errors import (
    HookFailed,
    HookTimeout,
    InitializationError,
    NotLoaded,
    PluginCrashed,
    ProtocolViolation,
)
from plugind.host import heartbeats
from plugind.host.context import PluginContext
from plugind.host.launcher import Launcher
from plugind.host.poll import poller_for
from plugind.host.supervisor import Supervisor
from plugind.wire import decode, encode
from plugind.wire import messages as m
from plugind.wire.frames import SMALL_FRAME
from plugind.wire.limits import MAX_DEPTH

HEADER = '''
import os, signal, socket, stat, struct, sys, time
from plugind.sdk import Plugin
plugin = Plugin(version="1.0")

def host_socket():
    for fd in range(3, 256):
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                return socket.socket(fileno=os.dup(fd))
        except OSError:
            pass
    raise RuntimeError("no socket")
'''

SCENARIOS = {
    "good": '''
@plugin.on_load
def setup(ctx):
    ctx.set("good.greeting", "hi")

@plugin.hook("echo", priority=10)
def echo(data, ctx):
    return data

@plugin.hook("aecho")
async def aecho(data, ctx):
    return {"async": data}

@plugin.hook("greet")
def greet(data, ctx):
    return ctx.get("good.greeting") + " " + data

@plugin.hook("write")
def write(key, ctx):
    ctx.set(key, "written")
    return ctx.keys(key)

@plugin.on_unload
def teardown(ctx):
    with open("unloaded.mark", "w") as f:
        f.write("bye")
''',
    "raises": '''
@plugin.hook("go")
def go(data, ctx):
    raise KeyError("missing field " + str(data))

@plugin.hook("echo")
def echo(data, ctx):
    return data
''',
    "hangs": '''
@plugin.hook("go")
def go(seconds, ctx):
    time.sleep(seconds)
    return "late"

@plugin.hook("stuck")
def stuck(seconds, ctx):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # defeats the runtime's interrupt
    time.sleep(seconds)
    return "late"

@plugin.hook("echo")
def echo(data, ctx):
    return data
''',
    "exits": '''
@plugin.hook("go")
def go(code, ctx):
    os._exit(code)

@plugin.hook("echo")
def echo(data, ctx):
    return data
''',
    "garbage": '''
@plugin.hook("go")
def go(data, ctx):
    host_socket().sendall(b"\\x00\\x00\\x00\\x05" + b"\\xc1garbage")
    time.sleep(30)

@plugin.hook("echo")
def echo(data, ctx):
    return data
''',
    "bigprefix": '''
@plugin.hook("go")
def go(data, ctx):
    host_socket().sendall(struct.pack(">I", 2**31))
    time.sleep(30)

@plugin.hook("echo")
def echo(data, ctx):
    return data
''',
    "talking": '''
import logging, threading

def _talk(how):
    sock = host_socket()
    if how == "bytes":  # a frame of 1 MiB that never ends, its bytes one at a time
        sock.sendall(struct.pack(">I", 1 << 20))
    while True:
        if how == "logs":
            logging.getLogger("plugin").warning("still here")
        else:
            sock.sendall(b"\\x00")
        time.sleep(0.05)

@plugin.hook("stuck")
def stuck(how, ctx):
    threading.Thread(target=_talk, args=(how,), daemon=True).start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # defeats the runtime's interrupt
    time.sleep(60)
    return "late"

@plugin.hook("echo")
def echo(data, ctx):
    return data
''',
    "stampctx": '''
@plugin.hook("go")
def go(data, ctx):
    import msgpack
    body = msgpack.packb({"type": "ctx.set", "id": 1, "key": "stampctx.t", "value": msgpack.Timestamp(0)})
    host_socket().sendall(struct.pack(">I", len(body)) + body)
    time.sleep(30)

@plugin.hook("echo")
def echo(data, ctx):
    return data
''',
    "containers": '''
@plugin.hook("go")
def go(data, ctx):
    import msgpack
    body = msgpack.packb({"type": "log", "level": "info", "msg": "x", "pad": [[]] * 300000})
    host_socket().sendall(struct.pack(">I", len(body)) + body)
    time.sleep(30)

@plugin.hook("echo")
def echo(data, ctx):
    return data
''',
    "nohello": '''
time.sleep(60)
''',
    "badload": '''
@plugin.on_load
def setup(ctx):
    raise RuntimeError("database unreachable")
''',
    "whoami": '''
@plugin.hook("whoami")
def whoami(data, ctx):
    return {"pid": os.getpid(), "cwd": os.getcwd()}

@plugin.hook("go")
def go(code, ctx):
    os._exit(code)

@plugin.hook("sleep")
def nap(seconds, ctx):
    time.sleep(seconds)
''',
    "garbage_at_start": '''
host_socket().sendall(b"\\x00\\x00\\x00\\x03not msgpack")
time.sleep(30)
''',
    "chatty": '''
@plugin.hook("go")
def go(n, ctx):
    for i in range(n):
        plugin.log.info("line %d", i)
    return n
''',
    "stubborn": '''
@plugin.hook("echo")
def echo(data, ctx):
    return data

@plugin.on_unload
def teardown(ctx):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)
''',
    "oom_on_restart": '''
@plugin.on_load
def setup(ctx):
    if ctx.get("oom_on_restart.crashed"):  # a restart: over the memory limit before its hello
        hoard = []
        while True:
            hoard.append(b"\\x01" * (8 << 20))

@plugin.hook("go")
def go(code, ctx):
    ctx.set("oom_on_restart.crashed", True)
    os._exit(code)
''',
}


def settings(**supervisor: Any) -> Settings:
    s = Settings()
    s.sandboxing.enabled = False
    sup = {"hello_timeout_secs": 10.0, "heartbeat_interval_secs": 5.0, "heartbeat_timeout_secs": 5.0,
           "shutdown_grace_secs": 2.0, "backoff_initial_secs": 0.01, "backoff_max_secs": 0.1,
           "max_restarts": 5, "restart_window_secs": 60.0}
    sup.update(supervisor)
    for key, value in sup.items():
        setattr(s.supervisor, key, value)
    return s


class Rig:
    """A launcher, a context and scenario plugins written to tmp_path; records events."""

    def __init__(self, tmp_path: Path, launcher: Launcher, s: Settings) -> None:
        self.tmp_path = tmp_path
        self.launcher = launcher
        self.settings = s
        self.context = PluginContext()
        self.events: list[tuple[str, str, Any]] = []
        self._changed = asyncio.Event()

    def on_event(self, name: str, kind: str, detail: Any) -> None:
        self.events.append((name, kind, detail))
        self._changed.set()

    def kinds(self, name: str) -> list[str]:
        return [kind for n, kind, _ in self.events if n == name]

    async def wait_event(self, name: str, kind: str, count: int = 1, timeout: float = 20) -> None:
        async def until() -> None:
            while self.kinds(name).count(kind) < count:
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(until(), timeout)

    def supervisor(self, scenario: str, name: str | None = None) -> Supervisor:
        name = name or scenario
        tree = self.tmp_path / name
        tree.mkdir(exist_ok=True)
        (tree / "scenario.py").write_text(textwrap.dedent(HEADER) + textwrap.dedent(SCENARIOS[scenario]))
        manifest = SimpleNamespace(name=name, version="1.0", entrypoint="scenario:plugin", api=1)
        return Supervisor(name, tree, manifest, self.settings, self.launcher, self.context, self.on_event)


def run(tmp_path: Path, body: Callable[[Rig], Awaitable[None]], s: Settings | None = None,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> None:
    async def main() -> None:
        launcher = Launcher()
        await launcher.start()
        rig = Rig(tmp_path, launcher, s or settings())
        try:
            await body(rig)
            server = psutil.Process(launcher.server_pid)
            zombies = [p for p in server.children() if p.status() == psutil.STATUS_ZOMBIE]
            assert zombies == []
        finally:
            await launcher.close()
        assert not psutil.pid_exists(launcher.server_pid)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


def assert_gone(pid: int | None) -> None:
    assert pid is not None
    assert not psutil.pid_exists(pid), f"pid {pid} is still there"


def test_start_invoke_many_in_flight_context_and_clean_stop(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        sup = rig.supervisor("good")
        await sup.start()
        assert sup.state == "running"
        assert sup.hooks == {"echo": 10, "aecho": 0, "greet": 0, "write": 0}
        assert sup.hello_ms is not None and sup.hello_ms > 0  # measured (how long: bench/hooks.py)
        assert rig.context.get("good.greeting") == "hi"  # set by on_load through the proxy
        assert await sup.invoke("echo", {"x": [1, b"\x00"]}, 5) == {"x": [1, b"\x00"]}
        assert await sup.invoke("aecho", 3, 5) == {"async": 3}
        assert await sup.invoke("greet", "bob", 5) == "hi bob"
        # As many as the default pending_calls budget allows in flight at once.
        results = await asyncio.gather(*(sup.invoke("echo", i, 10) for i in range(256)))
        assert results == list(range(256))
        assert await sup.invoke("write", "good.k", 5) == ["good.k"]
        denied = "raised ContextError: plugin 'good' may not write context key 'other.k'"
        with pytest.raises(HookFailed, match=re.escape(denied)) as info:
            await sup.invoke("write", "other.k", 5)
        assert info.value.error_type == "ContextError" and info.value.plugin == "good"
        assert "other.k" not in rig.context
        with pytest.raises(HookFailed, match="cannot send data to hook 'echo'"):
            await sup.invoke("echo", object(), 5)
        pid = sup.pid
        await sup.stop("test over")
        assert sup.state == "stopped" and sup.pid is None
        assert (tmp_path / "good" / "unloaded.mark").read_text() == "bye"
        assert sup.last_exit is not None and sup.last_exit.code == 0
        assert_gone(pid)
        with pytest.raises(NotLoaded, match="plugin 'good' is stopped"):
            await sup.invoke("echo", 1, 5)
        assert rig.events == []

    run(tmp_path, body)


def test_calls_made_in_one_loop_turn_go_out_together_and_each_gets_its_own_answer(tmp_path: Path) -> None:
    # With other calls in flight, an invoke frame waits for the end of the loop turn and goes out
    # with the others made meanwhile (one write): flushed by the loop itself, with nothing else to
    # do, and every call still answered with its own result.
    async def body(rig: Rig) -> None:
        sup = rig.supervisor("good")
        await sup.start()
        inc = sup._inc
        assert inc is not None
        tasks = [asyncio.create_task(sup.invoke("echo", i, 5)) for i in range(8)]
        await asyncio.sleep(0)  # each task runs up to its await: the first written, the rest corked
        assert len(inc.corked) == 7
        assert await asyncio.wait_for(asyncio.gather(*tasks), 60) == list(range(8))
        assert inc.corked == [] and inc.pending == {}
        assert await sup.invoke("echo", "alone", 5) == "alone"  # a lone call is written at once
        await sup.stop()
        assert rig.events == []

    run(tmp_path, body)


def test_each_invoke_frame_carries_its_own_calls_deadline_byte_for_byte(tmp_path: Path) -> None:
    # The supervisor reuses the deadline_ms of the last timeout object it was given; whatever the
    # sequence of timeouts (equal floats, an equal int, another value), each frame must be the one
    # messages.invoke makes for its own call: 5 and 5.0 are equal but encode apart.
    async def body(rig: Rig) -> None:
        sup = rig.supervisor("good")
        await sup.start()
        inc = sup._inc
        assert inc is not None and inc.transport is not None
        written: list[bytes] = []
        transport = inc.transport
        real_write = transport.write

        def record(data: bytes | bytearray | memoryview) -> None:
            written.append(bytes(data))
            real_write(data)

        transport.write = record  # type: ignore[method-assign]  # an observer: bytes go out as before
        timeouts: list[float] = [5.0, 5.0, 0.25, 5, 5.0, 2.0000004, 7, 7, 1e-3, 5.0]
        try:
            for i, timeout in enumerate(timeouts):
                assert await sup.invoke("echo", i, timeout) == i
        finally:
            del transport.write  # type: ignore[method-assign]
        frames = [f for f in written if decode(f)["type"] == "invoke"]
        assert len(frames) == len(timeouts)
        for frame, timeout in zip(frames, timeouts, strict=True):
            sent = decode(frame)
            want = round(timeout * 1000, 3)
            assert sent["deadline_ms"] == want and type(sent["deadline_ms"]) is type(want)
            assert frame == encode(m.invoke(sent["id"], "echo", sent["data"], want, cpu=sent["cpu"]))
        await sup.stop()

    run(tmp_path, body)


def test_invoke_frames_of_every_size_are_the_bytes_of_encode(tmp_path: Path) -> None:
    # A frame up to SMALL_FRAME goes out joined in one write, a bigger one as header and body
    # (writelines): at every size around the bound, what reaches the transport is, joined, exactly
    # encode(messages.invoke(...)), and the echo comes back whole.
    async def body(rig: Rig) -> None:
        sup = rig.supervisor("good")
        await sup.start()
        inc = sup._inc
        assert inc is not None and inc.transport is not None
        written: list[bytes] = []
        transport = inc.transport
        real_write, real_writelines = transport.write, transport.writelines

        inside: list[bool] = []  # a transport's writelines may go through its own write

        def record(data: bytes | bytearray | memoryview) -> None:
            if not inside:
                written.append(bytes(data))
            real_write(data)

        def record_lines(parts: Any) -> None:
            parts = list(parts)
            written.append(b"".join(bytes(p) for p in parts))
            inside.append(True)
            try:
                real_writelines(parts)
            finally:
                inside.pop()

        transport.write = record  # type: ignore[method-assign]  # observers: bytes go out as before
        transport.writelines = record_lines  # type: ignore[method-assign]
        sizes = [0, 1, SMALL_FRAME - 200, SMALL_FRAME - 60, SMALL_FRAME - 40, SMALL_FRAME, SMALL_FRAME + 1,
                 4 * SMALL_FRAME]
        try:
            for size in sizes:
                payload = "x" * size
                assert await sup.invoke("echo", payload, 5.0) == payload
        finally:
            del transport.write  # type: ignore[method-assign]
            del transport.writelines  # type: ignore[method-assign]
        frames = [f for f in written if decode(f)["type"] == "invoke"]
        assert len(frames) == len(sizes)
        assert {len(f) - 4 > SMALL_FRAME for f in frames} == {False, True}  # both ways of writing
        for frame in frames:
            sent = decode(frame)
            assert frame == encode(m.invoke(sent["id"], "echo", sent["data"], 5000.0, cpu=sent["cpu"]))
        await sup.stop()

    run(tmp_path, body)


def test_a_corked_call_can_be_cancelled(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        sup = rig.supervisor("good")
        await sup.start()
        inc = sup._inc
        assert inc is not None
        first = asyncio.create_task(sup.invoke("echo", "a", 5))
        second = asyncio.create_task(sup.invoke("echo", "b", 5))
        await asyncio.sleep(0)
        assert len(inc.corked) == 1
        second.cancel()
        assert await first == "a"
        with pytest.raises(asyncio.CancelledError):
            await second
        assert inc.pending == {} and inc.deadlines == {}
        # Its frame went out with the turn and its answer, when it comes, is dropped as late: the
        # plugin broke no rule and serves the next calls.
        assert await sup.invoke("echo", "c", 5) == "c"
        assert await asyncio.gather(*(sup.invoke("echo", i, 5) for i in range(16))) == list(range(16))
        await sup.stop()
        assert rig.events == [] and sup.last_exit is not None and sup.last_exit.code == 0

    run(tmp_path, body)


def test_a_frame_sent_after_corked_calls_goes_after_them(tmp_path: Path) -> None:
    # A frame the supervisor sends while calls made in this loop turn are still corked (here the
    # `shutdown` that stop() sends) must reach the plugin after them: it answers them, then shuts
    # down; sent ahead, the plugin would exit without answering.
    async def body(rig: Rig) -> None:
        sup = rig.supervisor("good")
        await sup.start()
        inc = sup._inc
        assert inc is not None
        tasks = [asyncio.create_task(sup.invoke("echo", i, 5)) for i in range(4)]
        await asyncio.sleep(0)
        assert len(inc.corked) == 3
        sup._send(inc, {"type": "shutdown", "reason": "test"})
        assert inc.corked == []
        assert await asyncio.wait_for(asyncio.gather(*tasks), 60) == list(range(4))
        await sup.stop("test over")
        assert (tmp_path / "good" / "unloaded.mark").read_text() == "bye"

    run(tmp_path, body)


async def _reported_poll_us(sup: Supervisor) -> int:
    """The poll budget the plugin says, in its first pong, it took from the welcome."""
    async with asyncio.timeout(20):  # the heartbeat pings every 0.05 s in these tests
        while sup.plugin_poll_us is None:
            await asyncio.sleep(0.01)
    return sup.plugin_poll_us


@pytest.mark.parametrize("spin_us", [0, 150, 1000])
def test_configured_poll_budget_reaches_the_plugin(tmp_path: Path, spin_us: int) -> None:
    # supervisor.spin_us travels in the welcome (as poll_budget_us(): 0 under a CPU quota below one
    # CPU, see the next test), and the plugin's runtime polls for calls within it (how long, in
    # tests/runtime/test_runtime.py; what it buys, in bench/hooks.py).
    async def body(rig: Rig) -> None:
        sup = rig.supervisor("good")
        await sup.start()
        assert await _reported_poll_us(sup) == spin_us
        results = await asyncio.gather(*(sup.invoke("echo", i, 5) for i in range(50)))
        assert results == list(range(50))
        await sup.stop()

    run(tmp_path, body, settings(spin_us=spin_us, heartbeat_interval_secs=0.05))


def _polled_windows(loop: asyncio.AbstractEventLoop) -> list[float]:
    """The windows supervisors on `loop` will ask its poller to poll for: one per call polled for."""
    poller = poller_for(loop)
    asked: list[float] = []
    begin = poller.begin

    def spy(window_s: float) -> None:
        asked.append(window_s)
        begin(window_s)

    poller.begin = spy  # type: ignore[method-assign]
    return asked


LOOPS = {"asyncio": None, "daemon-loop": event_loop_factory()}


@pytest.mark.parametrize("loop", LOOPS.values(), ids=LOOPS.keys())
@pytest.mark.parametrize(("host_spin_us", "plugin_cpu", "polls"), [
    (1000, "other", True),  # the loop polls for the answer of a plugin on another CPU ...
    (0, "other", False),  # ... not without a budget ...
    (1000, "same", False),  # ... nor for a plugin on its own CPU: polling would take turns with it
], ids=["budget-plugin-elsewhere", "no-budget", "plugin-on-the-loops-cpu"])
def test_the_event_loop_polls_for_answers_within_its_budget_for_a_plugin_elsewhere(
        tmp_path: Path, host_spin_us: int, plugin_cpu: str, polls: bool, two_cpus: tuple[int, int],
        loop: Callable[[], asyncio.AbstractEventLoop] | None) -> None:
    window = 200e-6  # as if grown over a burst (how it grows: tests/host/test_poll.py)

    async def body(rig: Rig) -> None:
        sup = rig.supervisor("good")
        await sup.start()
        assert sup.pid is not None
        os.sched_setaffinity(sup.pid, {two_cpus[1] if plugin_cpu == "other" else two_cpus[0]})
        assert await sup.invoke("echo", 0, 5) == 0  # its result says where the plugin runs now
        asked = _polled_windows(asyncio.get_running_loop())
        for i in range(1, 21):
            sup._host_poll.window = window
            assert await sup.invoke("echo", i, 5) == i
        assert asked == ([window] * 20 if polls else [])
        if not polls:
            assert poller_for(asyncio.get_running_loop()).rounds == 0
        await sup.stop()

    run(tmp_path, body, settings(host_spin_us=host_spin_us), loop_factory=loop)


def test_a_plugin_answering_later_than_the_budget_is_not_polled_for(tmp_path: Path,
                                                                    two_cpus: tuple[int, int]) -> None:
    async def body(rig: Rig) -> None:
        sup = rig.supervisor("hangs")
        await sup.start()
        assert sup.pid is not None
        os.sched_setaffinity(sup.pid, {two_cpus[1]})
        asked = _polled_windows(asyncio.get_running_loop())
        sup._host_poll.window = 1e-3  # the whole budget, for the first call
        for _ in range(3):
            assert await sup.invoke("go", 0.005, 5) == "late"  # answered after 5 ms: past the budget
            assert sup._host_poll.window == 0.0
        assert asked == [1e-3]  # that first call only
        await sup.stop()

    run(tmp_path, body, settings(host_spin_us=1000))


@pytest.mark.parametrize(("quota", "backend", "expected"), [
    (50.0, "auto", 0),  # held to half a CPU: polling would spend the quota
    (99.0, "v1", 0),
    (100.0, "auto", 300),  # a whole CPU: polls
    (0.0, "auto", 300),  # no quota
    (50.0, "none", 300),  # no cgroup, so no quota is applied
])
def test_poll_budget_is_off_under_a_cpu_quota_below_one_cpu(tmp_path: Path, quota: float, backend: str,
                                                              expected: int) -> None:
    s = settings(spin_us=300)
    s.sandboxing.enabled = True
    s.sandboxing.cgroups.cpu_quota_percent = quota
    s.sandboxing.cgroups.backend = backend  # type: ignore[assignment]
    tree = tmp_path / "p"
    tree.mkdir()
    manifest = SimpleNamespace(name="p", version="1.0", entrypoint="scenario:plugin", api=1,
                               requires=SimpleNamespace(network=(), memory_mb=None))
    sup = Supervisor("p", tree, manifest, s, None, None)  # type: ignore[arg-type]  # never started
    assert sup.poll_budget_us() == 300  # no plan yet: unsandboxed
    sup._plan()
    assert sup.poll_budget_us() == expected


def test_context_grants_from_config(tmp_path: Path) -> None:
    s = settings()
    s.plugin = {"good": PluginOverride(context_grants=["shared."])}

    async def body(rig: Rig) -> None:
        sup = rig.supervisor("good")
        await sup.start()
        assert await sup.invoke("write", "shared.k", 5) == ["shared.k"]
        assert rig.context.get("shared.k") == "written"
        await sup.stop()

    run(tmp_path, body, s)


def test_a_raising_handler_gives_hook_failed_and_the_plugin_lives_on(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        sup = rig.supervisor("raises")
        await sup.start()
        with pytest.raises(HookFailed, match="hook 'go' of plugin 'raises' raised KeyError") as info:
            await sup.invoke("go", 1, 5)
        err = info.value
        assert (err.plugin, err.hook, err.error_type) == ("raises", "go", "KeyError")
        assert err.remote_traceback is not None and "missing field" in err.remote_traceback
        assert await sup.invoke("echo", "ok", 5) == "ok"
        with pytest.raises(HookFailed, match="plugin 'raises' has no handler for hook 'nope'"):
            await sup.invoke("nope", 1, 5)
        assert sup.restarts == 0 and rig.events == []
        await sup.stop()

    run(tmp_path, body)


def _nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def test_a_result_nested_past_the_limit_fails_its_call_alone_and_the_plugin_lives_on(tmp_path: Path) -> None:
    # The depth of a result is bounded by its frame's size first and walked only past that bound
    # (plugind.wire.frames.RecvBuffer.watch_depth): every shape must still get the exact answer,
    # alone or among other answers read at once.
    async def body(rig: Rig) -> None:
        sup = rig.supervisor("good")
        await sup.start()
        assert await sup.invoke("echo", _nested(MAX_DEPTH), 5) == _nested(MAX_DEPTH)
        with pytest.raises(HookFailed, match="nested deeper than 128 levels") as info:
            await sup.invoke("echo", _nested(MAX_DEPTH + 1), 5)
        assert info.value.error_type == "ValueError"
        # Big, shallow, and full of bytes that look like container headers (U+0080 is C2 80).
        wide = {"text": "\u0080" * 5000, "items": [[i] for i in range(300)]}
        assert await sup.invoke("echo", wide, 5) == wide
        values = [_nested(MAX_DEPTH + 1) if i % 3 == 0 else {"n": i} for i in range(9)]
        outcomes = await asyncio.gather(*(sup.invoke("echo", v, 5) for v in values),
                                        return_exceptions=True)
        for i, out in enumerate(outcomes):
            if i % 3 == 0:
                assert isinstance(out, HookFailed) and "nested deeper" in out.message, out
            else:
                assert out == {"n": i}
        assert sup.state == "running" and sup.restarts == 0 and rig.events == []
        await sup.stop()

    run(tmp_path, body)


def test_a_handler_past_its_deadline_times_out_and_others_keep_working(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        hangs, good = rig.supervisor("hangs"), rig.supervisor("good")
        await asyncio.gather(hangs.start(), good.start())
        slow = asyncio.create_task(hangs.invoke("go", 30, 0.3))
        assert await good.invoke("echo", "meanwhile", 5) == "meanwhile"
        # The host's timer or the runtime's interrupt, whichever reports first: both are HookTimeout.
        # (Neither: "late" after 30 s, or the heartbeat's PluginCrashed once the deadline is past.)
        either = r"hook 'go' of plugin 'hangs' (did not answer within|exceeded its deadline of) 0.3s"
        with pytest.raises(HookTimeout, match=either) as info:
            await slow
        assert info.value.timeout_s == 0.3 and info.value.hook == "go"
        # The runtime interrupted the handler, so the same child serves the next call.
        pid = hangs.pid
        assert await hangs.invoke("echo", 1, 5) == 1
        assert hangs.pid == pid and rig.events == []
        await asyncio.gather(hangs.stop(), good.stop())

    run(tmp_path, body)


def test_each_call_times_out_at_its_own_deadline_whatever_the_order(tmp_path: Path) -> None:
    # The supervisor keeps one expiry timer per child for the earliest deadline in flight.
    s = settings(shutdown_grace_secs=0.3)

    async def body(rig: Rig) -> None:
        sup = rig.supervisor("hangs")
        await sup.start()
        # A shorter deadline behind a longer one (the runtime serves in order): the timer moves earlier.
        first = asyncio.create_task(sup.invoke("go", 1.0, 30))
        await asyncio.sleep(0)  # let `first` go out before the next call
        short = "hook 'go' of plugin 'hangs' did not answer within 0.2s"
        with pytest.raises(HookTimeout, match=re.escape(short)):
            await sup.invoke("go", 0, 0.2)
        assert not first.done()
        assert await first == "late"
        # The earliest deadline belongs to a call already answered: the timer re-arms for the next one,
        # a handler the runtime cannot interrupt (SIGALRM blocked), so only the host can time it out.
        answered = asyncio.create_task(sup.invoke("go", 0, 0.3))
        stuck = asyncio.create_task(sup.invoke("stuck", 60, 0.6))
        assert await answered == "late"
        # Without the re-armed timer, only the heartbeat would end it: PluginCrashed, the plugin hung.
        stuck_msg = "hook 'stuck' of plugin 'hangs' did not answer within 0.6s"
        with pytest.raises(HookTimeout, match=re.escape(stuck_msg)):
            await stuck
        await sup.stop()

    run(tmp_path, body, s)


def test_on_the_daemons_event_loop_calls_deadlines_and_stop_work_alike(tmp_path: Path) -> None:
    # The daemon runs on uvloop (plugind.daemon.event_loop_factory); the other tests use asyncio's loop.
    factory = event_loop_factory()
    assert factory is uvloop.new_event_loop

    async def body(rig: Rig) -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        hangs, good = rig.supervisor("hangs"), rig.supervisor("good")
        await asyncio.gather(hangs.start(), good.start())
        assert await good.invoke("greet", "bob", 5) == "hi bob"
        results = await asyncio.gather(*(good.invoke("echo", {"n": i}, 10) for i in range(200)))
        assert results == [{"n": i} for i in range(200)]
        big = {"body": b"x" * (256 * 1024)}
        assert await good.invoke("echo", big, 10) == big
        stuck_msg = "hook 'stuck' of plugin 'hangs' did not answer within 0.3s"
        with pytest.raises(HookTimeout, match=re.escape(stuck_msg)):
            await hangs.invoke("stuck", 60, 0.3)
        pid = good.pid
        await asyncio.gather(hangs.stop(), good.stop())
        assert good.last_exit is not None and good.last_exit.code == 0
        assert_gone(pid)

    run(tmp_path, body, settings(shutdown_grace_secs=0.3), loop_factory=factory)


def test_a_wedged_handler_fails_the_heartbeat_and_is_restarted(tmp_path: Path) -> None:
    s = settings(heartbeat_interval_secs=0.1, heartbeat_timeout_secs=0.3)

    async def body(rig: Rig) -> None:
        sup = rig.supervisor("hangs")
        await sup.start()
        pid = sup.pid
        with pytest.raises(HookTimeout):
            await sup.invoke("stuck", 60, 0.2)
        await rig.wait_event("hangs", "recovered")
        assert "hung" in rig.kinds("hangs")
        crashed = next(d for n, k, d in rig.events if k == "crashed")
        assert crashed["signal"] == signal.SIGKILL and crashed["reason"] == "no pong within 0.3s"
        assert_gone(pid)
        assert sup.pid != pid and await sup.invoke("echo", 2, 5) == 2
        await sup.stop()

    run(tmp_path, body, s)


@pytest.mark.parametrize("how", ["logs", "bytes"])
def test_a_wedged_handler_is_found_hung_whatever_other_threads_write(tmp_path: Path, how: str) -> None:
    # Log lines (any thread may write them) or the first bytes of a frame never finished prove
    # nothing of the runtime, which answers no ping: it is found hung all the same.
    s = settings(heartbeat_interval_secs=0.1, heartbeat_timeout_secs=0.3)

    async def body(rig: Rig) -> None:
        sup = rig.supervisor("talking")
        await sup.start()
        pid = sup.pid
        with pytest.raises(HookTimeout):
            await sup.invoke("stuck", how, 0.2)
        await rig.wait_event("talking", "recovered")
        assert "hung" in rig.kinds("talking")
        assert_gone(pid)
        assert sup.pid != pid and await sup.invoke("echo", 2, 5) == 2
        await sup.stop()

    run(tmp_path, body, s)


def test_one_heartbeat_sweep_finds_the_stopped_plugin_among_many_and_spares_the_busy_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every supervisor of a loop is pinged by one sweep (plugind/host/heartbeats.py), with the same
    # verdicts as a task per plugin: among six plugins, the one SIGSTOPped with a call in flight far
    # inside its deadline is found hung (the call fails at once, it is restarted); the one busy in a
    # call longer than the heartbeat timeout, inside its deadline, is not; the idle ones keep answering.
    s = settings(heartbeat_interval_secs=0.1, heartbeat_timeout_secs=0.4)
    monkeypatch.setattr(heartbeats, "SLICE", 2)  # a sweep over several loop turns, as with 1,000

    async def body(rig: Rig) -> None:
        sups = [rig.supervisor("hangs", f"p{i}") for i in range(6)]
        await asyncio.gather(*(sup.start() for sup in sups))
        sweeps = {id(b.sweep) for b in (sup._heartbeat for sup in sups) if b is not None}
        assert len(sweeps) == 1 and all(heartbeats.beating(sup) for sup in sups)
        stopped, busy, idle = sups[0], sups[1], sups[2:]
        pid = stopped.pid
        assert pid is not None
        in_flight = asyncio.ensure_future(stopped.invoke("go", 30, 60))
        busy_call = asyncio.ensure_future(busy.invoke("go", 1.5, 60))
        await asyncio.sleep(0.2)  # both calls are running in their plugins
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(PluginCrashed, match=r"found hung: no pong within 0.4s: its process is stopped"):
            await asyncio.wait_for(in_flight, 20)
        await rig.wait_event("p0", "recovered")
        assert stopped.pid != pid and await stopped.invoke("echo", 1, 5) == 1
        assert await asyncio.wait_for(busy_call, 20) == "late"  # busy past the timeout, not hung
        for sup in idle:
            assert await sup.invoke("echo", 2, 5) == 2
        assert [n for n, k, _ in rig.events if k == "hung"] == ["p0"]
        await asyncio.gather(*(sup.stop() for sup in sups))
        assert not any(heartbeats.beating(sup) for sup in sups)
        assert_gone(pid)

    run(tmp_path, body, s)


def test_exit_mid_call_is_a_crash_and_the_plugin_restarts(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        sup = rig.supervisor("exits")
        await sup.start()
        pid = sup.pid
        with pytest.raises(PluginCrashed, match=r"plugin 'exits' exited \(exit code 7\)") as info:
            await sup.invoke("go", 7, 5)
        assert info.value.exit_code == 7 and info.value.signal is None
        await rig.wait_event("exits", "recovered")
        assert rig.kinds("exits") == ["crashed", "restarting", "recovered"]
        assert sup.restarts == 1 and sup.state == "running" and sup.pid != pid
        assert_gone(pid)
        assert await sup.invoke("echo", "back", 5) == "back"
        await sup.stop()

    run(tmp_path, body)


def test_sigkill_from_outside_is_detected_and_restarted(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        sup, good = rig.supervisor("exits"), rig.supervisor("good")
        await asyncio.gather(sup.start(), good.start())
        pid = sup.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await rig.wait_event("exits", "recovered")
        crashed = next(d for n, k, d in rig.events if k == "crashed")
        assert crashed["signal"] == signal.SIGKILL and crashed["reason"] == "killed by SIGKILL"
        assert_gone(pid)
        assert await sup.invoke("echo", 1, 5) == 1
        assert await good.invoke("echo", 2, 5) == 2
        assert rig.kinds("good") == []
        await asyncio.gather(sup.stop(), good.stop())

    run(tmp_path, body)


@pytest.mark.parametrize(
    ("scenario", "message", "detail"),
    [
        ("garbage", "plugin 'garbage' violated the protocol: frame is not valid msgpack",
         "undecodable frame: FormatError"),
        ("bigprefix", "plugin 'bigprefix' violated the protocol: frame of 2147483648 bytes exceeds the "
         "maximum of 16777216 bytes", "oversized frame: 2147483648 > 16777216"),
        # msgpack decodes a timestamp itself (no ext_hook): found by the walk of a frame with its header.
        ("stampctx", "plugin 'stampctx' violated the protocol: msgpack extension type -1 (timestamp) is "
         "not part of the protocol", "timestamp in a ctx.set message"),
        # One byte of frame per empty array: refused as it is decoded, past the limit.
        ("containers", "plugin 'containers' violated the protocol: message holds more than 262144 maps "
         "and arrays", "too many containers"),
    ],
    ids=["garbage", "2GB-prefix", "timestamp", "containers"],
)
def test_protocol_violations_kill_the_plugin_and_are_recorded(
    tmp_path: Path, scenario: str, message: str, detail: str
) -> None:
    async def body(rig: Rig) -> None:
        sup, good = rig.supervisor(scenario), rig.supervisor("good")
        await asyncio.gather(sup.start(), good.start())
        pid = sup.pid
        with pytest.raises(ProtocolViolation) as info:
            await sup.invoke("go", None, 10)
        assert info.value.message.startswith(message)
        assert info.value.detail == detail and info.value.plugin == scenario
        await rig.wait_event(scenario, "recovered")
        assert rig.kinds(scenario) == ["protocol_violation", "crashed", "restarting", "recovered"]
        violation = rig.events[0][2]
        assert violation["type"] == "protocol" and violation["detail"] == detail
        assert_gone(pid)
        assert await sup.invoke("echo", "fresh child", 5) == "fresh child"
        assert await good.invoke("echo", "unaffected", 5) == "unaffected"
        await asyncio.gather(sup.stop(), good.stop())

    run(tmp_path, body)


def test_a_plugin_that_never_says_hello(tmp_path: Path) -> None:
    s = settings(hello_timeout_secs=0.5)

    async def body(rig: Rig) -> None:
        sup = rig.supervisor("nohello")
        no_hello = r"plugin 'nohello' did not say hello within 0\.5s"
        with pytest.raises(InitializationError, match=no_hello) as info:
            await sup.start()
        assert info.value.reason == "no_hello"
        assert sup.state == "failed"
        assert_gone(sup.pid)

    run(tmp_path, body, s)


def test_on_load_failure_is_an_initialization_error(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        sup = rig.supervisor("badload")
        with pytest.raises(InitializationError,
                           match="plugin 'badload' failed to start: on_load of plugin 'badload' raised "
                                 "RuntimeError: database unreachable") as info:
            await sup.start()
        assert info.value.reason == "on_load_failed"
        assert sup.state == "failed" and sup.last_exit is not None and sup.last_exit.code == 3
        assert_gone(sup.pid)

    run(tmp_path, body)


def test_restart_never_leaves_the_plugin_failed(tmp_path: Path) -> None:
    s = settings()
    s.plugin = {"exits": PluginOverride(restart="never")}

    async def body(rig: Rig) -> None:
        sup = rig.supervisor("exits")
        await sup.start()
        with pytest.raises(PluginCrashed):
            await sup.invoke("go", 9, 5)
        await rig.wait_event("exits", "crashed")
        assert sup.state == "failed" and sup.restarts == 0
        with pytest.raises(PluginCrashed, match=r"plugin 'exits' is failed: exit code 9") as info:
            await sup.invoke("echo", 1, 5)
        assert info.value.exit_code == 9
        await sup.stop()
        assert sup.state == "stopped"

    run(tmp_path, body, s)


def test_clean_exit_restarts_only_with_always(tmp_path: Path) -> None:
    s = settings()
    s.plugin = {"always": PluginOverride(restart="always")}

    async def body(rig: Rig) -> None:
        on_failure, always = rig.supervisor("exits", "onfail"), rig.supervisor("exits", "always")
        await asyncio.gather(on_failure.start(), always.start())
        for sup in (on_failure, always):
            with pytest.raises(PluginCrashed, match=r"exited \(exit code 0\)"):
                await sup.invoke("go", 0, 5)
        await rig.wait_event("always", "recovered")
        assert rig.kinds("always") == ["restarting", "recovered"]
        assert rig.kinds("onfail") == []
        assert on_failure.state == "stopped" and always.state == "running"
        await always.stop()

    run(tmp_path, body, s)


def test_backoff_doubles_and_the_circuit_breaker_opens(tmp_path: Path) -> None:
    s = settings(max_restarts=3, backoff_initial_secs=0.05, backoff_max_secs=0.15)

    async def body(rig: Rig) -> None:
        sup = rig.supervisor("exits")
        await sup.start()
        for n in range(1, 4):
            with pytest.raises(PluginCrashed):
                await sup.invoke("go", 1, 5)
            await rig.wait_event("exits", "recovered", count=n)
        with pytest.raises(PluginCrashed):
            await sup.invoke("go", 1, 5)
        await rig.wait_event("exits", "circuit_open")
        delays = [d["delay_s"] for n, k, d in rig.events if k == "restarting"]
        assert delays == [0.05, 0.1, 0.15]  # doubling, capped at backoff_max_secs
        assert sup.state == "failed" and sup.restarts == 3
        opened = next(d for n, k, d in rig.events if k == "circuit_open")
        assert opened["restarts"] == 3 and opened["reason"] == "exit code 1"
        with pytest.raises(PluginCrashed, match="plugin 'exits' is failed"):
            await sup.invoke("echo", 1, 5)
        # Nothing is left running for a failed plugin, and starting it again gives it one heartbeat.
        await asyncio.sleep(0)
        assert not heartbeats.beating(sup)
        await sup.start()
        assert heartbeats.beating(sup) and sup.state == "running"
        await sup.stop()

    run(tmp_path, body, s)


def test_stop_escalates_to_sigkill_when_on_unload_hangs(tmp_path: Path) -> None:
    s = settings(shutdown_grace_secs=0.3)

    async def body(rig: Rig) -> None:
        sup = rig.supervisor("stubborn")
        await sup.start()
        pid = sup.pid
        await sup.stop("unload")  # on_unload ignores SIGTERM and sleeps 60 s
        assert sup.last_exit is not None and sup.last_exit.signal == signal.SIGKILL
        assert sup.state == "stopped" and rig.events == []
        assert_gone(pid)

    run(tmp_path, body, s)


def test_stop_during_backoff_cancels_the_restart(tmp_path: Path) -> None:
    s = settings(backoff_initial_secs=5.0, backoff_max_secs=5.0)

    async def body(rig: Rig) -> None:
        sup = rig.supervisor("exits")
        await sup.start()
        with pytest.raises(PluginCrashed):
            await sup.invoke("go", 1, 5)
        await rig.wait_event("exits", "restarting")
        assert sup.state == "restarting"
        with pytest.raises(PluginCrashed, match="plugin 'exits' is restarting: exit code 1"):
            await sup.invoke("echo", 1, 5)
        await sup.stop()
        assert sup.state == "stopped" and "recovered" not in rig.kinds("exits")
        kids = psutil.Process(rig.launcher.server_pid).children()
        # A spare forked ahead is no plugin (announced, or forked a moment ago and still so named).
        assert [p for p in kids if p.pid != rig.launcher.spare_pid and p.name() != "plugind-spare"] == []

    run(tmp_path, body, s)


def test_exec_plugin_in_perl_end_to_end(tmp_path: Path, repo_root: Path) -> None:
    async def body(rig: Rig) -> None:
        tree = repo_root / "examples" / "exec-echo"
        manifest = SimpleNamespace(name="exec-echo", version="0.1.0", entrypoint="exec:bin/plugin", api=1)
        sup = Supervisor("exec-echo", tree, manifest, rig.settings, rig.launcher, None, rig.on_event)
        await sup.start()
        assert sup.hooks == {"echo": 0, "fail": 0}
        assert psutil.Process(sup.pid).name() == "plugin" or "perl" in psutil.Process(sup.pid).exe()
        payload = {"a": [1, -5, 3.5, None, True, "héllo", b"\x00\xff"], "big": "x" * 70_000, "n": 2**40}
        assert await sup.invoke("echo", payload, 5) == {"echo": payload, "lang": "perl"}
        results = await asyncio.gather(*(sup.invoke("echo", i, 5) for i in range(100)))
        assert results == [{"echo": i, "lang": "perl"} for i in range(100)]
        with pytest.raises(HookFailed, match="exec-echo: asked to fail") as info:
            await sup.invoke("fail", None, 5)
        assert info.value.error_type == "PerlError" and info.value.hook == "fail"
        pid = sup.pid
        await sup.stop()
        assert sup.last_exit is not None and sup.last_exit.code == 0
        assert_gone(pid)

    run(tmp_path, body)


def test_a_plugin_that_stops_reading_cannot_block_callers_past_their_deadline(tmp_path: Path) -> None:
    s = settings(shutdown_grace_secs=0.3)

    async def body(rig: Rig) -> None:
        sup = rig.supervisor("hangs")
        await sup.start()
        stuck = asyncio.create_task(sup.invoke("stuck", 60, 0.2))
        big = b"x" * (1 << 20)
        # Far more than the socket buffers hold: the transport pauses writing, callers must still time
        # out (left waiting, they would end with the heartbeat's PluginCrashed, or echoes after 60 s).
        results = await asyncio.gather(*(sup.invoke("echo", big, 1.0) for _ in range(64)),
                                       return_exceptions=True)
        assert all(isinstance(r, HookTimeout) for r in results), {type(r).__name__ for r in results}
        with pytest.raises(HookTimeout):
            await stuck
        pid = sup.pid
        await sup.stop()
        assert sup.last_exit is not None and sup.last_exit.code == 128 + signal.SIGTERM
        assert_gone(pid)

    run(tmp_path, body, s)


@pytest.mark.root
def test_sandboxed_plugin_through_the_real_sandbox(tmp_path: Path, cgroup_parent: str) -> None:
    s = settings()
    s.sandboxing.enabled = True
    s.sandboxing.cgroups.parent = cgroup_parent  # the tests' own, never the hierarchy's root

    async def body(rig: Rig) -> None:
        assert rig.launcher.sandbox_available
        sup = rig.supervisor("whoami")
        sup.manifest.requires = SimpleNamespace(network=(), memory_mb=None)
        await sup.start()
        assert sup.isolation["pid_ns"] == "active" and sup.isolation["seccomp"] == "active"
        assert sup.isolation["cgroup"].startswith("active"), sup.isolation
        assert group_dirs(f"{cgroup_parent}/whoami"), f"no cgroup for the plugin under {cgroup_parent}"
        assert await sup.invoke("whoami", None, 5) == {"pid": 1, "cwd": str(tmp_path / "whoami")}
        with pytest.raises(HookTimeout):  # SIGALRM deadlines work under seccomp too
            await sup.invoke("sleep", 30, 0.2)
        pid = sup.pid
        with pytest.raises(PluginCrashed, match=r"exit code 4\)"):
            await sup.invoke("go", 4, 5)
        await rig.wait_event("whoami", "recovered")
        assert_gone(pid)
        assert (await sup.invoke("whoami", None, 5))["pid"] == 1
        await sup.stop()
        assert sup.last_exit is not None and sup.last_exit.code == 0
        assert group_dirs(f"{cgroup_parent}/whoami") == [], "the plugin's cgroup outlived it"

    run(tmp_path, body, s)


@pytest.mark.root
def test_an_oom_kill_while_the_plugin_restarts_is_reported(tmp_path: Path, cgroup_parent: str) -> None:
    # Its restart's on_load runs over the memory limit: the OOM killer takes it before its hello,
    # while the supervisor is restarting it, not running it. That is an OOM kill all the same.
    s = settings(max_restarts=2)
    s.sandboxing.enabled = True
    s.sandboxing.cgroups.parent = cgroup_parent
    s.sandboxing.cgroups.memory_limit_mb = 64

    async def body(rig: Rig) -> None:
        sup = rig.supervisor("oom_on_restart")
        sup.manifest.requires = SimpleNamespace(network=(), memory_mb=None)
        await sup.start()
        assert sup.isolation["cgroup"].startswith("active"), sup.isolation
        first = sup.pid
        with pytest.raises(PluginCrashed, match=r"exit code 4\)"):
            await sup.invoke("go", 4, 5)
        await rig.wait_event("oom_on_restart", "oom_killed", timeout=60)
        kills = [d for n, kind, d in rig.events if n == "oom_on_restart" and kind == "oom_killed"]
        assert first not in [k["pid"] for k in kills]  # its own exit (status 4) was no OOM kill
        assert "recovered" not in rig.kinds("oom_on_restart")
        await sup.stop()

    run(tmp_path, body, s)


def test_garbage_before_hello_fails_the_start(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        sup = rig.supervisor("garbage_at_start")
        with pytest.raises(InitializationError, match="plugin 'garbage_at_start' violated the protocol "
                                                      "during start-up: frame is not valid msgpack") as info:
            await sup.start()
        assert info.value.reason == "protocol_violation"
        assert rig.kinds("garbage_at_start") == ["protocol_violation"]
        assert sup.state == "failed"
        assert_gone(sup.pid)

    run(tmp_path, body)


def test_plugin_logs_are_re_emitted_with_its_name_and_bounded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(rig: Rig) -> None:
        sup = rig.supervisor("chatty")
        await sup.start()
        with caplog.at_level(logging.INFO, logger="plugind.plugin"):
            assert await sup.invoke("go", 1000, 10) == 1000
            await sup.invoke("go", 0, 10)  # every log frame of the first call is in by now
        lines = [r for r in caplog.records if r.name == "plugind.plugin"]
        assert 1 <= len(lines) <= 200  # at most 200 lines per second per plugin
        assert lines[0].getMessage() == "line 0"
        assert lines[0].plugin == "chatty"  # type: ignore[attr-defined]
        assert lines[0].plugin_logger == "plugin.chatty"  # type: ignore[attr-defined]
        await sup.stop()

    run(tmp_path, body)
