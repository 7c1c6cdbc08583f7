"""Per-plugin monitor control from outside the library, against the real daemon: `[plugin.NAME]
auto_unmount / log_violations`, `PUT /api/plugins/{name}/unmount-behavior`, `POST
/api/plugins/{name}/check` and their `plugind ctl` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from conftest import TOKEN, RunningDaemon, wait_for
from kit import Workspace, plugin_source
from scenarios import echo

Factory = Callable[..., RunningDaemon]
pytestmark = pytest.mark.slow  # a daemon per test

CONFIG = """
[monitoring]
check_interval_secs = 0.3
violation_threshold = 2
auto_unmount = true
[monitoring.limits]
max_fds = 48
[plugin.fdhog]
auto_unmount = false
log_violations = false
"""
OPEN_FDS = """
global _fds
_fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(100)]
return data
"""


def ctl(daemon: RunningDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGIND_")}
    env["PLUGIND_API_TOKEN"] = TOKEN
    return subprocess.run(
        [sys.executable, "-m", "plugind", "ctl", "--url", daemon.url, *args],
        capture_output=True, text=True, env=env, timeout=60, cwd=daemon.ws.root,
    )


@pytest.fixture
def daemon(ws: Workspace, daemon_factory: Factory) -> RunningDaemon:
    ws.auto_load = False
    ws.extra_config = CONFIG
    ws.add(plugin_source("fdhog", {"open_fds": (0, OPEN_FDS)}, header="_fds = []"))
    ws.add(echo("calm"))
    ws.add(echo("idle"))
    running = daemon_factory(ws)
    for name in ("fdhog", "calm"):
        assert running.load(name).status_code == 200
    return running


def behavior(daemon: RunningDaemon, name: str) -> dict[str, object]:
    reply = daemon.api("GET", f"/api/plugins/{name}/unmount-behavior")
    assert reply.status_code == 200, reply.text
    body: dict[str, object] = reply.json()
    return body


def test_config_check_and_unmount_behavior(daemon: RunningDaemon) -> None:
    # [plugin.fdhog] wins over [monitoring]; calm has the global behaviour.
    assert behavior(daemon, "fdhog") == {"plugin": "fdhog", "auto_unmount": False, "log_violations": False}
    assert behavior(daemon, "calm") == {"plugin": "calm", "auto_unmount": True, "log_violations": True}

    # Within limits: a check finds nothing, and says so with the metrics of the sample.
    calm = daemon.api("POST", "/api/plugins/calm/check")
    assert calm.status_code == 200, calm.text
    assert calm.json()["violations"] == []
    assert calm.json()["metrics"]["fd_count"] > 0

    # Over the fd limit: the check reports it; the sweeps count it but, auto_unmount being off for
    # this plugin, never unload it.
    assert daemon.call("open_fds", {})["results"][0]["outcome"] == "ok"
    found = daemon.api("POST", "/api/plugins/fdhog/check").json()
    assert [v["type"] for v in found["violations"]] == ["fds"]
    assert found["violations"][0]["limit"] == 48 and found["violations"][0]["count"] > 48
    assert found["metrics"]["fd_count"] > 48
    wait_for(lambda: daemon.plugin("fdhog")["metrics"]["violation_count"] >= 4, 20, "four violating sweeps")
    assert daemon.plugin("fdhog")["state"] == "running"
    assert "resource limit exceeded" not in daemon.log()  # log_violations = false

    # Switched on over the API, the next streak unloads it.
    reply = daemon.api(
        "PUT", "/api/plugins/fdhog/unmount-behavior", {"auto_unmount": True, "log_violations": True}
    )
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"plugin": "fdhog", "auto_unmount": True, "log_violations": True}
    wait_for(lambda: daemon.plugin("fdhog")["state"] == "available", 20, "fdhog auto-unloaded")
    assert "resource limit exceeded" in daemon.log()

    # A known plugin that is not loaded cannot be checked (409), but its behaviour can be set.
    assert daemon.api("POST", "/api/plugins/idle/check").status_code == 409
    set_idle = daemon.api(
        "PUT", "/api/plugins/idle/unmount-behavior", {"auto_unmount": False, "log_violations": True}
    )
    assert set_idle.status_code == 200
    assert behavior(daemon, "idle")["auto_unmount"] is False


ON = {"auto_unmount": False, "log_violations": True}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("PUT", "/api/plugins/calm/unmount-behavior", {"auto_unmount": "yes", "log_violations": True}, 422),
        ("PUT", "/api/plugins/calm/unmount-behavior", {"auto_unmount": 1, "log_violations": True}, 422),
        ("PUT", "/api/plugins/calm/unmount-behavior", {"auto_unmount": False}, 422),
        ("PUT", "/api/plugins/calm/unmount-behavior",
         {"auto_unmount": False, "log_violations": True, "extra": 1}, 422),
        ("PUT", "/api/plugins/calm/unmount-behavior", [], 422),
        ("PUT", "/api/plugins/Bad..name/unmount-behavior", ON, 422),
        ("PUT", "/api/plugins/ghost/unmount-behavior", ON, 404),
        ("GET", "/api/plugins/ghost/unmount-behavior", None, 404),
        ("POST", "/api/plugins/ghost/check", None, 404),
        ("POST", "/api/plugins/Bad..name/check", None, 422),
    ],
    ids=["string-bool", "int-bool", "missing-key", "extra-key", "not-an-object", "bad-name",
         "unknown-put", "unknown-get", "unknown-check", "bad-name-check"],
)
def test_bad_requests_change_nothing(
    daemon: RunningDaemon, method: str, path: str, body: object, status: int
) -> None:
    reply = daemon.api(method, path, body)
    assert reply.status_code == status, reply.text
    assert reply.json()["message"]
    assert behavior(daemon, "calm") == {"plugin": "calm", "auto_unmount": True, "log_violations": True}


def test_auth_is_required(daemon: RunningDaemon) -> None:
    put = daemon.api(
        "PUT", "/api/plugins/calm/unmount-behavior", {"auto_unmount": False, "log_violations": False},
        token=None,
    )
    assert put.status_code == 401
    wrong = daemon.api("POST", "/api/plugins/calm/check", token="wrong-token-wrong-token-wrong")
    assert wrong.status_code == 401
    assert behavior(daemon, "calm")["auto_unmount"] is True


def test_ctl_check_and_unmount_behavior(daemon: RunningDaemon) -> None:
    calm = ctl(daemon, "check", "calm")
    assert calm.returncode == 0, calm.stderr
    assert json.loads(calm.stdout)["violations"] == []

    assert daemon.call("open_fds", {})["results"][0]["outcome"] == "ok"
    hog = ctl(daemon, "check", "fdhog")
    assert hog.returncode == 2, hog.stderr  # over a limit
    assert [v["type"] for v in json.loads(hog.stdout)["violations"]] == ["fds"]

    shown = ctl(daemon, "unmount-behavior", "calm")
    assert json.loads(shown.stdout) == {"plugin": "calm", "auto_unmount": True, "log_violations": True}
    changed = ctl(daemon, "unmount-behavior", "calm", "--auto-unmount", "off")
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout) == {"plugin": "calm", "auto_unmount": False, "log_violations": True}
    assert behavior(daemon, "calm")["auto_unmount"] is False

    unknown = ctl(daemon, "check", "ghost")
    assert unknown.returncode != 0
    assert "ghost" in unknown.stderr and len(unknown.stderr.strip().splitlines()) == 1
