"""Every Prometheus object of plugind (docs/operations.md, "Metrics"), on one dedicated registry.

Other modules never touch prometheus_client directly; they call the helpers below:

    observe_hook(hook, plugin, outcome, seconds)   # outcome: ok | error | timeout | crashed
    plugin_restarted(plugin); load_failed(reason); violation(plugin, type)
    set_plugin_states({"running": 3, "failed": 1})
    forget_plugin(name)                             # on unload: drop its series, free its label slot

The per-plugin sampled values (memory, cpu, threads, fds, connections) are not stored here: a
custom collector asks the resource monitor for its latest samples at scrape time, so
`plugind_plugin_cpu_seconds_total` is a real counter and an unloaded plugin simply disappears.

Label values are bounded so a plugin (or a caller of the hook API) cannot explode cardinality: at
most 64 hook names, 512 plugin names and 32 load-failure reasons get their own label value, the
rest are counted under `other`; outcomes, violation types and states are closed sets.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from plugind import __version__

# `*_created` series double the number of series per labelled counter for no use on a dashboard;
# this is a process-wide switch and the daemon is the only prometheus_client user in its process.
disable_created_metrics()

OTHER = "other"
MAX_HOOKS = 64
MAX_PLUGINS = 512
MAX_REASONS = 32

OUTCOMES = frozenset({"ok", "error", "timeout", "crashed"})
VIOLATION_TYPES = frozenset({"memory", "cpu", "threads", "fds", "connections", "oom_kill"})
STATES = ("starting", "running", "restarting", "stopping", "stopped", "failed")
_MAX_STATES = 16
# Hook names and reasons come from outside (plugins, the API): keep them short and printable.
_LABEL_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

# Hook latency: a call to a plugin takes 20-100 us on its own (bench/hooks.py), so the buckets start
# at 100 us; deadlines go to minutes. 15 buckets, as many as before they reached down that far.
HOOK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                5.0, 30.0)

REGISTRY = CollectorRegistry(auto_describe=True)

PLUGINS = Gauge("plugind_plugins", "Plugins by state.", ["state"], registry=REGISTRY)
VIOLATIONS = Counter(
    "plugind_plugin_violations_total",
    "Resource samples over a limit, by plugin and violation type.",
    ["plugin", "type"],
    registry=REGISTRY,
)
RESTARTS = Counter(
    "plugind_plugin_restarts_total",
    "Plugin process restarts by the supervisor.",
    ["plugin"],
    registry=REGISTRY,
)
HOOK_CALLS = Counter(
    "plugind_hook_calls_total",
    "Hook calls per plugin, by outcome (ok, error, timeout, crashed).",
    ["hook", "plugin", "outcome"],
    registry=REGISTRY,
)
HOOK_DURATION = Histogram(
    "plugind_hook_duration_seconds",
    "Time from sending a hook call to a plugin to its answer.",
    ["hook", "plugin"],
    buckets=HOOK_BUCKETS,
    registry=REGISTRY,
)
LOAD_FAILURES = Counter(
    "plugind_plugin_load_failures_total",
    "Plugin loads that failed, by reason.",
    ["reason"],
    registry=REGISTRY,
)
BUILD_INFO = Gauge(
    "plugind_build_info",
    "Always 1; the version label says which plugind runs.",
    ["version"],
    registry=REGISTRY,
)
BUILD_INFO.labels(version=__version__).set(1)
for _state in STATES:
    PLUGINS.labels(state=_state).set(0)


class LabelBudget:
    """Admits at most `limit` distinct label values; the rest map to `other`. Thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._admitted: set[str] = set()
        self._lock = threading.Lock()

    def admit(self, value: str) -> str:
        """The label to use for `value`: itself if it has (or gets) a slot, else `other`."""
        if not isinstance(value, str) or not _LABEL_RE.match(value) or value == OTHER:
            return OTHER
        with self._lock:
            if value in self._admitted:
                return value
            if len(self._admitted) >= self.limit:
                return OTHER
            self._admitted.add(value)
            return value

    def release(self, value: str) -> None:
        """Free the slot of `value` (no-op if it had none)."""
        with self._lock:
            self._admitted.discard(value)

    def __contains__(self, value: object) -> bool:
        with self._lock:
            return value in self._admitted

    def __len__(self) -> int:
        with self._lock:
            return len(self._admitted)


