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
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate, chain
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import metrics as _pc_metrics
from prometheus_client import values as _pc_values
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import UNDERSCORES, escape_label_name, escape_metric_name
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from plugind import __version__

# `*_created` series double the number of series per labelled counter for no use on a dashboard;
# this is a process-wide switch and the daemon is the only prometheus_client user in its process.
disable_created_metrics()

OTHER = "other"
MAX_HOOKS = 64
MAX_PLUGINS = 512
MAX_REASONS = 32

OUTCOMES = frozenset({"ok", "error", "timeout", "crashed"})
VIOLATION_TYPES = frozenset({"memory", "cpu", "threads", "fds", "connections", "oom_kill", "budget"})
STATES = ("starting", "running", "restarting", "stopping", "stopped", "failed")
_MAX_STATES = 16
# Hook names and reasons come from outside (plugins, the API): keep them short and printable.
_LABEL_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

# Hook latency: a call to a plugin takes 20-100 us on its own (bench/hooks.py), so the buckets start
# at 100 us; deadlines go to minutes. 15 buckets, as many as before they reached down that far.
HOOK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                5.0, 30.0)

REGISTRY = CollectorRegistry(auto_describe=True)


class _PendingFlush(Collector):
    """Registered first: every reader of REGISTRY (render, generate_latest, get_sample_value)
    reaches it before the hook series, and it applies the observations observe_ok deferred."""

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        flush_observations()
        return []

    def render_text(self, out: list[str], floats: _GoFloats) -> None:
        flush_observations()


