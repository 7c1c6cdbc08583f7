"""A daemon with several fork-servers (`[supervisor] fork_servers`): loads are spread over them, and
the death of any one of them stops the daemon with status 1, taking every plugin with it."""

from __future__ import annotations

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
    servers = [p for p in daemon.tree() if "plugind.host.forkserver" in " ".join(p.cmdline())]
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
