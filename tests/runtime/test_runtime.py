"""The plugin runtime in a fresh interpreter, driven over a real socketpair by the test as the host."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
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
    t0 = time.monotonic()
    reply = child.call(1, "sleep", 30, deadline_ms=200)
    assert time.monotonic() - t0 < 5
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
    assert child.call(1, "echo", 1, deadline_ms=100)["data"] == 1  # alarm armed for ~0.12 s
    # That alarm fires while this call, still inside its 20 s deadline, sleeps: it must not interrupt
    # (it re-arms the alarm for this call's limit, ~20 s).
    assert child.call(2, "sleep", 0.4, deadline_ms=20000)["data"] == "woke"
    assert child.call(3, "echo", 3, deadline_ms=60000)["data"] == 3
    # A shorter deadline than the armed alarm: the alarm is moved earlier, the call is interrupted.
    t0 = time.monotonic()
    reply = child.call(4, "sleep", 30, deadline_ms=200)
    assert time.monotonic() - t0 < 5
    assert reply["error"]["type"] == "HookTimeout" and reply["late"] is True
    # An alarm left by an earlier call fires during a call without a deadline: ignored.
    assert child.call(5, "echo", 5, deadline_ms=50)["data"] == 5
    assert child.call(6, "sleep", 0.3, deadline_ms=None)["data"] == "woke"
    # ... and between calls, while the runtime waits for the next frame: ignored too. There is no
    # event to wait for here (the alarm is inside the child), so let its ~70 ms pass.
    assert child.call(7, "echo", 7, deadline_ms=50)["data"] == 7
    time.sleep(0.2)
    assert child.call(8, "echo", 8, deadline_ms=50)["data"] == 8
    assert child.proc.poll() is None


def test_pipelined_calls_are_answered_in_order_and_pings_too(child: Child) -> None:
    start(child)
    for i in range(1, 51):
        child.chan.send({"type": "invoke", "id": i, "hook": "echo", "data": i, "deadline_ms": None})
    child.chan.send({"type": "ping", "id": 99})
    got = [child.chan.recv() for _ in range(51)]
    assert [m["id"] for m in got] == [*range(1, 51), 99]
    assert got[-1] == {"type": "pong", "id": 99}


def _sleeps(pid: int) -> int:
    """How often process `pid` has gone to sleep (voluntary context switches)."""
    return psutil.Process(pid).num_ctx_switches().voluntary


@pytest.mark.parametrize("spin_us", [0, 1000])
def test_a_burst_of_calls_is_served_without_sleeping_when_polling_is_on(
        child: Child, spin_us: int, two_cpus: tuple[int, int]) -> None:
    # After answering, the runtime polls its socket for the next call (up to the welcome's spin_us)
    # instead of sleeping in recv(): a burst of back-to-back calls from a host on another CPU then
    # costs it (almost) no sleep and wake-up. With spin_us 0 it sleeps between every two calls.
    os.sched_setaffinity(child.proc.pid, {two_cpus[1]})
    start(child)
    child.chan.send({"type": "welcome", "api": 1, "max_frame": 1 << 20, "spin_us": spin_us})
    for i in range(1, 21):  # the poll window grows from 10 us to the budget over the first calls
        child.call(i, "echo", i)
    before = _sleeps(child.proc.pid)
    for i in range(100, 600):
        assert child.call(i, "echo", i)["data"] == i
    slept = _sleeps(child.proc.pid) - before
    assert child.call(1000, "echo", 0)["cpu"] == two_cpus[1]  # results say where the plugin runs
    if spin_us:
        assert slept < 100, f"{slept} sleeps for 500 back-to-back calls"
    else:
        assert slept >= 400, f"only {slept} sleeps for 500 calls without polling"


def test_no_polling_while_the_host_says_it_runs_on_the_plugins_cpu(child: Child,
                                                                   two_cpus: tuple[int, int]) -> None:
    # Each invoke may say which CPU the host sent it from. When that is the plugin's own CPU,
    # polling would only take turns with the host, so the runtime sleeps between calls. (The host
    # here really runs on the other CPU; only what it says changes, so the burst is the same as in
    # the test above, where the plugin hardly sleeps at all.)
    os.sched_setaffinity(child.proc.pid, {two_cpus[1]})
    start(child)
    child.chan.send({"type": "welcome", "api": 1, "max_frame": 1 << 20, "spin_us": 1000})
    for i in range(1, 21):
        child.call(i, "echo", i, cpu=two_cpus[1])
    before = _sleeps(child.proc.pid)
    for i in range(100, 600):
        assert child.call(i, "echo", i, cpu=two_cpus[1])["data"] == i
    slept = _sleeps(child.proc.pid) - before
    assert slept >= 400, f"only {slept} sleeps for 500 calls from 'its own CPU'"


def test_polling_stops_when_another_task_shares_the_plugins_cpu(child: Child,
                                                                two_cpus: tuple[int, int]) -> None:
    # A CPU-bound process shares the plugin's CPU: each poll's yield lets it run, so polling would
    # only take turns with it. The calls then come later than the budget, and the poll window drops
    # to 0: the runtime sleeps in recv(). Same burst as above, where it hardly sleeps at all.
    os.sched_setaffinity(child.proc.pid, {two_cpus[1]})
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(hog.pid, {two_cpus[1]})
        start(child)
        child.chan.send({"type": "welcome", "api": 1, "max_frame": 1 << 20, "spin_us": 1000})
        for i in range(1, 21):
            child.call(i, "echo", i)
        before = _sleeps(child.proc.pid)
        for i in range(100, 600):
            assert child.call(i, "echo", i)["data"] == i
        slept = _sleeps(child.proc.pid) - before
    finally:
        hog.kill()
        hog.wait()
    assert slept >= 300, f"only {slept} sleeps for 500 calls next to a CPU hog"


def test_calls_further_apart_than_the_budget_are_not_polled_for(child: Child) -> None:
    # Calls 5 ms apart with a 1 ms budget: the poll window drops to 0 after the first long gap, so
    # the plugin sleeps between calls instead of burning 1 ms of CPU on each.
    start(child)
    child.chan.send({"type": "welcome", "api": 1, "max_frame": 1 << 20, "spin_us": 1000})
    for i in range(1, 21):
        child.call(i, "echo", i)  # a burst first: the window is at its widest
    proc = psutil.Process(child.proc.pid)
    cpu0, sleeps0 = sum(proc.cpu_times()[:2]), _sleeps(child.proc.pid)
    for i in range(100, 180):
        time.sleep(0.005)
        child.call(i, "echo", i)
    cpu, slept = sum(proc.cpu_times()[:2]) - cpu0, _sleeps(child.proc.pid) - sleeps0
    assert slept >= 70
    assert cpu < 0.04, f"{cpu * 1e3:.0f} ms of CPU for 80 calls: polling did not back off"


@pytest.mark.parametrize("spin_us", [-1, 1001, 2.5, "100", True])
def test_a_welcome_asking_for_an_invalid_poll_is_ignored(child: Child, spin_us: object) -> None:
    start(child)
    child.chan.send({"type": "welcome", "api": 1, "max_frame": 1 << 20, "spin_us": spin_us})
    for i in range(1, 21):
        child.call(i, "echo", i)
    before = _sleeps(child.proc.pid)
    for i in range(100, 300):
        child.call(i, "echo", i)
    assert _sleeps(child.proc.pid) - before >= 150  # still sleeping: no polling was switched on


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