PLUGIN_LABELS = LabelBudget(MAX_PLUGINS)
HOOK_LABELS = LabelBudget(MAX_HOOKS)
REASON_LABELS = LabelBudget(MAX_REASONS)
_STATE_LABELS = LabelBudget(_MAX_STATES)
for _state in STATES:
    _STATE_LABELS.admit(_state)

# Which (labelled) plugins use which hook label, so a hook's slot is freed with its last plugin.
_hook_users: dict[str, set[str]] = {}
_hook_users_lock = threading.Lock()


def _hook_used(hook: str, plugin: str) -> None:
    if hook == OTHER:
        return
    with _hook_users_lock:
        _hook_users.setdefault(hook, set()).add(plugin)


# The series of one (hook, plugin), bound once: `.labels()` and the label budgets cost more than the
# inc and observe themselves on every hook call. Keyed by the names as given; an entry holds what
# admit() decided, which only changes when a slot is released (forget_plugin), which clears this.
_MAX_BOUND = 4096


class _HookSeries:
    """The children of HOOK_CALLS (made per outcome when first counted, as `.labels()` would) and
    HOOK_DURATION of one (hook, plugin)."""

    __slots__ = ("calls", "duration", "hook", "plugin")

    def __init__(self, hook: str, plugin: str) -> None:
        self.hook, self.plugin = hook, plugin
        self.calls: dict[str, Counter] = {}
        self.duration = HOOK_DURATION.labels(hook=hook, plugin=plugin)

    def count(self, outcome: str) -> None:
        child = self.calls.get(outcome)
        if child is None:
            child = self.calls[outcome] = HOOK_CALLS.labels(hook=self.hook, plugin=self.plugin,
                                                            outcome=outcome)
        child.inc()


_bound: dict[tuple[str, str], _HookSeries] = {}


def _bind(hook: str, plugin: str) -> _HookSeries:
    h = HOOK_LABELS.admit(hook)
    p = PLUGIN_LABELS.admit(plugin)
    _hook_used(h, p)
    if len(_bound) >= _MAX_BOUND:
        _bound.clear()
    series = _bound[(hook, plugin)] = _HookSeries(h, p)
    return series


def observe_hook(hook: str, plugin: str, outcome: str, seconds: float) -> None:
    """Count one hook call and record its latency. Unknown outcomes count as `error`."""
    series = _bound.get((hook, plugin)) or _bind(hook, plugin)
    series.count(outcome if outcome in OUTCOMES else "error")
    series.duration.observe(max(0.0, seconds))


def plugin_restarted(plugin: str) -> None:
    """Count one restart of `plugin`'s process."""
    RESTARTS.labels(plugin=PLUGIN_LABELS.admit(plugin)).inc()


def load_failed(reason: str) -> None:
    """Count one failed load; `reason` is a short label such as LoadError.reason (`untrusted`, ...)."""
    LOAD_FAILURES.labels(reason=REASON_LABELS.admit(reason)).inc()


def violation(plugin: str, type: str) -> None:
    """Count one violating sample of `type` (memory, cpu, threads, fds, connections, oom_kill)."""
    kind = type if type in VIOLATION_TYPES else OTHER
    VIOLATIONS.labels(plugin=PLUGIN_LABELS.admit(plugin), type=kind).inc()


def set_plugin_states(counts: Mapping[str, int]) -> None:
    """Set `plugind_plugins{state}` from a full count by state; states not given are set to 0."""
    totals: dict[str, int] = dict.fromkeys(STATES, 0)
    for state, count in counts.items():
        label = _STATE_LABELS.admit(state)
        totals[label] = totals.get(label, 0) + count
    for label, total in totals.items():
        PLUGINS.labels(state=label).set(total)


def forget_plugin(plugin: str) -> None:
    """Drop every series labelled with `plugin` and free its label slot (call on unload)."""
    _bound.clear()  # bound series of this plugin go now, and an `other` may now get a slot
    if plugin not in PLUGIN_LABELS:
        return
    for metric in (VIOLATIONS, RESTARTS, HOOK_CALLS, HOOK_DURATION):
        metric.remove_by_labels({"plugin": plugin})
    PLUGIN_LABELS.release(plugin)
    with _hook_users_lock:
        for hook in list(_hook_users):
            users = _hook_users[hook]
            users.discard(plugin)
            if not users:
                del _hook_users[hook]
                HOOK_LABELS.release(hook)


@dataclass(frozen=True)
class PluginSample:
    """The latest sampled values of one plugin, as the resource monitor exports them."""

    memory_bytes: int
    cpu_seconds: float
    threads: int
    fds: int
    connections: int


