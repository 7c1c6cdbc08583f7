"""The plugin runtime in a fresh interpreter, driven over a real socketpair by the test as the host."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from plugind.errors import InitializationError, from_wire
from plugind.runtime.child import EXIT_INIT_FAILED, load_plugin, resolve_exec
from plugind.wire import BlockingChannel

PLUGIN = '''
import logging, os, sys, time
from plugind.sdk import Plugin

plugin = Plugin(version="2.0")

@plugin.on_load
def setup(ctx):
    ctx.set("demo.loaded", True)

@plugin.hook("echo", priority=7)
def echo(data, ctx):
    return data

@plugin.hook("modules")
def modules(data, ctx):
    return sorted(sys.modules)

@plugin.hook("raise")
def fail(data, ctx):
    raise ValueError("bad input: " + str(data))

@plugin.hook("sleep")
def sleep(data, ctx):
    time.sleep(data)
    return "woke"

@plugin.hook("async")
async def asleep(data, ctx):
    import asyncio
    await asyncio.sleep(data)
    return {"slept": data}

@plugin.hook("ctx")
def use_ctx(data, ctx):
    return ctx.get(data, "default")

@plugin.hook("log")
def log(data, ctx):
    plugin.log.warning("careful: %s", data)
    logging.getLogger("thirdparty").info("lib line")
    return None

@plugin.hook("unencodable")
def unencodable(data, ctx):
    return {1, 2}

@plugin.hook("gc")
def collector(data, ctx):
    import gc
    before = gc.get_freeze_count()
    garbage = [data]
    garbage.append(garbage)  # a cycle made while serving: still collected
    del garbage
    return [before, gc.collect() >= 1]

@plugin.on_unload
def teardown(ctx):
    with open("unload.mark", "w") as f:  # the runtime runs in the plugin's tree
        f.write("bye")
'''


def write_plugin(root: Path, source: str, module: str = "demo") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    return root


class Child:
    """A runtime child started as `python -m plugind.runtime`, and the host end of its socket."""

    def __init__(self, tree: Path, entrypoint: str = "demo:plugin", name: str = "demo",
                 prefix: list[str] | None = None) -> None:
        ours, theirs = socket.socketpair()
        self.sock = ours
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "plugind.runtime", "--fd", str(theirs.fileno()),
             "--tree", str(tree), "--entrypoint", entrypoint, "--name", name],
            pass_fds=[theirs.fileno()], stderr=subprocess.PIPE, text=True)
        theirs.close()
        self.chan = BlockingChannel(ours)
        self.chan.sock.settimeout(20)

    def call(self, call_id: int, hook: str, data: Any, deadline_ms: float | None = 5000,
             **extra: Any) -> dict[str, Any]:
        self.chan.send({"type": "invoke", "id": call_id, "hook": hook, "data": data,
                        "deadline_ms": deadline_ms, **extra})
        return self.recv_type("result")

    def recv_type(self, kind: str) -> dict[str, Any]:
        while True:
            msg = self.chan.recv()
            assert msg is not None, "runtime closed the connection"
            if msg["type"] == kind:
                return msg

    def close(self) -> None:
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.fixture
def child(tmp_path: Path) -> Iterator[Child]:
    c = Child(write_plugin(tmp_path / "demo", PLUGIN))
    yield c
    c.close()


def answer_ctx(c: Child, value: Any) -> dict[str, Any]:
    req = c.recv_type("ctx.get")
    c.chan.send({"type": "ctx.reply", "id": req["id"], "ok": True, "found": True, "value": value})
    return req


def test_hello_after_on_load_and_echo(child: Child) -> None:
    req = child.recv_type("ctx.set")  # on_load runs before hello and may use the context
    assert req["key"] == "demo.loaded" and req["value"] is True
    child.chan.send({"type": "ctx.reply", "id": req["id"], "ok": True})
    hello = child.recv_type("hello")
    assert hello["api"] == 1 and hello["name"] == "demo" and hello["version"] == "2.0"
    assert hello["hooks"] == {"echo": 7, "modules": 0, "raise": 0, "sleep": 0, "async": 0, "ctx": 0,
                              "log": 0, "unencodable": 0, "gc": 0}
    assert hello["pid"] == child.proc.pid
    child.chan.send({"type": "welcome", "api": 1, "max_frame": 1 << 20})
    result = child.call(1, "echo", {"a": [1, b"\x00"]})
    assert result.pop("cpu") in os.sched_getaffinity(child.proc.pid)  # where it answered
    assert result == {"type": "result", "id": 1, "ok": True, "data": {"a": [1, b"\x00"]}}


def start(child: Child) -> None:
    req = child.recv_type("ctx.set")
    child.chan.send({"type": "ctx.reply", "id": req["id"], "ok": True})
    child.recv_type("hello")


def test_runtime_process_imports_nothing_of_the_host(child: Child) -> None:
    start(child)
    modules = child.call(1, "modules", None)["data"]
    forbidden = ("fastapi", "uvicorn", "plugind.host", "plugind.api", "plugind.monitor",
                 "plugind.trust", "plugind.sandbox")
    assert [mod for mod in modules if mod.startswith(forbidden)] == []


def test_the_imported_plugin_is_frozen_out_of_the_collector(child: Child) -> None:
    start(child)
    frozen, collected = child.call(1, "gc", "x")["data"]
    assert frozen > 5000  # the runtime, the SDK, the plugin and their imports
    assert collected is True


def test_handler_error_crosses_as_hook_failed(child: Child) -> None:
    start(child)
    reply = child.call(2, "raise", 42)
    assert reply["ok"] is False
    err = from_wire(reply["error"])
    assert type(err).__name__ == "HookFailed"
    assert err.message == "hook 'raise' of plugin 'demo' raised ValueError: bad input: 42"
    assert err.error_type == "ValueError"  # type: ignore[attr-defined]
    assert "raise ValueError" in err.remote_traceback  # type: ignore[attr-defined]
    unknown = child.call(3, "unknown", 1)["error"]
    assert unknown["message"] == "plugin 'demo' has no handler for hook 'unknown'"
    bad = child.call(4, "unencodable", 1)["error"]
    assert bad["type"] == "HookFailed" and "returned a value the wire cannot carry" in bad["message"]
    assert child.call(5, "echo", "still alive")["data"] == "still alive"


def test_deadline_interrupts_the_handler_and_is_reported_late(child: Child) -> None:
    start(child)
    # Interrupted, not run to its end: the runtime serves one call at a time, so the calls below are
    # answered only once the handler has stopped sleeping (the test's socket gives up after 20 s).
    reply = child.call(1, "sleep", 30, deadline_ms=200)
    assert reply["ok"] is False and reply["late"] is True
    assert reply["error"]["type"] == "HookTimeout"
    assert reply["error"]["message"] == ("hook 'sleep' of plugin 'demo' exceeded its deadline of 0.2s "
                                         "and was interrupted")
    reply = child.call(2, "async", 30, deadline_ms=200)
    assert reply["error"]["type"] == "HookTimeout"
    assert child.call(3, "async", 0.01)["data"] == {"slept": 0.01}  # a fresh loop after the interrupt
    assert child.call(4, "sleep", 0)["data"] == "woke"


def test_deadline_alarm_is_reused_across_calls_yet_each_call_keeps_its_own_deadline(child: Child) -> None:
    # The runtime arms its deadline alarm lazily and leaves it armed after a call: an alarm armed for
    # an earlier call must neither cut a later call short nor let it run past its own deadline.
    start(child)
    # The deadlines that must not expire are 0.5 s, far longer than an echo takes even on a loaded
    # machine; the sleeps that must outlast an armed alarm are 1 s.
    assert child.call(1, "echo", 1, deadline_ms=500)["data"] == 1  # alarm armed for ~0.5 s
    # That alarm fires while this call, still inside its hour-long deadline, sleeps: it must not
    # interrupt (it re-arms the alarm for this call's limit, an hour away).
    assert child.call(2, "sleep", 1.0, deadline_ms=3_600_000)["data"] == "woke"
    assert child.call(3, "echo", 3, deadline_ms=7_200_000)["data"] == 3
    # A shorter deadline than the armed alarm: the alarm is moved earlier, the call is interrupted
    # (left to the alarm an hour away, it would sleep its 30 s, longer than the test's socket waits).
    reply = child.call(4, "sleep", 30, deadline_ms=200)
    assert reply["error"]["type"] == "HookTimeout" and reply["late"] is True
    # An alarm left by an earlier call fires during a call without a deadline: ignored.
    assert child.call(5, "echo", 5, deadline_ms=500)["data"] == 5
    assert child.call(6, "sleep", 1.0, deadline_ms=None)["data"] == "woke"
    # ... and between calls, while the runtime waits for the next frame: ignored too. There is no
    # event to wait for here (the alarm is inside the child), so let its ~0.5 s pass.
    assert child.call(7, "echo", 7, deadline_ms=500)["data"] == 7
    time.sleep(1.0)
    assert child.call(8, "echo", 8, deadline_ms=500)["data"] == 8
    assert child.proc.poll() is None


def test_pipelined_calls_are_answered_in_order_and_pings_too(child: Child) -> None:
    start(child)
    for i in range(1, 51):
        child.chan.send({"type": "invoke", "id": i, "hook": "echo", "data": i, "deadline_ms": None})
    child.chan.send({"type": "ping", "id": 99})
    got = [child.chan.recv() for _ in range(51)]
    assert [m["id"] for m in got] == [*range(1, 51), 99]
    assert got[-1] == {"type": "pong", "id": 99, "poll_us": 0}


US = 1e-6
PLUGIN_CPU, OTHER_CPU = 0, 1


class ScriptedHost:
    """Stands in for the runtime's channel, on a clock of its own: hands `Runtime.serve` each
    scripted message `gap` seconds after the runtime last acted, and records the poll window the
    runtime asked for before each wait. What the runtime decides is then a function of the script
    alone, not of how the scheduler treated the test."""

    def __init__(self, script: list[tuple[float, dict[str, Any]]]) -> None:
        self.script = deque(script)
        self.now = 1000.0
        self.windows: list[float] = []
        self.sent: list[dict[str, Any]] = []
        self.spin_s = 0.0  # set by the runtime from the welcome
        self.max_frame = 1 << 20

    def clock(self) -> float:
        return self.now

    def recv(self, spin_s: float = 0.0) -> dict[str, Any] | None:
        self.windows.append(spin_s)
        if not self.script:
            return None  # end of stream: serve() returns
        gap, msg = self.script.popleft()
        self.now += gap
        return msg

    def send(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)


def welcome(spin_us: object) -> tuple[float, dict[str, Any]]:
    return 0.0, {"type": "welcome", "api": 1, "max_frame": 1 << 20, "spin_us": spin_us}


def calls(gaps_us: list[float], cpu: int = OTHER_CPU) -> list[tuple[float, dict[str, Any]]]:
    """Echo calls, each coming `gap` microseconds after the previous answer, sent from `cpu`."""
    return [(gap * US, {"type": "invoke", "id": i, "hook": "echo", "data": i, "deadline_ms": None,
                        "cpu": cpu}) for i, gap in enumerate(gaps_us, 1)]


def serve_script(script: list[tuple[float, dict[str, Any]]],
                 monkeypatch: pytest.MonkeyPatch) -> ScriptedHost:
    """Run `Runtime.serve` (in this process, on this CPU numbered PLUGIN_CPU) over `script`."""
    from plugind.runtime import child as runtime
    from plugind.sdk import Plugin

    plugin = Plugin(name="demo")
    plugin.hook("echo")(lambda data, ctx: data)
    host = ScriptedHost(script)
    monkeypatch.setattr(runtime, "_monotonic", host.clock)
    monkeypatch.setattr(runtime, "_getcpu", lambda: PLUGIN_CPU)
    a, b = socket.socketpair()
    with a, b:
        rt = runtime.Runtime(b, "demo")
        rt.chan = host  # type: ignore[assignment]
        rt.plugin = plugin
        assert rt.serve() == 0
    answered = [msg["data"] for msg in host.sent if msg["type"] == "result"]
    assert answered == [msg["id"] for _, msg in script if msg["type"] == "invoke"]
    return host


BURST = [50.0] * 7  # back to back: each call 50 us after the previous answer
# The windows the runtime polls for before each wait, in microseconds: before the welcome, before
# each call, then before the end of the stream. The first call follows no answer: it counts as late.
POLL_TABLE = {
    # Within the budget: the window starts at 10 us and doubles while calls come after it ends ...
    "burst": (1000, BURST, [0, 0, 0, 10, 20, 40, 80, 80, 80]),
    # ... and stays as it is once they come while it polls.
    "burst-slower": (1000, [300.0] * 9, [0, 0, 0, 10, 20, 40, 80, 160, 320, 320, 320]),
    # Capped at the welcome's budget.
    "budget-caps": (100, [90.0] * 7, [0, 0, 0, 10, 20, 40, 80, 100, 100]),
    # A call later than the budget (calls a few ms apart, or a burst slowed down by a CPU-bound task
    # sharing the plugin's CPU, its polls taking turns with it) resets the window to 0: not polled
    # for until calls come within the budget again.
    "late-call-resets": (1000, [*BURST[:5], 5000.0, 5000.0, 50.0, 50.0],
                         [0, 0, 0, 10, 20, 40, 80, 0, 0, 10, 20]),
    "all-late": (1000, [5000.0] * 6, [0] * 8),
    # Calls 0.5-2 ms apart (REST calls on one connection) with the default budget: never polled for,
    # so such a call costs the plugin no polling at all.
    "sparse-rest-like": (200, [500.0, 1200.0, 800.0, 2000.0, 650.0, 1500.0], [0] * 8),
    # Budget 0 (what the host sends a plugin held to less than one CPU): never polls.
    "no-budget": (0, BURST, [0] * 9),
}


@pytest.mark.parametrize(("spin_us", "gaps_us", "windows_us"), POLL_TABLE.values(), ids=POLL_TABLE.keys())
def test_the_runtime_polls_for_calls_in_a_window_like_halt_polling(
        spin_us: int, gaps_us: list[float], windows_us: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    host = serve_script([welcome(spin_us), *calls(gaps_us)], monkeypatch)
    assert [round(w / US) for w in host.windows] == windows_us
    assert host.spin_s == spin_us / 1e6  # the budget for the rest of a frame that has begun


@pytest.mark.parametrize("spin_us", [-1, 1001, 2.5, "100", True, None])
def test_a_welcome_asking_for_an_invalid_poll_is_ignored(spin_us: object,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    host = serve_script([welcome(spin_us), *calls(BURST)], monkeypatch)
    assert host.windows == [0.0] * 9
    assert host.spin_s == 0.0


def test_no_polling_while_the_host_says_it_sends_from_the_plugins_cpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Polling would only take turns with the host that is to send the next call. Once the host sends
    # from another CPU, the window starts again from 10 us (the call before came to a runtime asleep).
    script = [welcome(1000), *calls(BURST, cpu=PLUGIN_CPU), *calls([50.0] * 2, cpu=OTHER_CPU)]
    host = serve_script(script, monkeypatch)
    assert [round(w / US) for w in host.windows] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 20]


def test_the_runtime_reports_its_poll_budget_in_pongs(monkeypatch: pytest.MonkeyPatch) -> None:
    ping = (0.0, {"type": "ping", "id": 7})
    host = serve_script([ping, welcome(300), ping, welcome("bad"), ping], monkeypatch)
    assert host.sent == [{"type": "pong", "id": 7, "poll_us": poll_us} for poll_us in (0, 300, 300)]


@pytest.mark.parametrize(("spin_us", "poll_us"), [(0, 0), (200, 200), (1000, 1000), (1001, 0), ("100", 0)])
def test_the_welcome_sets_the_poll_budget_of_a_real_runtime(child: Child, spin_us: object, poll_us: int,
                                                            two_cpus: tuple[int, int]) -> None:
    # End to end over the real socket: the pong says which budget the runtime took, and a burst of
    # calls from another CPU (the polling path, when the budget allows) is answered in order, each
    # result saying where the plugin ran.
    os.sched_setaffinity(child.proc.pid, {two_cpus[1]})
    start(child)
    child.chan.send({"type": "ping", "id": 1})
    assert child.recv_type("pong") == {"type": "pong", "id": 1, "poll_us": 0}  # no welcome yet
    child.chan.send({"type": "welcome", "api": 1, "max_frame": 1 << 20, "spin_us": spin_us})
    for i in range(2, 302):
        result = child.call(i, "echo", i, cpu=two_cpus[0])
        assert (result["id"], result["data"], result["cpu"]) == (i, i, two_cpus[1])
    child.chan.send({"type": "ping", "id": 1000})
    assert child.recv_type("pong") == {"type": "pong", "id": 1000, "poll_us": poll_us}


def test_context_calls_are_proxied_to_the_host(child: Child) -> None:
    start(child)
    child.chan.send({"type": "invoke", "id": 1, "hook": "ctx", "data": "host.version", "deadline_ms": 5000})
    req = child.recv_type("ctx.get")
    assert req["key"] == "host.version"
    child.chan.send({"type": "ping", "id": 50})  # served while the plugin waits for the reply
    assert child.recv_type("pong")["id"] == 50
    child.chan.send({"type": "ctx.reply", "id": req["id"], "ok": True, "found": True, "value": "0.1.0"})
    assert child.recv_type("result")["data"] == "0.1.0"
    child.chan.send({"type": "invoke", "id": 2, "hook": "ctx", "data": "nope", "deadline_ms": 5000})
    req = child.recv_type("ctx.get")
    child.chan.send({"type": "ctx.reply", "id": req["id"], "ok": False,
                     "error": {"type": "ContextError", "message": "denied", "context": {"key": "nope"}}})
    reply = child.recv_type("result")
    assert reply["error"]["type"] == "HookFailed"
    assert reply["error"]["message"] == "hook 'ctx' of plugin 'demo' raised ContextError: denied"


def test_logs_are_forwarded(child: Child) -> None:
    start(child)
    child.chan.send({"type": "invoke", "id": 1, "hook": "log", "data": "x", "deadline_ms": 5000})
    first = child.chan.recv()
    second = child.chan.recv()
    assert first == {"type": "log", "level": "warning", "msg": "careful: x", "logger": "plugin.demo"}
    assert second == {"type": "log", "level": "info", "msg": "lib line", "logger": "thirdparty"}
    assert child.recv_type("result")["ok"] is True


def test_shutdown_runs_on_unload_and_exits_zero(child: Child, tmp_path: Path) -> None:
    start(child)
    child.chan.send({"type": "shutdown", "reason": "unload"})
    assert child.proc.wait(20) == 0
    assert (tmp_path / "demo" / "unload.mark").read_text() == "bye"


def test_garbage_from_the_host_ends_the_runtime(child: Child) -> None:
    start(child)
    child.sock.sendall(b"\xff\xff\xff\xff")
    assert child.proc.wait(20) == 4
    assert child.proc.stderr is not None
    assert "exceeds the maximum" in child.proc.stderr.read()


@pytest.mark.parametrize("fields", [
    {"id": -1}, {"id": 2**63}, {"id": True}, {"id": 1.0}, {"hook": "h" * 129}, {"hook": 7},
    {"data": None, "drop": "data"}, {"deadline_ms": -1}, {"deadline_ms": "5"}, {"deadline_ms": True},
], ids=["id<0", "id>max", "id-bool", "id-float", "hook-long", "hook-int", "no-data", "deadline<0",
        "deadline-str", "deadline-bool"])
def test_a_malformed_invoke_ends_the_runtime_as_a_protocol_violation(child: Child,
                                                                    fields: dict[str, Any]) -> None:
    # The runtime checks a well-formed invoke inline (its hot path) and anything else through
    # check_from_host: each field's rule must hold on either way.
    start(child)
    msg: dict[str, Any] = {"type": "invoke", "id": 1, "hook": "echo", "data": 1, "deadline_ms": 5000}
    drop = fields.pop("drop", None)
    msg.update(fields)
    if drop:
        del msg[drop]
    child.chan.send(msg)
    assert child.proc.wait(20) == 4
    assert child.proc.stderr is not None
    assert "malformed message: invoke" in child.proc.stderr.read()


@pytest.mark.parametrize(
    ("source", "entrypoint", "message"),
    [
        ("raise ImportError('no such lib')", "demo:plugin",
         "importing 'demo' failed: ImportError: no such lib"),
        ("plugin = 5", "demo:plugin", "'demo:plugin' is int, not a plugind.sdk.Plugin"),
        ("x = 1", "demo.py", "entrypoint 'demo.py' must look like 'module:attribute'"),
        ("from plugind.sdk import Plugin\nplugin = Plugin()\n@plugin.on_load\ndef f(ctx):\n"
         "    raise RuntimeError('no config')", "demo:plugin",
         "on_load of plugin 'demo' raised RuntimeError: no config"),
    ],
    ids=["import-error", "not-a-plugin", "bad-entrypoint", "on-load-raises"],
)
def test_start_failures_send_fatal_and_exit(tmp_path: Path, source: str, entrypoint: str,
                                            message: str) -> None:
    c = Child(write_plugin(tmp_path / "demo", source), entrypoint=entrypoint)
    try:
        msg = c.recv_type("fatal")
        err = from_wire(msg["error"])
        assert isinstance(err, InitializationError)
        assert message in err.message
        assert c.proc.wait(20) == EXIT_INIT_FAILED
    finally:
        c.close()


def test_load_plugin_and_resolve_exec_checks(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "ok").write_text("#!/bin/sh\n")
    (tree / "bin" / "ok").chmod(0o755)
    (tree / "bin" / "noexec").write_text("x")
    os.symlink("/bin/sh", tree / "bin" / "escape")
    assert resolve_exec(str(tree), "exec:bin/ok") == str((tree / "bin" / "ok").resolve())
    cases = {"exec:/bin/sh": "must be a relative path inside the plugin",
             "exec:../t/bin/ok/../../../x": "must be a relative path inside the plugin",
             "exec:bin/escape": "must be a relative path inside the plugin",
             "exec:bin/noexec": "is not an executable file",
             "exec:bin": "is not an executable file",
             "exec:bin/missing": "No such file or directory",
             "exec:": "must be a relative path inside the plugin"}
    for entry, message in cases.items():
        with pytest.raises(InitializationError, match=message) as info:
            resolve_exec(str(tree), entry)
        assert info.value.reason == "bad_entrypoint", entry
    with pytest.raises(InitializationError, match="must look like 'module:attribute'"):
        load_plugin(str(tree), "a:b:c")


REAPER = '''
import os, time
from plugind.sdk import Plugin
plugin = Plugin()

@plugin.hook("orphans")
def orphans(n, ctx):
    # Each child forks a grandchild and exits at once: the grandchildren become orphans of PID 1.
    pids = []
    for _ in range(n):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            gpid = os.fork()
            if gpid == 0:
                os.close(r)
                os.read(os.open("/dev/null", os.O_RDONLY), 1)
                os._exit(0)
            os.write(w, str(gpid).encode())
            os._exit(0)
        os.close(w)
        pids.append(int(os.read(r, 32)))
        os.close(r)
    return {"pid": os.getpid(), "orphans": pids}
'''


@pytest.mark.root
def test_as_pid1_of_a_pid_namespace_it_reaps_orphans(tmp_path: Path) -> None:
    c = Child(write_plugin(tmp_path / "demo", REAPER), prefix=["unshare", "--pid", "--fork", "--kill-child"])
    try:
        hello = c.recv_type("hello")
        assert hello["pid"] == 1
        data = c.call(1, "orphans", 5)["data"]
        assert data["pid"] == 1
        unshare = psutil.Process(c.proc.pid)
        (runtime,) = unshare.children()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            kids = runtime.children()
            if not kids:
                break
            psutil.wait_procs(kids, timeout=0.2)
        assert runtime.children() == [], "zombies left under PID 1"
    finally:
        c.close()


def test_runtime_main_without_arguments_is_a_usage_error() -> None:
    out = subprocess.run([sys.executable, "-m", "plugind.runtime"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "the following arguments are required: --fd" in out.stderr
