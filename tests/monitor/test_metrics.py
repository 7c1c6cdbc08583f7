"""plugind.monitor.metrics: the names of docs/operations.md ("Metrics"), values, bounded labels."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
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


def test_hook_observe_matches_prometheus_client_observe(names):
    # observe_hook adds to the histogram's values directly (bisect, not Histogram.observe's scan):
    # every bucket, the sum and the counts must be what prometheus_client's own calls would give,
    # including values right on a bucket bound, zero, negative (as 0), NaN (as 0) and past the last.
    (p,) = names()
    registry = CollectorRegistry()
    reference = Histogram("mt_reference_seconds", "reference", buckets=metrics.HOOK_BUCKETS,
                          registry=registry)
    values = [0.0, -1.0, float("nan"), 1e-9, 5e-5, 31.0, 1e9]
    for bound in metrics.HOOK_BUCKETS:
        values += [bound, bound * (1 - 1e-12), bound * (1 + 1e-12)]
    for i, seconds in enumerate(values):
        metrics.observe_hook("mt_exact", p, ("ok", "error", "timeout")[i % 3], seconds)
        reference.observe(max(0.0, seconds))
    s = scrape()
    labels = (("hook", "mt_exact"), ("plugin", p))
    ours = {k[1][1][1]: v for k, v in s.items()
            if k[0] == "plugind_hook_duration_seconds_bucket" and k[1][0] == labels[0]
            and k[1][2] == labels[1]}
    theirs = {}
    their_sum = None
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                theirs[sample.labels["le"]] = sample.value
            elif sample.name.endswith("_sum"):
                their_sum = sample.value
    assert ours == theirs
    assert s[("plugind_hook_duration_seconds_sum", labels)] == their_sum
    assert s[("plugind_hook_duration_seconds_count", labels)] == len(values)
    for i, outcome in enumerate(("ok", "error", "timeout")):
        key = ("plugind_hook_calls_total", (("hook", "mt_exact"), ("outcome", outcome), ("plugin", p)))
        assert s[key] == len(values[i::3])


def test_observe_ok_counts_as_observe_hook_ok(names):
    # observe_ok is the hook path's shortcut for observe_hook(..., "ok", ...): the same call count,
    # buckets, sum and count, for any duration (zero, negative and NaN as 0, on and past the bounds),
    # also when it is the first to count `ok` of its series, or comes after other outcomes.
    a, b = names(2)
    values = [0.0, -1.0, float("nan"), 1e-9, 5e-5, 31.0, 1e9]
    for bound in metrics.HOOK_BUCKETS:
        values += [bound, bound * (1 - 1e-12), bound * (1 + 1e-12)]
    metrics.observe_hook("mt_ok", b, "timeout", 0.5)
    metrics.observe_hook("mt_ok", a, "timeout", 0.5)
    for seconds in values:
        metrics.observe_hook("mt_ok", a, "ok", seconds)
        metrics.observe_ok("mt_ok", b, seconds)
    s = scrape()

    def series(p: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {(k[0], tuple(kv for kv in k[1] if kv[0] != "plugin")): v for k, v in s.items()
                if ("plugin", p) in k[1] and ("hook", "mt_ok") in k[1]}

    ours, theirs = series(b), series(a)
    assert ours == theirs
    assert ours[("plugind_hook_calls_total", (("hook", "mt_ok"), ("outcome", "ok")))] == len(values)
    assert ours[("plugind_hook_duration_seconds_count", (("hook", "mt_ok"),))] == len(values) + 1


def test_violations_restarts_and_load_failures(names):
    (p,) = names()
    metrics.violation(p, "memory")
    metrics.violation(p, "memory")
    metrics.violation(p, "fds")
    metrics.violation(p, "budget")  # docs/operations.md's {type="budget"}: it was summed in `other`
    metrics.violation(p, "not-a-type")
    metrics.plugin_restarted(p)
    before = scrape().get(("plugind_plugin_load_failures_total", (("reason", "signature_invalid"),)), 0)
    metrics.load_failed("signature_invalid")
    s = scrape()
    assert s[("plugind_plugin_violations_total", (("plugin", p), ("type", "memory")))] == 2
    assert s[("plugind_plugin_violations_total", (("plugin", p), ("type", "fds")))] == 1
    assert s[("plugind_plugin_violations_total", (("plugin", p), ("type", "budget")))] == 1
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
    s = scrape()
    assert s[("plugind_plugins", (("state", "other"),))] == 0  # `other` too goes back to zero
    assert s[("plugind_plugins", (("state", "running"),))] == 0


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
    # A call that ends after the unload (it picked its handlers before) makes no series again...
    metrics.observe_hook("mt_bound", a, "error", 0.001)
    metrics.observe_ok("mt_bound", a, 0.001)
    s = scrape()
    assert not [k for k in s if ("plugin", a) in k[1]]
    assert a not in metrics.PLUGIN_LABELS
    # ...and once it is loaded again, its series start afresh.
    metrics.plugin_back(a)
    metrics.observe_hook("mt_bound", a, "ok", 0.001)
    s = scrape()
    assert s[(calls[0], (("hook", "mt_bound"), ("outcome", "ok"), ("plugin", a)))] == 1
    assert (calls[0], (("hook", "mt_bound"), ("outcome", "timeout"), ("plugin", a))) not in s
    assert s[("plugind_hook_duration_seconds_count", (("hook", "mt_bound"), ("plugin", a)))] == 1
    assert a in metrics.PLUGIN_LABELS and "mt_bound" in metrics.HOOK_LABELS
    metrics.forget_plugin(a)


def _ok_count(hook: str, plugin: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(
        "plugind_hook_calls_total", {"hook": hook, "plugin": plugin, "outcome": "ok"})


def test_deferred_ok_observations_are_exact_at_every_read(names):
    # observe_ok only records; any read of the registry (render, generate_latest, a sample) writes
    # what is pending first, so a read right after a call sees it.
    (a,) = names(1)
    metrics.observe_ok("mt_defer", a, 0.002)
    assert _ok_count("mt_defer", a) == 1
    metrics.observe_ok("mt_defer", a, 0.002)
    assert f'plugind_hook_calls_total{{hook="mt_defer",outcome="ok",plugin="{a}"}} 2.0' in (
        metrics.generate_latest(metrics.REGISTRY).decode())
    metrics.observe_ok("mt_defer", a, 0.002)
    key = ("plugind_hook_calls_total", (("hook", "mt_defer"), ("outcome", "ok"), ("plugin", a)))
    assert scrape()[key] == 3
    assert metrics.pending_observations() == 0


def test_pending_observations_are_bounded_without_a_reader(names):
    (a,) = names(1)
    for _ in range(3 * metrics._FLUSH_AT):
        metrics.observe_ok("mt_bounded", a, 0.001)
        assert metrics.pending_observations() < metrics._FLUSH_AT
    metrics.flush_observations()
    assert metrics.pending_observations() == 0
    assert _ok_count("mt_bounded", a) == 3 * metrics._FLUSH_AT


def test_observations_flushed_by_another_thread_are_counted_once(names):
    # The thread that renders /metrics flushes while the event loop's thread records: every call is
    # counted exactly once, in the counter and in the histogram.
    import threading

    (a,) = names(1)
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            metrics.render()

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        n = 20_000
        for i in range(n):
            metrics.observe_ok("mt_threads", a, 0.0001 * (i % 7))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert _ok_count("mt_threads", a) == n
    assert metrics.REGISTRY.get_sample_value(
        "plugind_hook_duration_seconds_count", {"hook": "mt_threads", "plugin": a}) == n


def test_forget_takes_pending_observations_with_the_series(names):
    # Calls answered before an unload are dropped with the plugin's series: they do not bring the
    # series back at the next read.
    a, b = names(2)
    metrics.observe_ok("mt_forget", a, 0.001)
    metrics.observe_ok("mt_forget", b, 0.001)
    assert metrics.pending_observations() == 2
    metrics.forget_plugin(a)
    s = scrape()
    assert not [k for k in s if ("plugin", a) in k[1]]
    assert s[("plugind_hook_calls_total", (("hook", "mt_forget"), ("outcome", "ok"), ("plugin", b)))] == 1


# -- the text renderer: the same exposition as prometheus_client's generate_latest -----------------

Parsed = list[tuple[str, str, str, list[tuple[str, tuple[tuple[str, str], ...], str]]]]


def parsed(body: bytes) -> Parsed:
    """Every family (name, type, help) and sample (name, labels, value) of a text exposition."""
    return [
        (f.name, f.type, f.documentation,
         [(s.name, tuple(sorted(s.labels.items())), repr(s.value)) for s in f.samples])
        for f in text_string_to_metric_families(body.decode())
    ]


def assert_same_exposition(ours: bytes, reference: bytes) -> None:
    assert parsed(ours) == parsed(reference)
    assert ours == reference  # same order and number formatting too


def populate(plugins: list[str]) -> None:
    hooks = ["on_request", "on_event", "on_tick", "on_\"odd\"hook"]  # the last one is folded into other
    for i, p in enumerate(plugins):
        for j, hook in enumerate(hooks):
            for k, outcome in enumerate(("ok", "error", "timeout", "crashed")):
                if (i + j + k) % 3:
                    metrics.observe_hook(hook, p, outcome, 0.00003 * (i + 1) * (k + 1) ** 3)
        if i % 4 == 0:
            metrics.violation(p, "memory")
            metrics.plugin_restarted(p)
    metrics.observe_hook("on_request", plugins[0], "ok", float("inf"))  # sum +Inf
    metrics.observe_hook("on_request", plugins[1], "ok", 7e6)  # sum in Go's exponent form
    samples = {
        p: metrics.PluginSample(2**20 * (i + 1), float("nan") if i == 2 else 0.125 * i, i, 3, 0)
        for i, p in enumerate(plugins)
    }
    samples["not a label!"] = metrics.PluginSample(1, 0.5, 1, 1, 1)  # summed under `other`
    metrics.set_sample_source(lambda: samples)
    metrics.set_plugin_states({"running": len(plugins) - 1, "failed": 1})
    metrics.load_failed("untrusted")


def test_render_is_generate_latest_with_many_plugins_and_after_forget(names):
    plugins = names(60)
    populate(plugins)
    weird = 'quote" back\\slash new\nline'
    metrics.HTTP_REFUSED.labels(weird).inc()
    metrics.HTTP_TIMED_OUT.labels("mt_inf").inc(float("inf"))
    try:
        assert_same_exposition(metrics.render()[0], metrics.generate_latest(metrics.REGISTRY))
        body = metrics.render()[0].decode()
        assert 'reason="quote\\" back\\\\slash new\\nline"' in body
        assert f'plugind_hook_duration_seconds_sum{{hook="on_request",plugin="{plugins[0]}"}} +Inf' in body
        assert "NaN" in body
        metrics.HTTP_CONNECTIONS.set(float("nan"))
        metrics.set_plugin_states({"running": -0.0})  # type: ignore[dict-item]  # a gauge at -0.0
        for p in plugins[::3]:
            metrics.forget_plugin(p)
        kept = set(plugins) - set(plugins[::3])
        metrics.set_sample_source(lambda: {p: metrics.PluginSample(1, 1.0, 1, 1, 1) for p in kept})
        # new series after a render: the cache learns them; removed ones: it drops them
        metrics.observe_hook("on_late", plugins[1], "ok", 0.5)
        assert_same_exposition(metrics.render()[0], metrics.generate_latest(metrics.REGISTRY))
        assert f'plugin="{plugins[0]}"' not in metrics.render()[0].decode()
        for p in plugins:
            metrics.forget_plugin(p)
        assert_same_exposition(metrics.render()[0], metrics.generate_latest(metrics.REGISTRY))
    finally:
        metrics.HTTP_REFUSED.remove(weird)
        metrics.HTTP_TIMED_OUT.remove("mt_inf")
        metrics.HTTP_CONNECTIONS.set(0)
        metrics.set_plugin_states({})


def test_render_of_any_registry_matches_generate_latest():
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary
    from prometheus_client.core import GaugeMetricFamily

    reg = CollectorRegistry()
    renderer = metrics._TextRenderer(reg)
    c = Counter("mt_c", 'Help with a back\\slash\nand a newline "quoted".', ["a", "b"], registry=reg)
    g = Gauge("mt_g", "A gauge.", ["k"], registry=reg)
    h = Histogram("mt_h", "A histogram.", ["z", "a"], buckets=(0.5, 1, 1e7, 2e9), registry=reg)
    neg = Histogram("mt_neg", "Negative buckets: no _sum.", buckets=(-1, 0, 1), registry=reg)
    plain = Counter("mt_plain", "Unlabelled.", registry=reg)
    Gauge("mt_empty", "No children yet.", ["x"], registry=reg)
    summary = Summary("mt_s", "A summary (rendered by prometheus_client).", ["q"], registry=reg)

    class Custom:
        def collect(self):
            f = GaugeMetricFamily("mt_custom", "A custom collector.", labels=["w"])
            f.add_metric(['x"\\\n'], -0.0)
            yield f

    reg.register(Custom())  # type: ignore[arg-type]
    assert_same_exposition(renderer.render(), metrics.generate_latest(reg))
    odd = ['quote"', "back\\slash", "new\nline", "ünï", "", "\\n literal"]
    for i, v in enumerate(odd):
        c.labels(v, str(i)).inc(i * 1.5)
        h.labels(v, "x").observe(i * 0.4)
    c.labels("inf", "").inc(float("inf"))
    c.labels("nan", "").inc(float("nan"))
    c.labels("big", "").inc(123456789.0)
    c.labels("tiny", "").inc(1e-300)
    for k, value in {"inf": float("inf"), "-inf": float("-inf"), "nan": float("nan"), "negzero": -0.0,
                     "neg": -2.5, "big": 1e20, "exp": 1234567.0, "int": 3}.items():
        g.labels(k).set(value)
    h.labels("inf", "x").observe(float("inf"))
    h.labels("nan", "x").observe(float("nan"))
    neg.observe(-3)
    neg.observe(0.5)
    plain.inc(2)
    summary.labels("1").observe(4)
    assert_same_exposition(renderer.render(), metrics.generate_latest(reg))
    assert renderer.render() == renderer.render()  # from the caches now
    c.remove('quote"', "0")
    h.clear()
    g.labels("later").set(1)
    assert_same_exposition(renderer.render(), metrics.generate_latest(reg))


def test_the_comparison_sees_a_dropped_or_mangled_sample():
    # The two tests above are only as good as assert_same_exposition: it must catch a lost line,
    # a changed value or a badly escaped label.
    reference = b'# HELP m A.\n# TYPE m gauge\nm{a="x\\"y"} 1.0\nm{a="z"} 2.0\n'
    for broken in (b'# HELP m A.\n# TYPE m gauge\nm{a="x\\"y"} 1.0\n',
                   b'# HELP m A.\n# TYPE m gauge\nm{a="x\\"y"} 1.0\nm{a="z"} 2.5\n',
                   b'# HELP m A.\n# TYPE m gauge\nm{a="x\\\\\\"y"} 1.0\nm{a="z"} 2.0\n'):
        assert parsed(broken) != parsed(reference)
        with pytest.raises(AssertionError):
            assert_same_exposition(broken, reference)
        with pytest.raises(AssertionError):
            assert_same_exposition(reference, broken)


def test_render_while_series_come_and_go(names):
    # /metrics runs in FastAPI's thread pool: renders race each other and the hook calls.
    import threading

    plugins = names(40)
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            i = 0
            while not stop.is_set():
                p = plugins[i % len(plugins)]
                metrics.observe_hook(f"mt_churn{i % 5}", p, "ok", 0.001 * (i % 50))
                if i % 7 == 0:
                    metrics.forget_plugin(p)
                i += 1
        except BaseException as e:
            errors.append(e)

    def scrape_many() -> None:
        try:
            for _ in range(30):
                assert parsed(metrics.render()[0])
        except BaseException as e:
            errors.append(e)

    writers = [threading.Thread(target=churn) for _ in range(2)]
    readers = [threading.Thread(target=scrape_many) for _ in range(3)]
    for t in writers + readers:
        t.start()
    for t in readers:
        t.join()
    stop.set()
    for t in writers:
        t.join()
    assert not errors
    assert_same_exposition(metrics.render()[0], metrics.generate_latest(metrics.REGISTRY))


def test_one_plugin_declaring_many_hooks_does_not_take_every_label(names: Callable[..., list[str]]) -> None:
    # The MAX_HOOKS label slots are shared: a load binds at most BIND_SHARE new hook labels ahead
    # of any call, so a later plugin's hooks still get theirs (a hook that is called gets its own).
    a, b = names(2)
    greedy = [f"mt_greedy_{i}" for i in range(metrics.MAX_HOOKS)]
    try:
        metrics.bind_hooks(a, greedy)
        taken = [h for h in greedy if h in metrics.HOOK_LABELS]
        assert taken == greedy[: metrics.BIND_SHARE]
        metrics.bind_hooks(b, ["mt_modest"])
        metrics.observe_hook("mt_modest", b, "ok", 0.001)
        assert _ok_count("mt_modest", b) == 1
        metrics.observe_hook(greedy[-1], a, "ok", 0.001)  # called: it gets a slot of its own
        assert _ok_count(greedy[-1], a) == 1
    finally:
        metrics.forget_plugin(a)
        metrics.forget_plugin(b)
    assert not any(h in metrics.HOOK_LABELS for h in [*greedy, "mt_modest"])