SampleSource = Callable[[], Mapping[str, PluginSample]]


class _SampleCollector(Collector):
    """Exports the resource monitor's latest samples at scrape time."""

    def __init__(self) -> None:
        self.source: SampleSource | None = None

    def describe(self) -> Iterable[Metric]:
        return [] if self.source is None else list(self._families({}))

    def collect(self) -> Iterable[Metric]:
        source = self.source
        return self._families(source() if source is not None else {})

    def _families(self, samples: Mapping[str, PluginSample]) -> Iterator[Metric]:
        by_plugin = ["plugin"]
        mem = GaugeMetricFamily(
            "plugind_plugin_memory_bytes", "Memory in use by the plugin.", labels=by_plugin
        )
        cpu = CounterMetricFamily(
            "plugind_plugin_cpu_seconds_total",
            "CPU time used by the plugin (user + system).",
            labels=by_plugin,
        )
        threads = GaugeMetricFamily(
            "plugind_plugin_threads", "Threads of the plugin.", labels=by_plugin
        )
        fds = GaugeMetricFamily(
            "plugind_plugin_open_fds", "Open file descriptors of the plugin.", labels=by_plugin
        )
        conns = GaugeMetricFamily(
            "plugind_plugin_connections", "Open network connections of the plugin.", labels=by_plugin
        )
        # Plugins beyond the label budget are summed under `other` so totals stay right.
        merged: dict[str, list[float]] = {}
        for name, s in samples.items():
            label = PLUGIN_LABELS.admit(name)
            acc = merged.setdefault(label, [0, 0.0, 0, 0, 0])
            acc[0] += s.memory_bytes
            acc[1] += s.cpu_seconds
            acc[2] += s.threads
            acc[3] += s.fds
            acc[4] += s.connections
        for label, (m, c, t, f, n) in merged.items():
            mem.add_metric([label], m)
            cpu.add_metric([label], c)
            threads.add_metric([label], t)
            fds.add_metric([label], f)
            conns.add_metric([label], n)
        yield from (mem, cpu, threads, fds, conns)


# -- the HTTP edge and the monitor's own health (plugind.api.edge, plugind.monitor.resource) -------
HTTP_CONNECTIONS = Gauge("plugind_http_connections", "Open connections on the API listeners.",
                         registry=REGISTRY)
HTTP_REFUSED = Counter("plugind_http_connections_refused_total",
                       "API connections refused at accept, by cap.", ["reason"], registry=REGISTRY)
HTTP_TIMED_OUT = Counter("plugind_http_connections_timed_out_total",
                         "API connections closed for a slow request head or body.", ["reason"],
                         registry=REGISTRY)
MONITOR_SWEEPS = Counter("plugind_monitor_sweeps_total", "Resource monitor sweeps done.", registry=REGISTRY)
MONITOR_SAMPLE_ERRORS = Counter("plugind_monitor_sample_errors_total",
                                "Plugin samples the monitor could not take (e.g. out of fds).",
                                registry=REGISTRY)


def http_connections(count: int) -> None:
    HTTP_CONNECTIONS.set(count)


def http_connection_refused(reason: str) -> None:
    """reason: max_connections | max_connections_per_client."""
    HTTP_REFUSED.labels(reason).inc()


def http_connection_timed_out(reason: str) -> None:
    """reason: header_timeout | body_timeout."""
    HTTP_TIMED_OUT.labels(reason).inc()


def monitor_swept(errors: int) -> None:
    MONITOR_SWEEPS.inc()
    if errors:
        MONITOR_SAMPLE_ERRORS.inc(errors)


_SAMPLES = _SampleCollector()
REGISTRY.register(_SAMPLES)


def set_sample_source(source: SampleSource | None) -> None:
    """Install the callable that returns the latest per-plugin samples (the resource monitor's)."""
    _SAMPLES.source = source


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition of every plugind metric, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


__all__ = [
    "HOOK_LABELS",
    "MAX_HOOKS",
    "MAX_PLUGINS",
    "OTHER",
    "PLUGIN_LABELS",
    "REGISTRY",
    "LabelBudget",
    "PluginSample",
    "forget_plugin",
    "http_connection_refused",
    "http_connection_timed_out",
    "http_connections",
    "load_failed",
    "monitor_swept",
    "observe_hook",
    "plugin_restarted",
    "render",
    "set_plugin_states",
    "set_sample_source",
    "violation",
]
