"""plugind.monitor.metrics: the names of docs/operations.md ("Metrics"), values, bounded labels."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from plugind import __version__
from plugind.monitor import metrics

_ids = itertools.count()

DOCUMENTED_NAMES = {
    # family name as the parser reports it (counters lose `_total`) -> type
    "plugind_plugins": "gauge",
    "plugind_plugin_memory_bytes": "gauge",
    "plugind_plugin_cpu_seconds": "counter",
    "plugind_plugin_threads": "gauge",
    "plugind_plugin_open_fds": "gauge",
    "plugind_plugin_connections": "gauge",
    "plugind_plugin_violations": "counter",
    "plugind_plugin_restarts": "counter",
    "plugind_hook_calls": "counter",
    "plugind_hook_duration_seconds": "histogram",
    "plugind_plugin_load_failures": "counter",
    "plugind_build_info": "gauge",
}


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def families() -> dict[str, str]:
    body, _ = metrics.render()
    return {f.name: f.type for f in text_string_to_metric_families(body.decode())}


@pytest.fixture
def names() -> Iterator[Callable[..., list[str]]]:
    """Unique plugin names for one test; their series are dropped afterwards (shared registry)."""
    used: list[str] = []

    def make(n: int = 1) -> list[str]:
        fresh = [f"mt{next(_ids)}" for _ in range(n)]
        used.extend(fresh)
        return fresh

    yield make
    for name in used:
        metrics.forget_plugin(name)
    metrics.set_sample_source(None)


def test_every_design_metric_is_exported_with_its_type(names):
    (p,) = names()
    metrics.observe_hook("on_request", p, "ok", 0.01)
    metrics.violation(p, "memory")
    metrics.plugin_restarted(p)
    metrics.load_failed("untrusted")
    metrics.set_sample_source(lambda: {p: metrics.PluginSample(1, 1.0, 1, 1, 0)})
    got = families()
    for name, kind in DOCUMENTED_NAMES.items():
        assert got.get(name) == kind, name
    body = metrics.render()[0].decode()
    # Counters end in _total on the wire; no *_created noise.
    for counter in ("plugind_plugin_cpu_seconds_total", "plugind_plugin_violations_total",
                    "plugind_plugin_restarts_total", "plugind_hook_calls_total",
                    "plugind_plugin_load_failures_total"):
        assert f"\n{counter}{{" in body
    assert "_created" not in body


def test_build_info_carries_the_version():
    assert scrape()[("plugind_build_info", (("version", __version__),))] == 1.0


def test_hook_calls_and_latency_histogram_values(names):
    (p,) = names()
    for seconds, outcome in [(0.002, "ok"), (0.02, "ok"), (0.3, "timeout"), (0.004, "error"),
                             (0.001, "crashed"), (0.001, "weird-outcome"), (0.00004, "ok")]:
        metrics.observe_hook("on_request", p, outcome, seconds)
    s = scrape()

    def calls(outcome: str) -> float:
        return s[("plugind_hook_calls_total", (("hook", "on_request"), ("outcome", outcome), ("plugin", p)))]

    assert calls("ok") == 3
    assert calls("timeout") == 1
    assert calls("crashed") == 1
    assert calls("error") == 2  # an unknown outcome counts as an error
    labels = (("hook", "on_request"), ("plugin", p))
    assert s[("plugind_hook_duration_seconds_count", labels)] == 7
    assert s[("plugind_hook_duration_seconds_sum", labels)] == pytest.approx(0.32804)
    # A 40 us call (a plugin answering at once) has a bucket of its own.
    assert s[("plugind_hook_duration_seconds_bucket", (*labels[:1], ("le", "0.0001"), labels[1]))] == 1
    assert s[("plugind_hook_duration_seconds_bucket", (*labels[:1], ("le", "0.0025"), labels[1]))] == 4
    assert s[("plugind_hook_duration_seconds_bucket", (*labels[:1], ("le", "+Inf"), labels[1]))] == 7


def test_violations_restarts_and_load_failures(names):
    (p,) = names()
    metrics.violation(p, "memory")
    metrics.violation(p, "memory")
    metrics.violation(p, "fds")
    metrics.violation(p, "not-a-type")
    metrics.plugin_restarted(p)
    before = scrape().get(("plugind_plugin_load_failures_total", (("reason", "signature_invalid"),)), 0)
    metrics.load_failed("signature_invalid")
    s = scrape()
    assert s[("plugind_plugin_violations_total", (("plugin", p), ("type", "memory")))] == 2
    assert s[("plugind_plugin_violations_total", (("plugin", p), ("type", "fds")))] == 1
    assert s[("plugind_plugin_violations_total", (("plugin", p), ("type", "other")))] == 1
    assert s[("plugind_plugin_restarts_total", (("plugin", p),))] == 1
    assert s[("plugind_plugin_load_failures_total", (("reason", "signature_invalid"),))] == before + 1


def test_plugin_states_are_a_full_snapshot():
    metrics.set_plugin_states({"running": 3, "failed": 1})
    s = scrape()
    assert s[("plugind_plugins", (("state", "running"),))] == 3
    assert s[("plugind_plugins", (("state", "failed"),))] == 1
    assert s[("plugind_plugins", (("state", "starting"),))] == 0
    metrics.set_plugin_states({"running": 2, "bogus state!": 4, "also bogus!": 1})
    s = scrape()
    assert s[("plugind_plugins", (("state", "running"),))] == 2
    assert s[("plugind_plugins", (("state", "failed"),))] == 0  # not given: back to zero
    assert s[("plugind_plugins", (("state", "other"),))] == 5  # unknown states are summed
    metrics.set_plugin_states({})


def test_sampled_gauges_and_cpu_counter_come_from_the_source(names):
    a, b = names(2)
    samples = {a: metrics.PluginSample(10 * 2**20, 1.25, 3, 17, 2), b: metrics.PluginSample(5, 0.5, 1, 4, 0)}
    metrics.set_sample_source(lambda: samples)
    s = scrape()
    assert s[("plugind_plugin_memory_bytes", (("plugin", a),))] == 10 * 2**20
    assert s[("plugind_plugin_cpu_seconds_total", (("plugin", a),))] == 1.25
    assert s[("plugind_plugin_threads", (("plugin", a),))] == 3
    assert s[("plugind_plugin_open_fds", (("plugin", a),))] == 17
    assert s[("plugind_plugin_connections", (("plugin", a),))] == 2
    assert s[("plugind_plugin_open_fds", (("plugin", b),))] == 4
    del samples[b]  # unloaded: gone at the next scrape
    assert ("plugind_plugin_open_fds", (("plugin", b),)) not in scrape()


def test_label_budget_admits_up_to_the_limit_then_other():
    budget = metrics.LabelBudget(2)
    assert budget.admit("a") == "a"
    assert budget.admit("b") == "b"
    assert budget.admit("c") == "other"
    assert budget.admit("a") == "a"  # already admitted
    budget.release("a")
    assert budget.admit("c") == "c"
    # Hostile values never become labels.
    assert metrics.LabelBudget(10).admit("x" * 65) == "other"
    assert metrics.LabelBudget(10).admit('a"b\nc') == "other"
    assert metrics.LabelBudget(10).admit("other") == "other"


def test_plugin_and_hook_labels_are_bounded(names):
    plugins = names(metrics.MAX_PLUGINS + 20)
    for i, p in enumerate(plugins):
        metrics.observe_hook(f"hook{i % (metrics.MAX_HOOKS + 10)}", p, "ok", 0.001)
    s = scrape()
    calls = {dict(k[1])["plugin"]: v for k, v in s.items() if k[0] == "plugind_hook_calls_total"}
    hooks = {dict(k[1])["hook"] for k in s if k[0] == "plugind_hook_calls_total"}
    assert len(calls) <= metrics.MAX_PLUGINS + 1
    assert "other" in calls
    assert len(hooks) <= metrics.MAX_HOOKS + 1
    assert "other" in hooks
    total = sum(v for k, v in s.items() if k[0] == "plugind_hook_calls_total")
    assert total >= len(plugins)  # nothing is lost, only folded into `other`
    # The sampled families fold the overflow too.
    metrics.set_sample_source(lambda: {p: metrics.PluginSample(1, 0.0, 1, 1, 0) for p in plugins})
    s = scrape()
    fds = {dict(k[1])["plugin"]: v for k, v in s.items() if k[0] == "plugind_plugin_open_fds"}
    assert len(fds) <= metrics.MAX_PLUGINS + 1
    assert sum(fds.values()) == len(plugins)


def test_forget_plugin_drops_its_series_and_frees_its_slots(names):
    a, b = names(2)
    metrics.observe_hook("mt_only_hook", a, "ok", 0.001)
    metrics.observe_hook("on_request", a, "ok", 0.001)
    metrics.observe_hook("on_request", b, "ok", 0.001)
    metrics.violation(a, "threads")
    metrics.plugin_restarted(a)
    assert a in metrics.PLUGIN_LABELS and "mt_only_hook" in metrics.HOOK_LABELS
    metrics.forget_plugin(a)
    s = scrape()
    assert not [k for k in s if ("plugin", a) in k[1]]
    assert [k for k in s if ("plugin", b) in k[1]]
    assert a not in metrics.PLUGIN_LABELS
    assert "mt_only_hook" not in metrics.HOOK_LABELS  # its last plugin is gone
    assert "on_request" in metrics.HOOK_LABELS  # still used by b
    metrics.forget_plugin(a)  # idempotent


def test_series_bound_once_start_afresh_after_forget(names):
    # observe_hook binds a (hook, plugin)'s series once; forgetting the plugin must not leave a
    # stale binding behind that keeps counting into the dropped series.
    (a,) = names(1)
    for outcome in ("ok", "ok", "timeout", "bogus"):
        metrics.observe_hook("mt_bound", a, outcome, 0.001)
    s = scrape()
    calls = ("plugind_hook_calls_total",)
    assert s[(calls[0], (("hook", "mt_bound"), ("outcome", "ok"), ("plugin", a)))] == 2
    assert s[(calls[0], (("hook", "mt_bound"), ("outcome", "timeout"), ("plugin", a)))] == 1
    assert s[(calls[0], (("hook", "mt_bound"), ("outcome", "error"), ("plugin", a)))] == 1
    # outcomes never seen have no series, as with .labels() per call
    assert (calls[0], (("hook", "mt_bound"), ("outcome", "crashed"), ("plugin", a))) not in s
    assert s[("plugind_hook_duration_seconds_count", (("hook", "mt_bound"), ("plugin", a)))] == 4
    metrics.forget_plugin(a)
    metrics.observe_hook("mt_bound", a, "ok", 0.001)
    s = scrape()
    assert s[(calls[0], (("hook", "mt_bound"), ("outcome", "ok"), ("plugin", a)))] == 1
    assert (calls[0], (("hook", "mt_bound"), ("outcome", "timeout"), ("plugin", a))) not in s
    assert s[("plugind_hook_duration_seconds_count", (("hook", "mt_bound"), ("plugin", a)))] == 1
    assert a in metrics.PLUGIN_LABELS and "mt_bound" in metrics.HOOK_LABELS
    metrics.forget_plugin(a)