REGISTRY.register(_PendingFlush())

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
        if not isinstance(value, str):
            return OTHER
        if value in self._admitted:  # the common case; admitted values passed the checks below
            return value
        if not _LABEL_RE.match(value) or value == OTHER:
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
    HOOK_DURATION of one (hook, plugin).

    `observe` is the per-call path: with prometheus_client's in-process values (MutexValue) it adds
    to the very values `.inc()` and `.observe()` would, without their per-call checks and the linear
    bucket scan, under one lock for all three (the only writer of these values: about 2 us less per
    hook call in all); with any other value class (multiprocess mode) it goes through the public
    methods.
    """

    __slots__ = ("_bounds", "_buckets", "_counts", "_direct", "_ok", "_sum", "calls", "duration", "hook",
                 "plugin")

    def __init__(self, hook: str, plugin: str) -> None:
        self.hook, self.plugin = hook, plugin
        self.calls: dict[str, Counter] = {}
        self.duration = HOOK_DURATION.labels(hook=hook, plugin=plugin)
        self._counts: dict[str, Any] = {}  # outcome -> the counter child's MutexValue
        self._direct = _pc_values.ValueClass is _pc_values.MutexValue
        self._ok: Any = None  # the `ok` counter child's MutexValue, once `ok` has been counted
        if self._direct:
            self._bounds = tuple(self.duration._upper_bounds)  # ends with +Inf
            self._buckets = tuple(self.duration._buckets)
            self._sum = self.duration._sum

    def _child(self, outcome: str) -> Counter:
        child = self.calls.get(outcome)
        if child is None:
            child = self.calls[outcome] = HOOK_CALLS.labels(hook=self.hook, plugin=self.plugin,
                                                            outcome=outcome)
        return child

    def count(self, outcome: str) -> None:
        self._child(outcome).inc()

    def observe(self, outcome: str, seconds: float) -> None:
        """Count one call with `outcome` and record `seconds` (>= 0) in the histogram."""
        if not self._direct:
            self.count(outcome)
            self.duration.observe(seconds)
            return
        value = self._counts.get(outcome)
        if value is None:
            value = self._counts[outcome] = self._child(outcome)._value
        self._add(value, seconds)

    def ok(self, seconds: float) -> None:
        """`observe("ok", seconds)` (the outcome of most calls), its counter value looked up once."""
        value = self._ok
        if value is None:
            if not self._direct:
                self.observe("ok", seconds)
                return
            value = self._ok = self._counts.get("ok") or self._child("ok")._value
            self._counts["ok"] = value
        self._add(value, seconds)

    def _add(self, value: Any, seconds: float) -> None:
        # One call counted in `value` (an outcome's counter value) and `seconds` in the histogram.
        # The first bound >= seconds: the bucket Histogram.observe's scan would pick. Most calls
        # fall in the first (100 us): one comparison, no search.
        bounds = self._bounds
        bucket = self._buckets[0 if seconds <= bounds[0] else bisect_left(bounds, seconds)]
        total = self._sum
        # One lock for the three values: every writer of the hook series' values comes through here
        # (the renderer reads them without a lock, as MutexValue.get's own read would see them).
        # acquire/release bound once: a `with` block on a lock costs about twice as much.
        _observe_acquire()
        try:
            value._value += 1
            bucket._value += 1
            total._value += seconds
        finally:
            _observe_release()


_observe_lock = threading.Lock()
_observe_acquire, _observe_release = _observe_lock.acquire, _observe_lock.release
_bound: dict[tuple[str, str], _HookSeries] = {}


def _bind(hook: str, plugin: str) -> _HookSeries:
    h = HOOK_LABELS.admit(hook)
    p = PLUGIN_LABELS.admit(plugin)
    _hook_used(h, p)
    if len(_bound) >= _MAX_BOUND:
        _bound.clear()
    series = _bound[(hook, plugin)] = _HookSeries(h, p)
    return series


# How many hook labels not yet in use one plugin's load may take ahead of any call (its other hooks
# get theirs at their first call): the MAX_HOOKS slots are shared by every plugin, and a plugin
# declaring 64 hooks at its load left every later plugin's hooks counted under `other`.
BIND_SHARE = 8


def bind_hooks(plugin: str, hooks: Iterable[str]) -> None:
    """Make the series of `plugin`'s `hooks` now (a load does, on the loop's turn after it returns),
    so that its first call only adds to them: they appear with zero counts until then. Hooks whose
    label is new take a slot only for the first BIND_SHARE of them; the rest wait for a call."""
    new = 0
    for hook in hooks:
        if (hook, plugin) in _bound:
            continue
        if hook not in HOOK_LABELS:
            if new >= BIND_SHARE:
                continue
            new += 1
        _bind(hook, plugin)


def observe_hook(hook: str, plugin: str, outcome: str, seconds: float) -> None:
    """Count one hook call and record its latency. Unknown outcomes count as `error`."""
    series = _bound.get((hook, plugin))
    if series is None:
        if plugin in _gone:
            return  # unloaded while the call was on its way
        series = _bind(hook, plugin)
    series.observe(outcome if outcome in OUTCOMES else "error", seconds if seconds > 0.0 else 0.0)


# Answered hook calls not yet counted: (hook, plugin, seconds). observe_ok only appends here; the
# series are written by flush_observations, which every reader of the registry runs first (see
# _PendingFlush), a supervisor runs while its next call is in the plugin (off the caller's path),
# and observe_ok itself runs once this many are waiting. A deque: its append and popleft are atomic,
# so the thread that renders can flush while the event loop appends.
_pending: deque[tuple[str, str, float]] = deque()
_pending_append = _pending.append
_pending_popleft = _pending.popleft
_FLUSH_AT = 256
# Held while observations are applied and while a plugin's series are dropped, so that an
# observation taken by one thread's flush is never applied after another dropped its series.
_flush_lock = threading.Lock()


def observe_ok(hook: str, plugin: str, seconds: float) -> None:
    """`observe_hook(hook, plugin, "ok", seconds)`, the hook path's call for a handler that answered:
    recorded now, written to the series at the next flush_observations (before any read)."""
    _pending_append((hook, plugin, seconds))
    if len(_pending) >= _FLUSH_AT:
        flush_observations()


def pending_observations() -> int:
    """How many observe_ok calls are not yet written to the series."""
    return len(_pending)


def flush_observations() -> None:
    """Write every pending observe_ok to its series (`_HookSeries.ok`: the `ok` counter and the
    histogram). Cheap when none is pending; safe from any thread."""
    if not _pending:
        return
    with _flush_lock:
        _apply_pending()


def _apply_pending() -> None:
    # (with _flush_lock held)
    bound = _bound
    while True:
        try:
            hook, plugin, seconds = _pending_popleft()
        except IndexError:
            return
        series = bound.get((hook, plugin))
        if series is None:
            if plugin in _gone:
                continue
            series = _bind(hook, plugin)
        series.ok(seconds if seconds > 0.0 else 0.0)


def plugin_restarted(plugin: str) -> None:
    """Count one restart of `plugin`'s process."""
    RESTARTS.labels(plugin=PLUGIN_LABELS.admit(plugin)).inc()


def load_failed(reason: str) -> None:
    """Count one failed load; `reason` is a short label such as LoadError.reason (`untrusted`, ...)."""
    LOAD_FAILURES.labels(reason=REASON_LABELS.admit(reason)).inc()


