"""A real daemon for integration tests: `plugind serve` as a subprocess on a free loopback port.

`start_daemon(ws)` writes the config (bundles, trust list and keys are already in the Workspace),
starts `python -m plugind serve --config ...` with its own NOTIFY_SOCKET, waits for systemd's
READY=1 datagram (an event, not a sleep), and returns a `RunningDaemon`. Teardown SIGKILLs what is
left and checks that no process it ever saw survives.

As root, `daemon_factory` gives a sandboxed daemon a cgroup place of its own under the tests'
session parent (`cgroup_host.daemon_group`), the same one for every daemon of a Workspace (a
restart finds what its predecessor left): on cgroup v2 it starts alone in its own group, as under a
`Delegate=yes` unit, and keeps the default relative parent; it is removed (checked empty) at teardown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cgroup_host
import httpx
import psutil
import pytest
from cgroup_host import DaemonGroup, SessionParent
from kit import Workspace

from plugind.host.forkserver import SPARE_NAME

TOKEN = "integration-token-0123456789"
READY_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds
    (a bound against a hang: it returns as soon as the predicate holds, however loaded the machine)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """True if `pid` runs and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class RunningDaemon:
    ws: Workspace
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    notify: socket.socket
    cgroup: DaemonGroup | None = None  # where it and its plugins' groups live, if placed
    seen_pids: set[int] = field(default_factory=set)
    ready_notification: list[str] = field(default_factory=list)  # the datagram that said READY=1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0)

    def api(self, method: str, path: str, body: Any = None, *, token: str | None = TOKEN) -> httpx.Response:
        with self.client(token) as c:
            return c.request(method, path, json=body)

    def load(self, name: str) -> httpx.Response:
        return self.api("POST", "/api/plugins/load", {"plugin_name": name})

    def call(self, hook: str, data: Any = None, **kw: Any) -> dict[str, Any]:
        reply = self.api("POST", f"/api/hooks/{hook}/execute", {"data": data, **kw})
        assert reply.status_code == 200, reply.text
        result: dict[str, Any] = reply.json()
        return result

    def plugin(self, name: str) -> dict[str, Any]:
        reply = self.api("GET", f"/api/plugins/{name}")
        assert reply.status_code == 200, reply.text
        info: dict[str, Any] = reply.json()
        if info.get("pid"):
            self.seen_pids.add(info["pid"])
        return info

    def tree(self) -> list[psutil.Process]:
        """Every live (non-zombie) descendant of the daemon: the fork-server and plugin children (not
        the fork-server's spare child, which is no plugin; it is in `seen_pids` all the same)."""
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.seen_pids.update(p.pid for p in procs)
        return [p for p in procs if alive(p.pid) and not _is_spare(p)]

    def zombies(self) -> list[int]:
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        out = []
        for p in procs:
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    out.append(p.pid)
            except psutil.NoSuchProcess:
                pass
        return out

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0, *, group: bool = False) -> int:
        """Signal the daemon (its whole process group when `group`, like Ctrl-C in a terminal or
        `timeout`) and wait for it to exit; returns its exit status."""
        self.tree()
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def notifications(self, timeout: float) -> list[str]:
        """Datagrams the daemon sent to its NOTIFY_SOCKET within `timeout` seconds."""
        self.notify.settimeout(timeout)
        try:
            return self.notify.recv(4096).decode().splitlines()
        except TimeoutError:
            return []


def _is_spare(proc: psutil.Process) -> bool:
    try:
        return proc.name() == SPARE_NAME.decode()
    except psutil.Error:
        return False


