"""Escape probes through the real path: a hostile plugin loaded by the real runtime, spawned by the
real fork-server (Launcher) into a sandbox built from the default configuration."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cgroup_host import group_dirs, unique_parent
from sandbox_harness import make_settings

from plugind.host.launcher import ExitStatus, Launcher, SpawnRequest
from plugind.sandbox import cgroups
from plugind.sandbox.plan import build_plan
from plugind.wire import BlockingChannel

pytestmark = pytest.mark.root

HOSTILE = '''
import errno, os, socket
from pathlib import Path
from plugind.sdk import Plugin
plugin = Plugin()

def attempt(fn):
    try:
        fn()
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "OK"

@plugin.hook("probe")
def probe(data, ctx):
    status = dict(l.split(":\\t", 1) for l in Path("/proc/self/status").read_text().splitlines())
    return {
        "shadow": attempt(lambda: open("/etc/shadow").read()),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "env": sorted(os.environ),
        "inet": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)),
        "own_code": attempt(lambda: open(__file__, "a")),
        "kill_daemon": attempt(lambda: os.kill(data["daemon"], 15)),
        "CapEff": status["CapEff"].strip(),
        "CapBnd": status["CapBnd"].strip(),
        "NoNewPrivs": status["NoNewPrivs"].strip(),
        "Seccomp": status["Seccomp"].strip(),
    }
'''


async def _call(chan: BlockingChannel, hook: str, data: object) -> Any:
    chan.send({"type": "invoke", "id": 1, "hook": hook, "data": data, "deadline_ms": 10000})
    reply = await asyncio.to_thread(chan.recv)
    assert reply is not None and reply.get("type") == "result", reply
    return reply["data"]


@pytest.mark.parametrize("userns", [False, True], ids=["default", "user-namespace"])
def test_hostile_plugin_through_the_real_runtime_is_contained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, userns: bool
) -> None:
    monkeypatch.setenv("PLUGIN_TRUST_KEY", "ab" * 32)
    parent = unique_parent()
    tree = tmp_path / "hostile"
    tree.mkdir()
    (tree / "hostile.py").write_text(textwrap.dedent(HOSTILE))
    plan = build_plan(make_settings(parent, enable_user_namespace=userns), "hostile", tree)

    async def main() -> dict[str, Any]:
        launcher = Launcher()
        await launcher.start()
        try:
            assert launcher.sandbox_available
            ours, theirs = socket.socketpair()
            try:
                req = SpawnRequest("hostile", str(tree), "hostile:plugin", "1.0", plan=plan.to_wire())
                spawned = await launcher.spawn(req, theirs)
            finally:
                theirs.close()
            assert spawned.steps["seccomp"] == "active" and spawned.steps["cgroup"] == "active"
            assert spawned.steps["user_ns"] == ("active" if userns else "off")
            chan = BlockingChannel(ours)
            ours.settimeout(20)
            hello = await asyncio.to_thread(chan.recv)
            assert hello is not None and hello["type"] == "hello"
            result = await _call(chan, "probe", {"daemon": os.getpid()})
            await launcher.kill(spawned.pid)
            status = await launcher.wait_exit(spawned.pid)
            assert status.oom_killed is False
            return dict(result)
        finally:
            await launcher.close()

    try:
        result = asyncio.run(main())
    finally:
        cgroups.remove_tree(parent)
    assert group_dirs(parent) == []
    assert result["shadow"] == "ENOENT"
    assert result["pids"] == [1]
    assert "PLUGIN_TRUST_KEY" not in result["env"]
    assert result["inet"] == "EPERM"
    assert result["own_code"] == ("EACCES" if userns else "EROFS")  # nobody outside: not even the owner
    assert result["kill_daemon"] == "ESRCH"
    assert (result["CapEff"], result["CapBnd"]) == ("0000000000000000", "0000000000000000")
    assert (result["NoNewPrivs"], result["Seccomp"]) == ("1", "2")


STRICT = """
import socket
from plugind.sdk import Plugin
plugin = Plugin()

@plugin.hook("echo")
def echo(data, ctx):
    return {"echo": data}

