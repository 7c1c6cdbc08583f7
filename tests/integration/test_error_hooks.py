"""`on_error`, fired by the host, against the real daemon and real plugins: a reporter plugin records
every event in its context key; failing, timed-out and crashing handlers are reported with
{hook, plugin, outcome, error}; a failing or crashing on_error handler is not (never recursive);
secrets in error messages are redacted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from conftest import RunningDaemon, wait_for
from kit import Workspace, plugin_source

from plugind.sdk import ON_ERROR

Factory = Callable[..., RunningDaemon]
pytestmark = pytest.mark.slow  # a daemon per test

RECORD = """
seen = list(ctx.get('reporter.errors') or [])
seen.append(data)
ctx.set('reporter.errors', seen)
return data
"""


def reported(daemon: RunningDaemon) -> list[dict[str, Any]]:
    reply = daemon.api("GET", "/api/context/reporter.errors")
    if reply.status_code == 404:
        return []
    assert reply.status_code == 200, reply.text
    events: list[dict[str, Any]] = reply.json()["value"]
    return events


def test_failures_timeouts_and_crashes_reach_on_error(ws: Workspace, daemon_factory: Factory) -> None:
    secret = ws.trust_key_hex
    ws.extra_config = "[supervisor]\nrestart = \"never\"\n"
    ws.add(plugin_source("reporter", {ON_ERROR: (0, RECORD)}))
    # A second on_error handler that fails, and one that crashes: neither failure is reported.
    ws.add(plugin_source("badreporter", {ON_ERROR: (0, "raise RuntimeError('reporter broke')")}))
    ws.add(plugin_source("raiser", {"on_request": (0, f"raise KeyError('boom, key {secret}')")}))
    ws.add(plugin_source("hanger", {"on_timeout": (0, "time.sleep(30)\nreturn data")}))
    ws.add(plugin_source("exiter", {"on_crash": (0, "os._exit(7)")}))
    daemon = daemon_factory(ws)
    for name in ("reporter", "badreporter", "raiser", "hanger", "exiter"):
        assert daemon.plugin(name)["state"] == "running"

    assert daemon.call("on_request", {})["results"][0]["outcome"] == "error"
    first = wait_for(lambda: reported(daemon), 20, "the first on_error event")
    assert [(e["hook"], e["plugin"], e["outcome"]) for e in first] == [("on_request", "raiser", "error")]
    assert "boom" in first[0]["error"]
    assert secret not in first[0]["error"] and "[REDACTED]" in first[0]["error"]

    assert daemon.call("on_timeout", {}, timeout_s=0.5)["results"][0]["outcome"] == "timeout"
    wait_for(lambda: len(reported(daemon)) == 2, 20, "the timeout's on_error event")
    assert reported(daemon)[1]["hook"] == "on_timeout"
    assert reported(daemon)[1]["plugin"] == "hanger"
    assert reported(daemon)[1]["outcome"] == "timeout"

    assert daemon.call("on_crash", {})["results"][0]["outcome"] == "crashed"
    # The failed call, and the crash of the plugin (hook None), in either order.
    events = wait_for(lambda: (e := reported(daemon)) and len(e) >= 4 and e, 20, "the crash events")
    crash = [(e["hook"], e["plugin"], e["outcome"]) for e in events[2:]]
    expected = [("on_crash", "exiter", "crashed"), (None, "exiter", "crashed")]
    assert sorted(crash, key=str) == sorted(expected, key=str)

    # Nothing about the reporters themselves: badreporter failed on every delivery (it is in the
    # results of each on_error call), and that was not reported.
    assert all(e["plugin"] not in ("badreporter", "reporter") for e in reported(daemon))
    assert all(e["hook"] != ON_ERROR for e in reported(daemon))
    assert "hook on_error of badreporter failed" in daemon.log()
    assert len(reported(daemon)) == 4
    assert secret not in daemon.log()


def test_a_crashing_on_error_handler_does_not_feed_itself(ws: Workspace, daemon_factory: Factory) -> None:
    ws.extra_config = "[supervisor]\nrestart = \"never\"\n"
    ws.add(plugin_source("reporter", {ON_ERROR: (0, RECORD)}))
    ws.add(plugin_source("crashreporter", {ON_ERROR: (0, "os._exit(9)")}))
    ws.add(plugin_source("raiser", {"on_request": (0, "raise KeyError('boom')")}))
    daemon = daemon_factory(ws)
    assert daemon.call("on_request", {})["results"][0]["outcome"] == "error"
    wait_for(lambda: daemon.plugin("crashreporter")["state"] != "running", 20, "crashreporter's crash")
    wait_for(lambda: reported(daemon), 20, "the on_error event")
    # One event, the raiser's: neither the crashreporter's failed on_error call nor its crash.
    assert daemon.call("on_request", {})["results"][0]["outcome"] == "error"
    wait_for(lambda: len(reported(daemon)) == 2, 20, "the second on_error event")
    assert [(e["hook"], e["plugin"]) for e in reported(daemon)] == [("on_request", "raiser")] * 2
