"""deploy/grafana/plugind-dashboard.json: parses, and every query uses metrics that plugind exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from plugind.monitor import metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "plugind-dashboard.json"
METRIC_RE = re.compile(r"\bplugind_[a-z_]+\b")


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every sample name /metrics can carry (series names, incl. _bucket/_sum/_count/_total)."""
    metrics.observe_hook("grafana_hook", "grafana-probe", "ok", 0.01)
    metrics.violation("grafana-probe", "memory")
    metrics.plugin_restarted("grafana-probe")
    metrics.load_failed("grafana_probe")
    metrics.set_sample_source(lambda: {"grafana-probe": metrics.PluginSample(1, 1.0, 1, 1, 1)})
    try:
        text = metrics.render()[0].decode()
    finally:
        metrics.set_sample_source(None)
        metrics.forget_plugin("grafana-probe")
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def exprs(dashboard: dict) -> list[tuple[str, str]]:
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            out.append((f"${var['name']}", var["query"]))
    return out


def test_every_query_uses_exported_metric_names(dashboard, exported):
    used = set()
    for title, expr in exprs(dashboard):
        names = set(METRIC_RE.findall(expr))
        assert names, f"panel {title!r} queries no plugind metric: {expr}"
        assert names <= exported, f"panel {title!r} uses unknown metrics {names - exported}"
        used |= names
    # The dashboard covers every family of docs/operations.md's "Metrics" table.
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    for name in ("plugind_plugins", "plugind_plugin_memory_bytes", "plugind_plugin_cpu_seconds_total",
                 "plugind_plugin_violations_total", "plugind_plugin_restarts_total",
                 "plugind_hook_calls_total", "plugind_hook_duration_seconds",
                 "plugind_plugin_load_failures_total", "plugind_build_info"):
        assert name in families, name


def test_required_panels(dashboard):
    titles = {p["title"] for p in dashboard["panels"]}
    for title in ("Plugins running", "Memory per plugin", "CPU per plugin", "Hook latency p50",
                  "Hook latency p99", "Hook error rate", "Resource violations", "Plugin restarts"):
        assert title in titles
    by_title = {p["title"]: p for p in dashboard["panels"]}
    assert "histogram_quantile(0.99," in by_title["Hook latency p99"]["targets"][0]["expr"]
    assert "histogram_quantile(0.5," in by_title["Hook latency p50"]["targets"][0]["expr"]
    assert "rate(plugind_plugin_cpu_seconds_total" in by_title["CPU per plugin"]["targets"][0]["expr"]


def test_panel_structure(dashboard):
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"] == "plugind"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            refs = [t["refId"] for t in panel["targets"]]
            assert refs == [chr(65 + i) for i in range(len(refs))]