@plugin.hook("connect")
def connect(data, ctx):
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    return "unreachable"
"""


def test_strict_mode_serves_hooks_and_kills_on_a_socket(tmp_path: Path) -> None:
    parent = unique_parent()
    tree = tmp_path / "strict"
    tree.mkdir()
    (tree / "strictp.py").write_text(textwrap.dedent(STRICT))
    settings = make_settings(parent)
    settings.sandboxing.mode = "strict"
    plan = build_plan(settings, "strictp", tree)

    async def main() -> tuple[Any, Any, Any]:
        launcher = Launcher()
        await launcher.start()
        try:
            ours, theirs = socket.socketpair()
            try:
                req = SpawnRequest("strictp", str(tree), "strictp:plugin", "1.0", plan=plan.to_wire())
                spawned = await launcher.spawn(req, theirs)
            finally:
                theirs.close()
            chan = BlockingChannel(ours)
            ours.settimeout(20)
            hello = await asyncio.to_thread(chan.recv)
            assert hello is not None and hello["type"] == "hello"
            first = await _call(chan, "echo", [1, 2])
            second = await _call(chan, "echo", "again")
            chan.send({"type": "invoke", "id": 2, "hook": "connect", "data": None, "deadline_ms": 5000})
            status = await launcher.wait_exit(spawned.pid)
            return first, second, status
        finally:
            await launcher.close()

    try:
        first, second, status = asyncio.run(main())
    finally:
        cgroups.remove_tree(parent)
    assert first == {"echo": [1, 2]} and second == {"echo": "again"}
    assert status.signal == signal.SIGSYS and status.code is None


HOG = """
from plugind.sdk import Plugin
plugin = Plugin()
hoard = []

@plugin.hook("eat")
def eat(data, ctx):
    while True:
        hoard.append(b"\\x01" * (8 << 20))
"""


def _eat_until_exit(tmp_path: Path, name: str, source: str) -> ExitStatus:
    """Start plugin `name` (`source`) sandboxed with 64 MiB through a real launcher, call its hook
    `eat`, and return how it exited; its cgroup parent is removed."""
    parent = unique_parent()
    tree = tmp_path / "hog"
    tree.mkdir()
    (tree / f"{name}.py").write_text(textwrap.dedent(source))
    plan = build_plan(make_settings(parent, cgroups__memory_limit_mb=64), name, tree)

    async def main() -> Any:
        launcher = Launcher()
        await launcher.start()
        try:
            ours, theirs = socket.socketpair()
            try:
                req = SpawnRequest(name, str(tree), f"{name}:plugin", "1.0", plan=plan.to_wire())
                spawned = await launcher.spawn(req, theirs)
            finally:
                theirs.close()
            chan = BlockingChannel(ours)
            ours.settimeout(20)
            assert (await asyncio.to_thread(chan.recv) or {}).get("type") == "hello"
            chan.send({"type": "invoke", "id": 1, "hook": "eat", "data": None, "deadline_ms": 20000})
            return await asyncio.wait_for(launcher.wait_exit(spawned.pid), 30)
        finally:
            await launcher.close()

    try:
        status: ExitStatus = asyncio.run(main())
    finally:
        cgroups.remove_tree(parent)
    assert group_dirs(parent) == []
    return status


def test_oom_kill_reaches_the_launcher_as_oom(tmp_path: Path) -> None:
    status = _eat_until_exit(tmp_path, "hogp", HOG)
    assert status.signal == signal.SIGKILL
    assert status.oom_killed is True
    assert status.describe() == "killed by SIGKILL (out of memory)"


CHILD_HOG = """
import os
from plugind.sdk import Plugin
plugin = Plugin()

@plugin.hook("eat")
def eat(data, ctx):
    pid = os.fork()
    if pid == 0:
        hoard = []
        while True:
            hoard.append(b"\\x01" * (8 << 20))
    os.waitpid(pid, 0)  # killed by the OOM killer, its parent lives on
    os._exit(3)
"""


def test_an_exit_after_a_childs_oom_kill_is_not_an_oom_kill(tmp_path: Path) -> None:
    # Only a plugin the OOM killer took (SIGKILL, with a kill in its group) is reported so: a child
    # of it OOM-killed earlier made its later exit with status 3 read "out of memory" too.
    status = _eat_until_exit(tmp_path, "childhog", CHILD_HOG)
    assert (status.code, status.signal) == (3, None)
    assert status.oom_killed is False
