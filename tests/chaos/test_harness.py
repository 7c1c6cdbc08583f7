"""The chaos harness itself: a real daemon starts, answers, and is reaped leaving nothing."""

from __future__ import annotations

from typing import Any

from chaos_harness import HealthProbe
from kit import plugin_source


def test_the_harness_runs_a_real_daemon_with_a_plugin(ws: Any, daemon_factory: Any) -> None:
    ws.add(plugin_source("echo", {"echo": (0, "return data")}))
    d = daemon_factory(ws)
    with HealthProbe(d.url) as probe:
        assert d.plugin("echo")["state"] == "running"  # auto-loaded: signed and trusted
        assert d.call("echo", {"x": 1})["results"][0]["output"] == {"x": 1}
    probe.check()