def violation(plugin: str, type: str) -> None:
    """Count one violating sample of `type` (memory, cpu, threads, fds, connections, oom_kill,
    budget)."""
    kind = type if type in VIOLATION_TYPES else OTHER
    VIOLATIONS.labels(plugin=PLUGIN_LABELS.admit(plugin), type=kind).inc()


# Every state label plugind_plugins has had (replaced, never changed: the thread that renders sets
# the states too).
_states_shown: tuple[str, ...] = STATES


def set_plugin_states(counts: Mapping[str, int]) -> None:
    """Set `plugind_plugins{state}` from a full count by state; states not given are set to 0 (also
    `other` and any state of an earlier count)."""
    global _states_shown
    totals: dict[str, int] = dict.fromkeys(_states_shown, 0)
    for state, count in counts.items():
        label = _STATE_LABELS.admit(state)
        totals[label] = totals.get(label, 0) + count
    for label, total in totals.items():
        PLUGINS.labels(state=label).set(total)
    if len(totals) > len(_states_shown):
        _states_shown = tuple(totals)


StateSource = Callable[[], Mapping[str, int]]
_state_source: list[StateSource] = []  # the running registry's count by state (at most one)


def set_state_source(source: StateSource | None) -> None:
    """Install (None: remove) the callable that counts plugins by state: `render` then sets
    `plugind_plugins{state}` from it, exact at every scrape, and a load or unload needs no count
    over every plugin (twice per change, ~1 ms at 1,000 plugins). It runs in the thread that
    renders: it must only read."""
    _state_source[:] = [source] if source is not None else []


# Plugins forgotten (unloaded) and not loaded again: a call that had picked its handlers before the
# unload, ending after it, would otherwise make their series again, for good.
_gone: set[str] = set()


def plugin_back(plugin: str) -> None:
    """`plugin` is loaded (again): its calls are counted (the registry calls this before any call can
    reach it)."""
    _gone.discard(plugin)


def forget_plugin(plugin: str) -> None:
    """Drop every series labelled with `plugin` and free its label slot (call on unload); until
    `plugin_back`, what is observed of it is not counted."""
    with _flush_lock:
        _apply_pending()  # (its calls answered before now go with its series)
        _gone.add(plugin)
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
        self._prefixes: dict[str, tuple[str, ...]] = {}  # plugin label -> `name{plugin="..."} ` per family

    def describe(self) -> Iterable[Metric]:
        return [] if self.source is None else list(self._families({}))

    def collect(self) -> Iterable[Metric]:
        source = self.source
        return self._families(source() if source is not None else {})

    @staticmethod
    def _merged(samples: Mapping[str, PluginSample]) -> dict[str, list[float]]:
        # Plugins beyond the label budget are summed under `other` so totals stay right. Every
        # value is a sum starting at +0, so never -0.0 (which _GoFloats relies on).
        merged: dict[str, list[float]] = {}
        for name, s in samples.items():
            label = PLUGIN_LABELS.admit(name)
            acc = merged.setdefault(label, [0, 0.0, 0, 0, 0])
            acc[0] += s.memory_bytes
            acc[1] += s.cpu_seconds
            acc[2] += s.threads
            acc[3] += s.fds
            acc[4] += s.connections
        return merged

    def _families(self, samples: Mapping[str, PluginSample]) -> Iterator[Metric]:
        by_plugin = ["plugin"]
        made = [
            (GaugeMetricFamily if kind == "gauge" else CounterMetricFamily)(name, doc, labels=by_plugin)
            for name, doc, kind in _SAMPLE_FAMILIES
        ]
        for label, values in self._merged(samples).items():
            for family, value in zip(made, values, strict=True):
                family.add_metric([label], value)
        yield from made

    def render_text(self, out: list[str], floats: _GoFloats) -> None:
        """Append this collector's exposition text to `out`, as generate_latest would write it."""
        source = self.source
        merged = self._merged(source() if source is not None else {})
        cache = self._prefixes
        if len(cache) > 2 * len(merged) + 64:  # plugins come and go: keep only the current ones
            self._prefixes = cache = {k: cache[k] for k in merged if k in cache}
        rows = []
        for label, values in merged.items():
            prefixes = cache.get(label)
            if prefixes is None:
                part = _label_part([("plugin", label)])
                prefixes = cache[label] = tuple(f"{sample}{part} " for sample in _SAMPLE_NAMES)
            rows.append((prefixes, values))
        append = out.append
        for i, header in enumerate(_SAMPLE_HEADERS):
            append(header)
            for prefixes, values in rows:
                append(prefixes[i])
                append(floats[values[i]])


