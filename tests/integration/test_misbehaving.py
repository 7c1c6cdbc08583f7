"""Misbehaving plugins against a real daemon: each gets the right error, /health stays under 100 ms,
the other plugin keeps working, no zombie or orphan is left, and the restart policy is honoured."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable

import pytest
from conftest import HealthProbe, RunningDaemon, alive, wait_for
from kit import Workspace, plugin_source
from scenarios import SCENARIOS, echo

Factory = Callable[..., RunningDaemon]
pytestmark = pytest.mark.slow  # a daemon per test

SUPERVISOR = """
[supervisor]
hello_timeout_secs = 2.0
backoff_initial_secs = 0.05
backoff_max_secs = 0.5
shutdown_grace_secs = 1.0
[plugin.exiter]
restart = "never"
"""


def setup(ws: Workspace, factory: Factory, scenario: str) -> RunningDaemon:
    ws.auto_load = False
    ws.extra_config = SUPERVISOR
    ws.add(SCENARIOS[scenario])
    ws.add(echo("good", priority=-1))
    daemon = factory(ws)
    assert daemon.load("good").status_code == 200
    return daemon


def good_still_works(daemon: RunningDaemon) -> None:
    reply = daemon.call("on_request", {"seen": []}, policy="all", timeout_s=5)
    outcome = {r["plugin"]: r for r in reply["results"]}["good"]
    assert outcome["outcome"] == "ok" and outcome["output"] == {"seen": ["good"]}


def no_zombies(daemon: RunningDaemon) -> None:
    wait_for(lambda: not daemon.zombies(), 60, "zombies to be reaped")


CALL_FAILURES = [
    # scenario, outcome, error type, words in the message, restarted?, state afterwards
    ("raiser", "error", "HookFailed", "KeyError", False, "running"),
    ("hanger", "timeout", "HookTimeout", "did not answer within", False, "running"),
    ("exiter", "crashed", "PluginCrashed", "7", False, "failed"),
    ("garbage", "crashed", "ProtocolViolation", "", True, "running"),
    ("huge", "crashed", "ProtocolViolation", "", True, "running"),
]


@pytest.mark.parametrize(
    ("scenario", "outcome", "error_type", "words", "restarted", "state"),
    CALL_FAILURES,
    ids=[c[0] for c in CALL_FAILURES],
)
def test_misbehaving_call(
    ws: Workspace, daemon_factory: Factory, scenario: str, outcome: str, error_type: str,
    words: str, restarted: bool, state: str,
) -> None:
    daemon = setup(ws, daemon_factory, scenario)
    with HealthProbe(daemon.url) as probe:
        assert daemon.load(scenario).status_code == 200
        before = daemon.plugin(scenario)["pid"]
        reply = daemon.call("on_request", {"seen": []}, policy="all", timeout_s=1.0)
        results = {r["plugin"]: r for r in reply["results"]}
        bad = results[scenario]
        assert bad["outcome"] == outcome, bad
        assert bad["error"]["type"] == error_type, bad
        assert words in bad["error"]["message"]
        assert results["good"]["outcome"] == "ok"
        if restarted:
            info = wait_for(
                lambda: (p := daemon.plugin(scenario))["state"] == "running" and p["pid"] != before and p,
                60, f"{scenario} to be restarted",
            )
            assert info["restarts"] >= 1
            assert not alive(before)
        else:
            info = wait_for(lambda: (p := daemon.plugin(scenario))["state"] == state and p, 60, state)
            if state == "running":
                assert info["pid"] == before
            else:
                assert not alive(before)
        good_still_works(daemon)
        no_zombies(daemon)
    probe.check()
    audit = daemon.api("GET", "/api/audit").json()["entries"]
    if outcome == "crashed":
        assert any(e["event"] == "crash" and e["plugin"] == scenario for e in audit), audit


def test_sigkilled_from_outside_is_restarted(ws: Workspace, daemon_factory: Factory) -> None:
    daemon = setup(ws, daemon_factory, "victim")
    with HealthProbe(daemon.url) as probe:
        assert daemon.load("victim").status_code == 200
        before = daemon.plugin("victim")["pid"]
        os.kill(before, signal.SIGKILL)
        info = wait_for(
            lambda: (p := daemon.plugin("victim"))["state"] == "running" and p["pid"] != before and p,
            15, "victim to be restarted",
        )
        assert info["restarts"] == 1
        reply = daemon.call("on_request", {"seen": []})
        assert reply["data"] == {"seen": ["victim", "good"]}
        no_zombies(daemon)
    probe.check()
    metrics = daemon.api("GET", "/metrics").text
    assert 'plugind_plugin_restarts_total{plugin="victim"} 1.0' in metrics
    events = [(e["event"], e["plugin"]) for e in daemon.api("GET", "/api/audit").json()["entries"]]
    assert ("crash", "victim") in events and ("restart", "victim") in events


def test_never_says_hello(ws: Workspace, daemon_factory: Factory) -> None:
    daemon = setup(ws, daemon_factory, "mute")
    with HealthProbe(daemon.url) as probe:
        reply = daemon.load("mute")
        assert reply.status_code == 500, reply.text
        assert "hello" in reply.json()["message"]
        assert daemon.plugin("mute")["state"] == "available"
        assert daemon.api("GET", "/health").json()["plugins_loaded"] == 1
        good_still_works(daemon)
        # Only the fork-servers and the good plugin remain.
        good_pid = daemon.plugin("good")["pid"]
        wait_for(lambda: len([p for p in daemon.tree() if p.ppid() != daemon.proc.pid]) == 1, 60,
                 "the mute child to be gone")  # the fork-servers are the daemon's own children
        assert good_pid in {p.pid for p in daemon.tree()}
        no_zombies(daemon)
    probe.check()


def test_resource_violations_unload_the_plugin(ws: Workspace, daemon_factory: Factory) -> None:
    ws.auto_load = False
    ws.extra_config = """
[monitoring]
check_interval_secs = 0.2
violation_threshold = 2
auto_unmount = true
[monitoring.limits]
max_threads = 4
"""
    ws.add(plugin_source("threads", {"on_request": (0, "return data")}, on_load="""
        import threading
        for _ in range(8):
            threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
    """))
    ws.add(echo("calm"))
    daemon = daemon_factory(ws)
    assert daemon.load("calm").status_code == 200
    loaded = daemon.load("threads")
    assert loaded.status_code == 200
    # From the load reply: two sweeps 0.2 s apart may unload the plugin before a GET could ask.
    pid = int(re.search(r"\(pid (\d+)\)", loaded.json()["message"]).group(1))  # type: ignore[union-attr]
    info = wait_for(lambda: (p := daemon.plugin("threads"))["state"] == "available" and p, 60, "unload")
    assert info["violations"] and info["violations"][-1]["type"] == "threads"
    assert not alive(pid)
    assert daemon.plugin("calm")["state"] == "running"
    events = [(e["event"], e["plugin"]) for e in daemon.api("GET", "/api/audit").json()["entries"]]
    assert ("violation", "threads") in events and ("auto_unload", "threads") in events
    assert ("unload", "threads") in events