def start(
    ws: Workspace,
    *,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    new_session: bool = False,
    preexec_fn: Callable[[], None] | None = None,
    ready_status: int = 200,
    cgroup: DaemonGroup | None = None,
) -> RunningDaemon:
    """Start a daemon for `ws` (see the module's docstring); with `cgroup`, in that place of its own."""
    port = free_port()
    config = ws.write_config(listen=f"127.0.0.1:{port}")
    notify_path = ws.root / "notify.sock"
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    log_path = ws.root / f"daemon-{port}.log"
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PLUGIND_")},
        "PLUGIN_TRUST_KEY": ws.trust_key_hex,
        "PLUGIND_API_TOKEN": TOKEN,
        "NOTIFY_SOCKET": str(notify_path),
        "PYTHONUNBUFFERED": "1",
        **({"PLUGIND_SANDBOXING__CGROUPS__PARENT": cgroup.parent} if cgroup else {}),
        **(env or {}),
    }
    before_exec = preexec_fn
    if cgroup is not None:
        place = cgroup

        def before_exec() -> None:
            place.enter()
            if preexec_fn is not None:
                preexec_fn()

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "plugind", "serve", "--config", str(config)],
            cwd=ws.root,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,  # its own process group, as under a terminal
            preexec_fn=before_exec,  # e.g. a bounding set without a capability, as a unit might leave
        )
    daemon = RunningDaemon(ws, proc, port, log_path, notify, cgroup)
    if wait_ready:
        notify.settimeout(READY_TIMEOUT_S)
        try:
            while True:
                lines = notify.recv(4096).decode().splitlines()
                if "READY=1" in lines:
                    daemon.ready_notification = lines
                    break
        except TimeoutError:
            proc.kill()
            proc.wait()
            raise AssertionError(f"daemon not ready within {READY_TIMEOUT_S} s:\n{daemon.log()}") from None
        assert daemon.api("GET", "/ready").status_code == ready_status
        daemon.tree()
    return daemon


def reap(daemon: RunningDaemon) -> None:
    """Kill the daemon if it still runs, then make sure nothing it started outlives it."""
    if daemon.proc.poll() is None:
        daemon.tree()
        daemon.proc.kill()
        daemon.proc.wait(30)
    daemon.notify.close()
    procs = []
    for pid in daemon.seen_pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    _gone, left = psutil.wait_procs(procs, timeout=10)
    left = [p for p in left if alive(p.pid)]
    for p in left:
        p.kill()
    assert not left, f"processes outlived the daemon: {[p.pid for p in left]}"


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


@pytest.fixture
def daemon_factory(cgroup_session: SessionParent | str) -> Iterator[Callable[..., RunningDaemon]]:
    """start(ws, env=None, wait_ready=True, ...) -> RunningDaemon; every daemon is reaped at teardown,
    then the cgroup places given to sandboxed daemons (as root) are removed and checked gone."""
    started: list[RunningDaemon] = []
    places: dict[Path, DaemonGroup] = {}

    def factory(ws: Workspace, **kw: Any) -> RunningDaemon:
        if ws.sandboxing and not isinstance(cgroup_session, str):
            if ws.root not in places:
                places[ws.root] = cgroup_host.daemon_group(cgroup_session)
            kw.setdefault("cgroup", places[ws.root])
        d = start(ws, **kw)
        started.append(d)
        return d

    yield factory
    for d in started:
        reap(d)
    left = [d for place in places.values() for d in place.remove()]
    assert not left, f"cgroups left behind by the test's daemons: {left}"


class HealthProbe:
    """Polls /health on one keep-alive connection in a thread through a scenario: every probe must
    be answered 200 (a loop blocked for the 5 s client timeout fails it). How fast it answers is a
    figure for bench/health.py, not something a test on a shared machine can hold the daemon to."""

    def __init__(self, url: str, interval: float = 0.02, min_probes: int = 5) -> None:
        self.url = url
        self.interval = interval
        self.min_probes = min_probes
        self.answered = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._probed = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _wait_count(self, count: int) -> None:
        with self._probed:
            self._probed.wait_for(lambda: self.answered >= count or not self._thread.is_alive(), 60)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        self._wait_count(1)  # the probe runs before the scenario starts
        return self

    def __exit__(self, *exc: object) -> None:
        self._wait_count(self.min_probes)  # and keeps going until it has seen enough
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5.0) as c:
            c.get("/health")  # warm the connection up
            while not self._stop.is_set():
                try:
                    reply = c.get("/health")
                    if reply.status_code != 200:
                        self.failures.append(f"status {reply.status_code}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                with self._probed:
                    self.answered += 1
                    self._probed.notify_all()
                self._stop.wait(self.interval)

    def check(self) -> None:
        assert not self.failures, self.failures
        assert self.answered >= self.min_probes, "the health probe barely ran"
