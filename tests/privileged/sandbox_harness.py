"""Helpers for the sandbox tests: hostile probes run inside a real sandbox made by `spawn_contained`,
reporting their outcome over a pipe kept in `keep_fds` (cgroup parents: tests/cgroup_host.py)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugind.config import Settings
from plugind.sandbox.contain import Spawned, cleanup, oom_killed, spawn_contained
from plugind.sandbox.plan import SandboxPlan, build_plan


def make_settings(parent: str, **sandboxing: Any) -> Settings:
    """Default settings, with the cgroup parent set and `sandboxing` keys (dotted) overridden."""
    s = Settings()
    s.sandboxing.cgroups.parent = parent
    for key, value in sandboxing.items():
        obj: Any = s.sandboxing
        *path, last = key.split("__")
        for part in path:
            obj = getattr(obj, part)
        setattr(obj, last, value)
    return s


def make_tree(root: Path, name: str = "probe") -> Path:
    tree = root / f"{name}-tree"
    tree.mkdir(parents=True, exist_ok=True)
    (tree / "plugin.py").write_text("VALUE = 1\n")
    (tree / "secret.txt").write_text(f"secret of {name}\n")
    return tree


@dataclass
class Outcome:
    result: dict[str, Any]
    status: int  # os.waitstatus_to_exitcode: <0 means killed by that signal
    spawned: Spawned
    oom_killed: bool


def _child(probe: Callable[[], dict[str, Any]], w: int, after_import: bool) -> Callable[[Any], Any]:
    def run(hooks: Any) -> Any:
        hooks.before_plugin_import()
        if after_import:
            hooks.after_plugin_import()
        try:
            result = probe()
        except BaseException as exc:  # report, never hide, a probe crash
            result = {"probe_error": f"{type(exc).__name__}: {exc}"}
        os.write(w, json.dumps(result).encode())
        os._exit(0)

    return run


class Sandbox:
    """A started probe: read its result with `wait()`; always cleaned up by `run_probe`/`started`."""

    def __init__(
        self, plan: SandboxPlan, probe: Callable[[], dict[str, Any]], after_import: bool = False
    ) -> None:
        self.plan = plan
        r, w = os.pipe()
        try:
            self.spawned = spawn_contained(plan, _child(probe, w, after_import), [w])
        finally:
            os.close(w)
        self.r = r
        self.pid = self.spawned.pid
        self.status: int | None = None

    def wait(self, timeout: float = 30.0) -> Outcome:
        chunks = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"probe in {self.plan.name} did not finish in {timeout}s")
            ready, _, _ = select.select([self.r], [], [], left)
            if ready:
                data = os.read(self.r, 65536)
                if not data:
                    break
                chunks.append(data)
        os.close(self.r)
        _, status = os.waitpid(self.pid, 0)
        self.status = os.waitstatus_to_exitcode(status)
        raw = b"".join(chunks)
        result = json.loads(raw) if raw else {}
        return Outcome(result, self.status, self.spawned, oom_killed(self.plan))

    def kill(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.status = -9


@contextmanager
def started(
    plan: SandboxPlan, probe: Callable[[], dict[str, Any]], after_import: bool = False
) -> Iterator[Sandbox]:
    box = Sandbox(plan, probe, after_import)
    try:
        yield box
    finally:
        box.kill()
        cleanup(plan)


def run_probe(
    plan: SandboxPlan, probe: Callable[[], dict[str, Any]], timeout: float = 30.0, after_import: bool = False
) -> Outcome:
    with started(plan, probe, after_import) as box:
        return box.wait(timeout)


def plan_for(tmp_path: Path, parent: str, name: str = "probe", **sandboxing: Any) -> SandboxPlan:
    return build_plan(make_settings(parent, **sandboxing), name, make_tree(tmp_path, name))


def libc_call(name: str, *args: Any) -> int:
    """Call a libc function from inside the sandbox; returns 0 or -errno."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    res = getattr(libc, name)(*args)
    return -ctypes.get_errno() if res == -1 else res


def in_child(fn: Callable[[], Any]) -> dict[str, Any]:
    """Run `fn` in a forked child inside the sandbox: how did it end (for calls that kill)?"""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return {"exit": os.waitstatus_to_exitcode(status)}


class LiveServer:
    """A live TCP listener answering 'hi'; counts who reached it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_server((host, 0))
        self.port: int = self.sock.getsockname()[1]
        self.hits = 0
        self._t = threading.Thread(target=self._serve, daemon=True)
        self._t.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            with conn:
                conn.sendall(b"hi")

    def greet(self) -> bytes:
        """Connect from the host: proves the server really listens."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as c:
            return c.recv(2)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self._t.join(5)