# (name, help, type) of the sampled families, in the order they are exported.
_SAMPLE_FAMILIES = (
    ("plugind_plugin_memory_bytes", "Memory in use by the plugin.", "gauge"),
    ("plugind_plugin_cpu_seconds_total", "CPU time used by the plugin (user + system).", "counter"),
    ("plugind_plugin_threads", "Threads of the plugin.", "gauge"),
    ("plugind_plugin_open_fds", "Open file descriptors of the plugin.", "gauge"),
    ("plugind_plugin_connections", "Open network connections of the plugin.", "gauge"),
)


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

# -- the exposition text ------------------------------------------------------------------------
# generate_latest() formats every sample afresh: a Sample tuple and a labels dict per line, the label
# names checked and sorted, the values escaped, the float formatted; 1 s at 1,000 plugins (issue 10).
# The metric objects stay the source of truth (exact, thread-safe); _TextRenderer reads their
# children directly and writes the same text, with the part of each line before the value
# (`name{labels} `, escaped once) cached per child and the formatted values memoised.


@lru_cache(maxsize=256)
def _label_name(name: str) -> str:
    return escape_label_name(name, UNDERSCORES)


@lru_cache(maxsize=64)
def _le_values(bounds: tuple[float, ...]) -> tuple[str, ...]:
    """The `le` label value of each bucket bound, as prometheus_client writes it."""
    return tuple(floatToGoString(b) for b in bounds)


def _label(name: str, value: str) -> str:
    """`name="value"` as generate_latest writes a label (the value escaped)."""
    value = value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')
    return f'{_label_name(name)}="{value}"'


def _label_part(pairs: Iterable[tuple[str, str]]) -> str:
    """`{a="x",b="y"}` as generate_latest writes it (sorted by name, values escaped), or ``."""
    items = sorted(pairs)
    return "{" + ",".join(_label(k, v) for k, v in items) + "}" if items else ""


def _header(name: str, documentation: str, kind: str) -> str:
    """The HELP and TYPE lines of a family, as generate_latest writes them for text format 0.0.4."""
    if kind == "counter":
        name += "_total"
    elif kind == "unknown":
        kind = "untyped"
    name = escape_metric_name(name, UNDERSCORES)
    doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


class _GoFloats(dict[float, str]):
    """floatToGoString(v) + newline, memoised. Only for values that cannot be -0.0 (it equals 0.0 as
    a key): counts and sums, which start at +0 and only add (IEEE sums of +0 and anything are never
    -0). Gauges, which can be set to -0.0, go through floatToGoString directly."""

    LIMIT = 1 << 16

    def __missing__(self, value: float) -> str:
        text = floatToGoString(value) + "\n"
        if len(self) >= self.LIMIT:
            self.clear()
        if value == value:  # NaN never matches itself: no point storing it
            self[value] = text
        return text


def _go(value: float) -> str:
    return floatToGoString(value) + "\n"


_SAMPLE_NAMES = tuple(name for name, _, _ in _SAMPLE_FAMILIES)
_SAMPLE_HEADERS = tuple(
    _header(name.removesuffix("_total") if kind == "counter" else name, doc, kind)
    for name, doc, kind in _SAMPLE_FAMILIES
)

_FAST_TYPES = (Counter, Gauge, Histogram)


