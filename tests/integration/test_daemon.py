"""The daemon end to end: HTTP and ctl, policies, refusals, auth, signals, persistence, Unix socket."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
from cgroup_host import session_parent
from conftest import TOKEN, RunningDaemon, _is_spare, alive, free_port
from kit import REPO, Workspace, plugin_source
from scenarios import echo

from plugind.trust import init_trust_list, remove_trusted_plugin

Factory = Callable[..., RunningDaemon]
pytestmark = pytest.mark.slow  # a daemon per test
EXAMPLES = REPO / "examples"


def ctl(daemon: RunningDaemon, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGIND_")}
    if token:
        env["PLUGIND_API_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "plugind", "ctl", "--url", daemon.url, *args],
        capture_output=True, text=True, env=env, timeout=60, cwd=daemon.ws.root,
    )


def test_examples_load_call_unload_over_http_and_ctl(ws: Workspace, daemon_factory: Factory) -> None:
    for name in ("header-tagger", "schema-validator", "rate-limiter"):
        ws.add_dir(EXAMPLES / name)
    daemon = daemon_factory(ws)
    assert daemon.api("GET", "/health").json() == {
        "status": "ok", "plugins_loaded": 3, "plugins_total": 3, "plugins_failed": 0
    }

    listed = ctl(daemon, "list")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[:4] for line in listed.stdout.splitlines()] == [
        [n, "1.0.0", "trusted", "running"] for n in ("header-tagger", "rate-limiter", "schema-validator")
    ]
    request = {"client": "c1", "body": {"user": "ann", "action": "read"}}
    called = ctl(daemon, "call", "on_request", "--data", json.dumps(request))
    assert called.returncode == 0, called.stderr + called.stdout
    reply = json.loads(called.stdout)
    # Priority order: schema-validator (100), rate-limiter (90), header-tagger (10).
    assert [r["plugin"] for r in reply["results"]] == ["schema-validator", "rate-limiter", "header-tagger"]
    assert reply["data"]["headers"] == {
        "x-ratelimit-remaining": "99", "x-plugind-tag": "tagged", "x-plugind-host": "0.1.0"
    }
    detail = daemon.plugin("rate-limiter")
    assert detail["hooks"] == {"on_request": 90} and detail["violations"] == []
    assert detail["metrics"]["heap_bytes"] > 0 and detail["metrics"]["thread_count"] >= 1
    metrics = daemon.api("GET", "/api/plugins/rate-limiter/metrics").json()
    assert set(metrics) == {
        "heap_bytes", "cpu_time_ms", "thread_count", "fd_count", "connection_count", "violation_count"
    }
    assert metrics["fd_count"] >= 1
    assert daemon.api("GET", "/api/plugins/ghost/metrics").status_code == 404
    # The rate limiter's state lives in the host context under its own namespace.
    count = daemon.api("GET", "/api/context/rate-limiter.count.c1").json()["value"]
    assert count[1] == 1

    # A bad payload: chain skips the validator and reports it; until_error stops there.
    bad = {"client": "c1", "body": {"user": "ann"}}
    chain = daemon.call("on_request", bad)
    assert chain["success"] is False
    assert chain["error"]["message"].endswith("missing field 'action'")
    assert [r["outcome"] for r in chain["results"]] == ["error", "ok", "ok"]
    until = ctl(daemon, "call", "on_request", "--data", json.dumps(bad), "--policy", "until_error")
    assert until.returncode == 2
    assert [r["outcome"] for r in json.loads(until.stdout)["results"]] == ["error", "skipped", "skipped"]

    unloaded = ctl(daemon, "unload", "rate-limiter")
    assert (unloaded.returncode, unloaded.stdout.strip()) == (0, "unloaded rate-limiter")
    again = ctl(daemon, "unload", "rate-limiter")
    assert again.returncode == 1
    assert again.stderr.strip() == "plugind: error: 409: plugin 'rate-limiter' is not loaded"
    loaded = ctl(daemon, "load", "rate-limiter")
    assert loaded.returncode == 0 and loaded.stdout.startswith("loaded rate-limiter 1.0.0 (pid ")
    health = json.loads(ctl(daemon, "health").stdout)
    assert health == {"plugins_loaded": 3, "plugins_total": 3, "plugins_failed": 0, "status": "ok"}
    assert daemon.stop() == 0


def test_chain_order_priorities_and_all_is_concurrent(ws: Workspace, daemon_factory: Factory) -> None:
    ws.add(echo("low", priority=-5))
    ws.add(echo("high", priority=50))
    ws.add(echo("mid-a", priority=10))
    ws.add(echo("mid-b", priority=10))
    # Each `meet` handler leaves a mark in the directory it is given, then answers only once all
    # three have: called one after another, the first would wait until its deadline.
    meet = "open(os.path.join(data, str(os.getpid())), 'w').close()\n" \
           "while len(os.listdir(data)) < 3:\n    time.sleep(0.005)\nreturn len(os.listdir(data))"
    for i in range(3):
        ws.add(plugin_source(f"slow{i}", {"meet": (0, meet)}))
    daemon = daemon_factory(ws)
    chain = daemon.call("on_request", {"seen": []})
    # Priority first; equal priorities run in load order (auto-load goes by name).
    assert chain["data"] == {"seen": ["high", "mid-a", "mid-b", "low"]}
    marks = ws.root / "marks"
    marks.mkdir()
    every = daemon.call("meet", str(marks), policy="all")
    assert [(r["outcome"], r["output"]) for r in every["results"]] == [("ok", 3)] * 3, every


def test_refusals_and_auth_change_nothing(ws: Workspace, daemon_factory: Factory) -> None:
    ws.auto_load = False
    ws.add(echo("good"))
    ws.add(echo("unsigned"), sign=False, trust=False)
    ws.add(echo("unlisted"), trust=False)
    tampered = ws.add(echo("tampered"))
    data = bytearray(tampered.read_bytes())
    data[50] ^= 0x01
    tampered.write_bytes(bytes(data))
    daemon = daemon_factory(ws)
    assert daemon.load("good").status_code == 200
    cases = [
        ("ghost", 404, "unknown plugin 'ghost'"),
        ("unsigned", 403, "unsigned 1.0.0 is untrusted"),
        ("unlisted", 403, "unlisted 1.0.0 is signed"),
        ("tampered", 403, "tampered-1.0.0.plugin"),
        ("good", 409, "plugin 'good' is already loaded"),
        ("../x", 422, "plugin_name: String should match pattern"),
        ("/etc/passwd", 422, "plugin_name: String should match pattern"),
    ]
    for name, status, message in cases:
        reply = daemon.load(name)
        assert reply.status_code == status, (name, reply.text)
        assert message in reply.json()["message"], (name, reply.text)
    for token in (None, "wrong-token-wrong-token-wrong"):
        for name in ("unsigned", "good"):
            reply = daemon.api("POST", "/api/plugins/load", {"plugin_name": name}, token=token)
            assert reply.status_code == 401
        reply = daemon.api("POST", "/api/plugins/unload", {"plugin_name": "good"}, token=token)
        assert reply.status_code == 401
    denied = ctl(daemon, "unload", "good", token="wrong-token-wrong-token-wrong")
    assert denied.returncode == 1
    assert denied.stderr.strip() == "plugind: error: 401: missing or wrong bearer token"
    listed = {p["name"]: p["state"] for p in daemon.api("GET", "/api/plugins").json()}
    assert listed == {
        "good": "running", "unsigned": "available", "unlisted": "available", "tampered": "available"
    }
    assert daemon.api("GET", "/health").json()["plugins_loaded"] == 1
    plugins = [p for p in daemon.tree() if p.ppid() != daemon.proc.pid]  # not a fork-server
    assert len(plugins) == 1  # "good"
    extracted = {p.name.rsplit("-", 2)[0] for p in (ws.root / "data" / "extracted").iterdir() if p.is_dir()}
    assert extracted == {"good"}
    refused = [e for e in daemon.api("GET", "/api/audit").json()["entries"] if e["event"] == "refused"]
    assert {e["plugin"] for e in refused} >= {"ghost", "unsigned", "unlisted", "tampered"}


def test_trust_list_changes_take_effect_at_the_next_load(ws: Workspace, daemon_factory: Factory) -> None:
    ws.auto_load = False
    bundle = ws.add(echo("good"))
    daemon = daemon_factory(ws)

    def cycle() -> httpx.Response:
        reply = daemon.load("good")
        if reply.status_code == 200:
            assert daemon.api("POST", "/api/plugins/unload", {"plugin_name": "good"}).status_code == 200
        return reply

    assert cycle().status_code == 200
    # Once the list is a few seconds old the daemon keeps what it read (an unchanged file is not
    # read again); the loads below must still see each change of it.
    while time.time() < ws.trust_list.stat().st_ctime + 2.5:
        time.sleep(0.1)
    assert cycle().status_code == 200
    old = ws.trust_list.with_name("old.list")
    old.write_bytes(ws.trust_list.read_bytes())
    os.utime(old, ns=(ws.trust_list.stat().st_atime_ns, ws.trust_list.stat().st_mtime_ns))

    remove_trusted_plugin(ws.trust_list, ws.trust_key, "good")
    reply = cycle()
    assert reply.status_code == 403 and "good 1.0.0 is signed" in reply.json()["message"], reply.text

    # The old list copied back over it with its times (`cp -p`): a rollback, refused.
    ws.trust_list.write_bytes(old.read_bytes())
    os.utime(ws.trust_list, ns=(old.stat().st_atime_ns, old.stat().st_mtime_ns))
    reply = cycle()
    assert reply.status_code == 403 and "older than generation" in reply.json()["message"], reply.text

    ws.trust_list.unlink()
    init_trust_list(ws.trust_list, ws.trust_key, generation=100)
    ws.sign_and_trust(bundle, sign=False)
    assert cycle().status_code == 200


def test_sigterm_fires_on_shutdown_stops_children_exits_0(ws: Workspace, daemon_factory: Factory) -> None:
    marker = ws.root / "shutdown-seen"
    ws.add(plugin_source("closer", {
        "on_shutdown": (0, f"open({str(marker)!r}, 'w').write('bye')\nreturn data"),
        "on_startup": (0, f"open({str(marker)!r} + '.start', 'w').write('hi')\nreturn data"),
    }))
    ws.add(echo("other"))
    daemon = daemon_factory(ws)
    assert Path(str(marker) + ".start").read_text() == "hi"
    children = daemon.tree()
    assert len([p for p in children if p.ppid() != daemon.proc.pid]) == 2  # beside the fork-servers
    assert daemon.stop(signal.SIGTERM) == 0
    assert marker.read_text() == "bye"
    _gone, left = psutil.wait_procs(children, timeout=10)
    assert not [p for p in left if alive(p.pid)]
    assert "STOPPING=1" in daemon.notifications(1.0)
    # A graceful stop keeps the loaded set for the next start.
    assert json.loads((ws.root / "data" / "loaded.json").read_text())["loaded"] == ["closer", "other"]


def test_sigkill_kills_every_child_and_restart_restores_the_set(
    ws: Workspace, daemon_factory: Factory
) -> None:
    ws.add(echo("keep-a"))
    ws.add(echo("keep-b"))
    ws.add(echo("dropped"))
    daemon = daemon_factory(ws)
    assert daemon.api("POST", "/api/plugins/unload", {"plugin_name": "dropped"}).status_code == 200
    children = daemon.tree()
    assert len([p for p in children if p.ppid() != daemon.proc.pid]) == 2  # keep-a, keep-b
    daemon.proc.kill()
    daemon.proc.wait(10)
    _gone, left = psutil.wait_procs(children, timeout=10)
    assert not [p for p in left if alive(p.pid)], "a child survived the daemon's SIGKILL"

    # auto_load is on, but the persisted set wins: "dropped" stays unloaded.
    again = daemon_factory(ws)
    states = {p["name"]: p["state"] for p in again.api("GET", "/api/plugins").json()}
    assert states == {"keep-a": "running", "keep-b": "running", "dropped": "available"}
    assert again.call("on_request", {"seen": []})["data"] == {"seen": ["keep-a", "keep-b"]}


@pytest.mark.root
def test_sandboxed_daemon_sigkill_leaves_nothing_once_it_starts_again(
    ws: Workspace, daemon_factory: Factory
) -> None:
    session_parent()  # skips, saying why, on a host without cgroup controllers
    # The factory gives the daemon a cgroup place of its own (cgroup_host.daemon_group), kept for the
    # restart: on cgroup v2 its group, which it finds holding its `daemon` leaf and stale plugin groups.
    ws.sandboxing = True
    ws.add(echo("keep"))
    ws.add(echo("gone"))
    daemon = daemon_factory(ws)
    assert daemon.cgroup is not None
    children = daemon.tree()
    groups = {name: daemon.cgroup.plugin_dirs(name) for name in ("keep", "gone")}
    assert groups["keep"] and groups["gone"], f"the plugins have no cgroups under {daemon.cgroup.plugins}"
    old_inodes = {g: g.stat().st_ino for g in groups["keep"]}

    daemon.proc.kill()
    daemon.proc.wait(10)
    _gone, left = psutil.wait_procs(children, timeout=10)
    assert not [p for p in left if alive(p.pid)], "a sandboxed plugin survived the daemon's SIGKILL"
    # Nothing of the plugins' jails is visible on the host: their mounts died with their namespaces.
    with open("/proc/self/mountinfo") as fh:
        assert str(ws.root) not in fh.read()
    # The kill leaves the groups behind, stale: nobody is alive to remove them. Mostly: the daemon's
    # socket closes before its death reaches the fork-server (PDEATHSIG), and on a loaded machine the
    # fork-server may run in between and remove some (its best-effort shutdown). Stale groups are
    # what the restart must deal with, so the test makes sure there are some, whoever won that race.
    for g in groups["keep"] + groups["gone"]:
        g.mkdir(exist_ok=True)
    stale_inodes = {g: g.stat().st_ino for g in groups["keep"]}
    # "gone" cannot come back: its bundle is withdrawn before the restart.
    for bundle in ws.plugins.glob("gone-*"):
        bundle.unlink()

    again = daemon_factory(ws)
    assert again.cgroup is daemon.cgroup
    assert again.plugin("keep")["state"] == "running"
    assert not [g for g in groups["gone"] if g.exists()], "a stale plugin cgroup survived the restart"
    # "keep" is back in a fresh group: the stale one was removed, not reused with its old counters.
    for group in groups["keep"]:
        assert group.is_dir() and group.stat().st_ino not in (old_inodes[group], stale_inodes[group])
        assert (group / "cgroup.procs").read_text().split() == [str(again.plugin("keep")["pid"])]
    assert again.stop() == 0


def test_unix_socket_and_ctl_over_it(ws: Workspace, daemon_factory: Factory) -> None:
    sock = ws.root / "run" / "api.sock"
    ws.add(echo("solo"))
    # The socket comes from the environment override, as an operator's unit file would set it.
    daemon = daemon_factory(ws, env={"PLUGIND_API__UNIX_SOCKET": str(sock)})
    assert (sock.stat().st_mode & 0o777) == 0o660
    transport = httpx.HTTPTransport(uds=str(sock))
    with httpx.Client(transport=transport, base_url="http://plugind") as c:
        assert c.get("/health").json()["plugins_loaded"] == 1
        assert c.get("/api/plugins").status_code == 401
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGIND_")}
    env["PLUGIND_API_TOKEN"] = TOKEN
    out = subprocess.run(
        [sys.executable, "-m", "plugind", "ctl", "--unix", str(sock), "--url", "http://x", "list"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:4] == ["solo", "1.0.0", "trusted", "running"]
    assert daemon.stop() == 0
    assert not sock.exists()


def test_refuses_non_loopback_without_token(ws: Workspace) -> None:
    port = free_port()
    config = ws.write_config(listen=f"0.0.0.0:{port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGIND_")}
    env["PLUGIN_TRUST_KEY"] = ws.trust_key_hex
    out = subprocess.run(
        [sys.executable, "-m", "plugind", "serve", "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=60, cwd=ws.root,
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"plugind: error: api.listen = 0.0.0.0:{port} is not a loopback address and no API token is "
        "set: set PLUGIND_API_TOKEN or api.token_file, or listen on 127.0.0.1"
    ]


def test_refuses_loopback_without_token(ws: Workspace) -> None:
    config = ws.write_config(listen=f"127.0.0.1:{free_port()}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGIND_")}
    env["PLUGIN_TRUST_KEY"] = ws.trust_key_hex
    out = subprocess.run(
        [sys.executable, "-m", "plugind", "serve", "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=60, cwd=ws.root,
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("plugind: error: no API token is set ("), lines
    assert "set PLUGIND_API_TOKEN or write a token" in lines[0]


def test_ctl_errors_are_one_line(ws: Workspace) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGIND_")}
    out = subprocess.run(
        [sys.executable, "-m", "plugind", "ctl", "--url", f"http://127.0.0.1:{port}",
         "--token-file", str(ws.root / "none"), "health"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert out.returncode == 1
    assert out.stderr.strip() == f"plugind: error: token file {ws.root / 'none'} not found"
    out = subprocess.run(
        [sys.executable, "-m", "plugind", "ctl", "--url", f"http://127.0.0.1:{port}", "health"],
        capture_output=True, text=True, env=env, timeout=60, cwd=ws.root,
    )
    assert out.returncode == 1
    assert out.stderr.startswith(f"plugind: error: cannot reach plugind at http://127.0.0.1:{port}")
    assert len(out.stderr.strip().splitlines()) == 1
    out = subprocess.run(
        [sys.executable, "-m", "plugind", "ctl", "--url", f"http://127.0.0.1:{port}", "call", "h",
         "--data", "{bad"],
        capture_output=True, text=True, env=env, timeout=60, cwd=ws.root,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("plugind: error: --data is not valid JSON: Expecting property name")


@pytest.mark.root
def test_sandboxed_plugin_reports_isolation(ws: Workspace, daemon_factory: Factory) -> None:
    session_parent()  # skips, saying why, on a host without cgroup controllers
    # The daemon gets a cgroup place of its own from the factory, so it neither clears nor uses the
    # groups of other daemons (other tests, a `make run`).
    ws.sandboxing = True
    ws.add(echo("boxed"))
    daemon = daemon_factory(ws, new_session=True)
    info = daemon.plugin("boxed")
    assert info["state"] == "running", daemon.log()
    steps = info["isolation"]
    for step in ("pid_ns", "mount_ns", "net_ns", "filesystem", "no_new_privs", "capabilities", "seccomp"):
        assert steps.get(step) == "active", steps
    # "degraded: without ..." names a limit the host lacks (no swap accounting); the group holds.
    assert steps["cgroup"] == "active" or steps["cgroup"].startswith("degraded: without "), steps
    # The sandboxed child is not a plain child of the fork-server's view of the world: its own pid
    # namespace makes it PID 1 there.
    with open(f"/proc/{info['pid']}/status") as fh:
        status = dict(line.split(":\t", 1) for line in fh.read().splitlines() if ":\t" in line)
    assert status["NSpid"].split()[-1] == "1"
    assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
    assert daemon.call("on_request", {"seen": []})["data"] == {"seen": ["boxed"]}
    assert daemon.cgroup is not None
    groups = daemon.cgroup.plugin_dirs("boxed")
    assert groups, f"the plugin has no cgroup under {daemon.cgroup.plugins}"
    assert all(str(info["pid"]) in (g / "cgroup.procs").read_text().split() for g in groups)
    # A signal to the whole process group (`timeout make run`, Ctrl-C, a service manager's
    # KillMode=control-group): the fork-server must not die of it before the daemon has unloaded its
    # plugins, and their cgroups must be gone afterwards.
    assert daemon.stop(signal.SIGTERM, group=True) == 0
    assert "unloaded boxed (shutdown)" in daemon.log()
    assert not [g for g in groups if g.exists()], "plugin cgroups left after a clean shutdown"


@pytest.mark.root
def test_sigterm_to_every_process_of_the_unit_stops_cleanly(ws: Workspace, daemon_factory: Factory) -> None:
    # KillMode=control-group (systemd-run's default): systemd sends SIGTERM to every process of the
    # unit's cgroup at once, the fork-server, the plugins and the spares included, whatever their
    # session. The stop must still be the daemon's orderly stop: nothing reported as a crash, no
    # restart, no lost fork-server, the plugins' groups removed, status 0, the intent kept.
    session_parent()
    ws.sandboxing = True
    ws.add(echo("boxed"))
    daemon = daemon_factory(ws, new_session=True)
    assert daemon.plugin("boxed")["state"] == "running", daemon.log()
    assert daemon.call("on_request", {"seen": []})["data"] == {"seen": ["boxed"]}
    assert daemon.cgroup is not None
    groups = daemon.cgroup.plugin_dirs("boxed")
    assert groups
    spares = _spares(daemon, not_pid=daemon.plugin("boxed")["pid"])  # they get the signal too
    procs = [psutil.Process(daemon.proc.pid), *daemon.tree(), *spares]
    assert len(procs) >= 3, procs  # the daemon, its fork-server(s), the plugin
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(30) == 0, daemon.log()
    log = daemon.log()
    assert "unloaded boxed (shutdown)" in log
    for said in ("crashed", "restarting", "fork-server lost", "Traceback"):
        assert said not in log, log
    assert not [g for g in groups if g.exists()], "plugin cgroups left after the stop"
    state = json.loads((ws.root / "data" / "loaded.json").read_text())
    assert state["loaded"] == ["boxed"]


def _nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[16])


@pytest.mark.root
def test_a_unit_without_cap_sys_nice_still_gets_its_plugins_served_by_spares(
    ws: Workspace, daemon_factory: Factory
) -> None:
    # The shipped unit's CapabilityBoundingSet= has no CAP_SYS_NICE (and RLIMIT_NICE is 0): a spare
    # lowered to nice 19 could not be given its priority back (setpriority: EACCES), so every
    # hand-off failed and every load forked anew. It now prepares at the daemon's own priority.
    import prctl

    session_parent()
    ws.sandboxing = True
    ws.auto_load = False
    ws.add(echo("alpha"))
    ws.add(echo("beta"))

    def unit_without_sys_nice() -> None:
        prctl.capbset_drop(prctl.CAP_SYS_NICE)
        resource.setrlimit(resource.RLIMIT_NICE, (0, 0))

    daemon = daemon_factory(ws, preexec_fn=unit_without_sys_nice, new_session=True)
    status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
    assert not int(status.split("CapEff:\t")[1].split()[0], 16) & (1 << prctl.CAP_SYS_NICE)
    assert daemon.api("POST", "/api/plugins/load", {"plugin_name": "alpha"}).status_code == 200
    first = daemon.plugin("alpha")["pid"]
    spares = _spares(daemon, not_pid=first)
    assert len(spares) == 1, daemon.log()
    spare = spares[0].pid
    assert _nice(spare) == 0
    assert daemon.api("POST", "/api/plugins/load", {"plugin_name": "beta"}).status_code == 200
    beta = daemon.plugin("beta")
    assert beta["pid"] == spare, daemon.log()  # the spare served it
    assert _nice(spare) == _nice(first) == 0  # at the priority any plugin gets
    steps = beta["isolation"]
    assert [steps[k] for k in ("pid_ns", "filesystem", "seccomp")] == ["active"] * 3
    assert daemon.call("on_request", {"seen": []})["data"] == {"seen": ["alpha", "beta"]}
    assert "spare not used" not in daemon.log()
    assert daemon.stop() == 0


def _spares(daemon: RunningDaemon, not_pid: int) -> list[psutil.Process]:
    """The fork-servers' spare children once there is one (forked 5 ms after a spawn; 30 s is a
    bound against a hang, not a pace); `daemon.tree()` leaves them out."""
    deadline = time.monotonic() + 30
    while True:
        daemon.tree()  # (which records them)
        found = [p for p in psutil.Process(daemon.proc.pid).children(recursive=True)
                 if p.pid != not_pid and _is_spare(p)]
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.01)


def test_systemd_watchdog_pings(ws: Workspace, daemon_factory: Factory) -> None:
    daemon = daemon_factory(ws, env={"WATCHDOG_USEC": "200000"})
    pings = 0
    deadline = time.monotonic() + 60  # a bound against a hang: three pings take ~0.3 s on a quiet host
    while pings < 3 and time.monotonic() < deadline:
        pings += daemon.notifications(1.0).count("WATCHDOG=1")
    assert pings >= 3
    assert daemon.stop() == 0


def test_forkserver_death_stops_the_daemon_with_status_1(ws: Workspace, daemon_factory: Factory) -> None:
    ws.add(echo("orphan-check"))
    daemon = daemon_factory(ws)
    children = daemon.tree()
    forkserver = next(p for p in children if "plugind.host.forkserver" in " ".join(p.cmdline()))
    forkserver.kill()
    assert daemon.proc.wait(30) == 1
    _gone, left = psutil.wait_procs(children, timeout=10)
    assert not [p for p in left if alive(p.pid)]
    assert "the fork-server died; shutting down with status 1" in daemon.log()


def test_unix_socket_of_a_live_daemon_is_not_stolen(ws: Workspace, daemon_factory: Factory) -> None:
    sock = ws.root / "api.sock"
    first = daemon_factory(ws, env={"PLUGIND_API__UNIX_SOCKET": str(sock)})
    config = ws.write_config(listen=f"127.0.0.1:{free_port()}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGIND_")}
    env.update(PLUGIN_TRUST_KEY=ws.trust_key_hex, PLUGIND_API_TOKEN=TOKEN, PLUGIND_API__UNIX_SOCKET=str(sock),
               PLUGIND_PLUGINS__STATE_FILE=str(ws.root / "other" / "loaded.json"))  # else the lock stops it
    out = subprocess.run(
        [sys.executable, "-m", "plugind", "serve", "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=60, cwd=ws.root,
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"plugind: error: api.unix_socket {sock}: another process is listening on it"
    )
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://plugind") as c:
        assert c.get("/health").status_code == 200
    assert first.stop() == 0


def test_unix_socket_path_taken_by_a_file_is_refused_and_kept(ws: Workspace) -> None:
    taken = ws.root / "taken"
    taken.write_text("precious")
    config = ws.write_config(listen=f"127.0.0.1:{free_port()}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGIND_")}
    env.update(
        PLUGIN_TRUST_KEY=ws.trust_key_hex, PLUGIND_API_TOKEN=TOKEN, PLUGIND_API__UNIX_SOCKET=str(taken)
    )
    out = subprocess.run(
        [sys.executable, "-m", "plugind", "serve", "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=60, cwd=ws.root,
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"plugind: error: api.unix_socket {taken} exists and is not a socket"
    )
    assert taken.read_text() == "precious"


def _second_serve(ws: Workspace, env: dict[str, str] | None = None,
                  preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    # `plugind serve` on `ws`'s configuration, on a port of its own, run to its end.
    config = ws.write_config(listen=f"127.0.0.1:{free_port()}")
    full = {k: v for k, v in os.environ.items() if not k.startswith("PLUGIND_")}
    full.update(PLUGIN_TRUST_KEY=ws.trust_key_hex, PLUGIND_API_TOKEN=TOKEN, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "plugind", "serve", "--config", str(config)],
        capture_output=True, text=True, env=full, timeout=60, cwd=ws.root, preexec_fn=preexec_fn,
    )


def test_a_second_daemon_on_the_same_state_file_is_refused(ws: Workspace, daemon_factory: Factory) -> None:
    # Two daemons on one state file would each restore the same plugins and overwrite the other's
    # record of them: the second stops at once, naming the first, and touches nothing of it.
    ws.add(echo("keep"))
    first = daemon_factory(ws)
    pid = first.plugin("keep")["pid"]
    state = Path(ws.root / "data" / "loaded.json")
    before = state.read_bytes()

    out = _second_serve(ws)
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"plugind: error: another plugind is running on state file {state} (pid {first.proc.pid}): "
        f"it holds {state}.lock. Stop it first, or give this daemon its own plugins.state_file "
        "(and sandboxing.cgroups.parent)"
    )
    assert state.read_bytes() == before
    assert first.plugin("keep")["pid"] == pid
    assert first.call("on_request", {"n": 1})["success"]
    assert first.stop() == 0
    # Held for the daemon's life only: once it is gone, the next one starts and restores the set.
    again = daemon_factory(ws)
    assert again.plugin("keep")["state"] == "running"
    assert again.stop() == 0


def test_a_second_daemon_on_the_same_cgroup_parent_leaves_the_first_ones_plugins_alone(
    ws: Workspace, daemon_factory: Factory
) -> None:
    # With a state file of its own but the same cgroup parent, the second daemon would take the
    # first one's plugin groups for stale ones at start-up and kill their processes. It stops first.
    session_parent()  # skips, saying why, on a host without cgroup controllers
    ws.sandboxing = True
    ws.add(echo("keep"))
    first = daemon_factory(ws)
    assert first.cgroup is not None
    pid = first.plugin("keep")["pid"]
    groups = {g: g.stat().st_ino for g in first.cgroup.plugin_dirs("keep")}
    assert groups, f"the plugin has no cgroup under {first.cgroup.plugins}"

    out = _second_serve(ws, env={
        "PLUGIND_PLUGINS__STATE_FILE": str(ws.root / "other" / "loaded.json"),
        "PLUGIND_SANDBOXING__CGROUPS__PARENT": first.cgroup.parent,
    }, preexec_fn=first.cgroup.enter)
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("plugind: error: cgroup parent "), last
    assert f"is in use by another process (pid {first.proc.pid}), most likely another plugind" in last
    assert first.plugin("keep")["pid"] == pid
    assert alive(pid)
    assert {g: g.stat().st_ino for g in first.cgroup.plugin_dirs("keep")} == groups
    assert first.call("on_request", {"n": 1})["success"]
    assert first.stop() == 0


def test_start_removes_what_an_interrupted_write_left_and_nothing_else(
    ws: Workspace, daemon_factory: Factory
) -> None:
    # A daemon killed while it extracted a bundle, swapped a tree or rewrote its state leaves
    # temporary directories (up to max_unpacked_bytes each) and files behind: the next start, which
    # holds the instance lock, removes them before any load. Nothing else is touched.
    ws.add(echo("keep"))
    extracted = ws.root / "data" / "extracted"
    extracted.mkdir(parents=True)
    half = extracted / ".extract-keep-k2j4h1"
    (half / "pkg").mkdir(parents=True)
    (half / "pkg" / "mod.py").write_text("x = 1\n")
    (half / "pkg" / "mod.py").chmod(0o444)
    (half / "pkg").chmod(0o555)
    half.chmod(0o555)
    swapped = extracted / ".old-keep-9zz1q0"
    (swapped / "tree").mkdir(parents=True)
    state_tmp = ws.root / "data" / ".plugind-tmp-loaded.json.x81kd2"
    journal_tmp = ws.root / "data" / ".plugind-tmp-loaded.json.journal.q0w9e8"
    marker_tmp = extracted / ".plugind-tmp-keep-1.0.0-0123456789abcdef.digest.zz81"
    for f in (state_tmp, journal_tmp, marker_tmp):
        f.write_text("{")
    outside = ws.root / "outside"
    outside.mkdir()
    (outside / "precious").write_text("kept")
    kept = [extracted / ".extract-a-file", extracted / ".extract-a-link", extracted / "notes.txt",
            ws.root / "data" / ".plugind-tmp-other.json.abc"]
    kept[0].write_text("a file, not a directory of ours")
    kept[1].symlink_to(outside)
    kept[2].write_text("someone's")
    kept[3].write_text("another file's temp")

    daemon = daemon_factory(ws)
    assert daemon.plugin("keep")["state"] == "running"
    for gone in (half, swapped, state_tmp, journal_tmp, marker_tmp):
        assert not os.path.lexists(gone), f"{gone} survived the start"
    assert all(os.path.lexists(p) for p in kept)
    assert (outside / "precious").read_text() == "kept"
    assert "removed 5 leftovers of an interrupted write" in daemon.log()
    assert daemon.stop() == 0
