"""A daemon with several fork-servers (`[supervisor] fork_servers`): loads are spread over them, and
the death of any one of them stops the daemon with status 1, taking every plugin with it."""

from __future__ import annotations

import resource
import threading
from collections.abc import Callable

import psutil
from conftest import RunningDaemon, alive
from kit import Workspace
from scenarios import echo

Factory = Callable[..., RunningDaemon]
NAMES = [f"fs{i}" for i in range(6)]


def test_loads_use_every_fork_server_and_losing_one_stops_the_daemon(
    ws: Workspace, daemon_factory: Factory
) -> None:
    ws.auto_load = False
    ws.extra_config += "[supervisor]\nfork_servers = 2\n"
    for name in NAMES:
        ws.add(echo(name))
    daemon = daemon_factory(ws)
    servers = [p for p in daemon.tree() if p.ppid() == daemon.proc.pid]
    assert len(servers) == 2
    replies: dict[str, int] = {}

    def load(name: str) -> None:
        replies[name] = daemon.load(name).status_code

    threads = [threading.Thread(target=load, args=(n,)) for n in NAMES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert replies == dict.fromkeys(NAMES, 200)
    pids = {daemon.plugin(n)["pid"] for n in NAMES}
    parents = {psutil.Process(pid).ppid() for pid in pids}
    assert parents <= {s.pid for s in servers} and len(parents) == 2, (parents, servers)
    result = daemon.call("on_request", {"seen": []})  # every plugin answers, whichever forked it
    assert result["success"] and sorted(result["data"]["seen"]) == NAMES
    children = daemon.tree()
    servers[1].kill()
    assert daemon.proc.wait(30) == 1
    _gone, left = psutil.wait_procs(children, timeout=10)
    assert not [p for p in left if alive(p.pid)]
    assert "the fork-server died; shutting down with status 1" in daemon.log()


def _nofile(pid: int) -> tuple[int, int]:
    soft, hard = psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE)
    return soft, hard


def test_the_daemon_raises_its_own_open_files_limit_and_only_its_own(
    ws: Workspace, daemon_factory: Factory
) -> None:
    # It holds an fd per plugin: a soft limit of 1,024 would end a daemon of 1,000 plugins.
    ws.add(echo("limits"))

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 4096))

    daemon = daemon_factory(ws, preexec_fn=low_soft_limit)
    assert _nofile(daemon.proc.pid) == (4096, 4096)
    servers = [p for p in daemon.tree() if p.ppid() == daemon.proc.pid]
    assert servers and all(_nofile(s.pid) == (512, 4096) for s in servers)
    plugin = daemon.plugin("limits")["pid"]
    assert _nofile(plugin) == (512, 4096)  # what the plugins get is unchanged
    assert daemon.stop() == 0
