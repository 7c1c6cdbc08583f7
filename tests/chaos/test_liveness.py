"""Issue 9, row 3: liveness whatever is in flight. A plugin SIGSTOPped while a long call waits on it
is found unresponsive at its first missed pong and restarted (the call in flight fails at once, not at
its deadline); a plugin spinning the CPU in a call longer than the heartbeat timeout, but inside the
call's deadline, is busy, not hung, and keeps running."""

from __future__ import annotations

import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from chaos_harness import HealthProbe, wait_for
from kit import plugin_source

# Short heartbeats, so detection is quick; the long call's deadline is far beyond them (and beyond
# every wait below), so only the heartbeat can end it early.
HEARTBEAT = """
[supervisor]
heartbeat_interval_secs = 0.2
heartbeat_timeout_secs = 1.0
backoff_initial_secs = 0.05
"""
CALL_DEADLINE_S = 45
BOUND_S = 25  # waits are bounded well inside CALL_DEADLINE_S: an upper bound, nothing is timed

SLEEPY = plugin_source("sleepy", {
    "slow": (0, "logging.getLogger('plugin').info('in flight %s', data)\ntime.sleep(data)\nreturn data"),
    "echo": (0, "return data"),
}, header="import logging")
SPINNER = plugin_source("spinner", {
    "spin": (0, "logging.getLogger('plugin').info('spinning')\nt = time.monotonic()\n"
                "while time.monotonic() - t < data:\n    pass\nreturn 'done'"),
}, header="import logging")


def _audit(ws: Any) -> list[dict[str, Any]]:
    path = ws.root / "data" / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.root
@pytest.mark.parametrize("sandboxed", [False, True], ids=["plain", "sandboxed"])
def test_a_stopped_plugin_with_a_long_call_in_flight_is_detected_and_restarted(
    ws: Any, daemon_factory: Any, sandboxed: bool
) -> None:
    ws.sandboxing = sandboxed
    ws.extra_config = HEARTBEAT
    ws.add(SLEEPY)
    d = daemon_factory(ws)
    first = d.plugin("sleepy")
    pid = first["pid"]
    assert first["state"] == "running" and pid
    with HealthProbe(d.url) as probe, ThreadPoolExecutor(1) as pool:
        body = {"data": 40, "timeout_s": CALL_DEADLINE_S}
        in_flight = pool.submit(d.api, "POST", "/api/hooks/slow/execute", body)
        wait_for(lambda: "in flight 40" in d.log(), BOUND_S, "the long call to be running")
        os.kill(pid, signal.SIGSTOP)

        # The call in flight fails as soon as the plugin is found stopped: not at its deadline.
        reply = in_flight.result(timeout=BOUND_S)
        assert reply.status_code == 200, reply.text
        outcome = reply.json()["results"][0]
        assert outcome["outcome"] == "crashed", outcome
        assert "stopped" in outcome["error"]["message"], outcome

        # Restarted per the default policy (on-failure), and serving again.
        again = wait_for(lambda: (p := d.plugin("sleepy"))["state"] == "running" and p["pid"] != pid and p,
                         BOUND_S, "a restarted plugin")
        assert again["restarts"] == 1
        assert d.call("echo", {"n": 1})["results"][0]["output"] == {"n": 1}
    probe.check()
    said = "plugin sleepy is hung (no pong within 1s: its process is stopped (state T)); killing it"
    assert said in d.log()
    hung = [e for e in _audit(ws) if e["event"] == "crash" and e.get("kind") == "hung"]
    assert hung and hung[0]["plugin"] == "sleepy" and hung[0]["pid"] == pid
    assert "stopped" in hung[0]["detail"]


@pytest.mark.root
def test_a_plugin_busy_past_the_heartbeat_timeout_inside_its_deadline_is_not_killed(
    ws: Any, daemon_factory: Any
) -> None:
    ws.extra_config = HEARTBEAT
    ws.add(SPINNER)
    d = daemon_factory(ws)
    pid = d.plugin("spinner")["pid"]
    with HealthProbe(d.url) as probe:
        # Spins 3 s of wall-clock time: three heartbeat timeouts, a dozen missed pongs.
        result = d.call("spin", 3, timeout_s=CALL_DEADLINE_S)
    probe.check()
    assert result["results"][0]["outcome"] == "ok" and result["results"][0]["output"] == "done"
    after = d.plugin("spinner")
    assert after["pid"] == pid and after["state"] == "running" and after["restarts"] == 0
    assert "hung" not in d.log()
    assert not [e for e in _audit(ws) if e["event"] in ("crash", "restart")]