class _SingleCollector(Collector):
    """One collector of a registry, on its own (for generate_latest)."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def collect(self) -> Iterable[Metric]:
        return self.collector.collect()


class _TextRenderer:
    """Writes the text format 0.0.4 of a registry, the same text as generate_latest(registry).

    Counters, gauges and histograms of prometheus_client (plain, in-process values, no `_created`)
    are read child by child; a collector with `render_text(out, floats)` writes its own lines; any
    other collector goes through generate_latest. Reads prometheus_client internals (`_metrics`,
    `_lock`, `_value`, `_buckets`, `_sum`, `_upper_bounds`, the registry's collector list) of the
    pinned version; tests/monitor/test_metrics.py checks the output against generate_latest.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.floats = _GoFloats()
        # metric -> its header and {label values -> the text before the value of each sample line}
        self._headers: dict[object, str] = {}
        self._prefixes: dict[object, dict[tuple[str, ...], tuple[str, ...]]] = {}

    def _usable(self) -> bool:
        return (
            not _pc_metrics._use_created
            and _pc_values.ValueClass is _pc_values.MutexValue
            and not self.registry._target_info
        )

    def render(self) -> bytes:
        """The exposition text of the registry (generate_latest's output, faster)."""
        if not self._usable():
            return generate_latest(self.registry)
        with self.registry._lock:
            collectors = list(self.registry._collector_to_names)
        out: list[str] = []
        for collector in collectors:
            render_text = getattr(collector, "render_text", None)
            if isinstance(collector, _FAST_TYPES) and type(collector) in _FAST_TYPES:  # no subclass
                self._metric(collector, out)
            elif render_text is not None:
                render_text(out, self.floats)
            else:
                out.append(generate_latest(_SingleCollector(collector)).decode())
        return "".join(out).encode()

    def _metric(self, metric: Counter | Gauge | Histogram, out: list[str]) -> None:
        header = self._headers.get(metric)
        if header is None:
            header = self._headers[metric] = _header(metric._name, metric._documentation, metric._type)
        out.append(header)
        # (label values, child): Any, as prometheus_client types its children loosely
        children: list[tuple[tuple[str, ...], Any]]
        if metric._is_parent():
            with metric._lock:
                children = [(tuple(lv), child) for lv, child in metric._metrics.items()]
        else:
            children = [((), metric)]
        cache = self._prefixes.get(metric)
        if cache is None or len(cache) > 2 * len(children) + 64:  # forget removed children
            old = cache or {}
            cache = self._prefixes[metric] = {lv: old[lv] for lv, _ in children if lv in old}
        names = metric._labelnames
        append, extend = out.append, out.extend
        floats = self.floats
        fmt = floats.__getitem__
        if isinstance(metric, Histogram):
            for labelvalues, child in children:
                prefixes = cache.get(labelvalues)
                if prefixes is None:
                    prefixes = cache[labelvalues] = self._histogram_prefixes(metric._name, names,
                                                                             labelvalues, child)
                # `_value` read as MutexValue.get() reads it, without its lock: the read of one
                # attribute is atomic anyway, and generate_latest takes no snapshot across buckets.
                # accumulate() adds in generate_latest's order (0.0 + b0 == b0: never -0.0).
                counts = list(accumulate([bucket._value for bucket in child._buckets]))
                extend(chain.from_iterable(zip(prefixes, map(fmt, counts), strict=False)))
                n = len(counts)
                append(prefixes[n])  # _count
                append(fmt(counts[-1]))
                if len(prefixes) > n + 1:  # _sum, unless a bucket bound is negative
                    append(prefixes[n + 1])
                    append(fmt(child._sum._value))
            return
        if not isinstance(metric, Counter):
            fmt = _go
        sample = metric._name + "_total" if isinstance(metric, Counter) else metric._name
        for labelvalues, child in children:
            prefixes = cache.get(labelvalues)
            if prefixes is None:
                part = _label_part(zip(names, labelvalues, strict=True))
                prefixes = cache[labelvalues] = (f"{escape_metric_name(sample, UNDERSCORES)}{part} ",)
            append(prefixes[0])
            append(fmt(child._value._value))  # MutexValue.get() without its lock, as above

    @staticmethod
    def _histogram_prefixes(name: str, names: Sequence[str], labelvalues: tuple[str, ...],
                            child: Any) -> tuple[str, ...]:
        pairs = list(zip(names, labelvalues, strict=True))
        bucket = escape_metric_name(name + "_bucket", UNDERSCORES)
        # `le` sorts among the other labels at the same place on every bucket line
        items = sorted([*pairs, ("le", "")])
        at = items.index(("le", ""))
        before = "".join(_label(k, v) + "," for k, v in items[:at])
        after = "".join("," + _label(k, v) for k, v in items[at + 1:])
        prefixes = [f'{bucket}{{{before}le="{le}"{after}}} ' for le in _le_values(tuple(child._upper_bounds))]
        part = _label_part(pairs)
        prefixes.append(f"{escape_metric_name(name + '_count', UNDERSCORES)}{part} ")
        if child._upper_bounds[0] >= 0:
            prefixes.append(f"{escape_metric_name(name + '_sum', UNDERSCORES)}{part} ")
        return tuple(prefixes)


_RENDERER = _TextRenderer(REGISTRY)


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition of every plugind metric, and its content type."""
    for source in list(_state_source):
        set_plugin_states(source())
    return _RENDERER.render(), CONTENT_TYPE_LATEST


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
    "observe_ok",
    "plugin_back",
    "plugin_restarted",
    "render",
    "set_plugin_states",
    "set_sample_source",
    "set_state_source",
    "violation",
]
