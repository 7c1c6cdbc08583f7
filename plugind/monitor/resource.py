"""ResourceMonitor: samples every loaded plugin each interval, off the event loop, and acts on violations.

One sweep per interval samples all plugins in the monitor's own thread; the verdicts are handled
back on the event loop: a metric and a log line per violating sample, an audit entry when a streak
starts (or its kinds change), and after `violation_threshold` CONSECUTIVE violating sweeps the
registry's `unload(name, reason)` coroutine when auto-unmount is on for that plugin.

    monitor = ResourceMonitor(settings, source, unload, audit=audit_log)
    monitor.start_resource_monitor()        # inside the running loop
    monitor.check_plugin_resources("hello") # -> [HeapMemory(used=..., limit=...), ...]
    await monitor.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from plugind.config import Settings
from plugind.errors import NotLoaded
from plugind.monitor import metrics
from plugind.monitor.sampling import MonitoredPlugin, Sample, sample_plugin
from plugind.monitor.violations import Budget, OomKill, ResourceLimits, Usage, Violation, evaluate

log = logging.getLogger("plugind.monitor")

RECENT_VIOLATIONS = 20  # kept per plugin for GET /api/plugins/{name}
_REMEMBERED_PLUGINS = 1024  # bound on plugins whose recent violations outlive their unload

Source = Callable[[], Iterable[MonitoredPlugin]]
Unload = Callable[[str, str], Awaitable[Any]]


class AuditSink(Protocol):
    """What the monitor needs of `plugind.audit.AuditLog`."""

    def append(self, event: str, /, plugin: str | None = None, **fields: Any) -> Any: ...


@dataclass(frozen=True)
class UnmountBehavior:
    """Per-plugin reaction to violations."""

    auto_unmount: bool = True
    log_violations: bool = True


@dataclass(frozen=True)
class PluginMetrics:
    """What GET /api/plugins/{name}/metrics returns."""

    heap_bytes: int
    cpu_time_ms: int
    thread_count: int
    fd_count: int
    connection_count: int
    violation_count: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class ResourceCheck:
    """The result of one check on demand: the limits a fresh sample is over, and its metrics."""

    plugin: str
    violations: list[Violation]
    metrics: PluginMetrics

    def as_dict(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin,
            "violations": [v.as_dict() for v in self.violations],
            "metrics": self.metrics.as_dict(),
        }


@dataclass
class _State:
    """The monitor's memory of one loaded plugin."""

    pid: int
    streak: int = 0
    streak_types: frozenset[str] = frozenset()
    violation_count: int = 0
    last: Sample | None = None
    unloading: bool = False
    # One OOM kill of this incarnation can reach us twice: a sweep that reads the group's counter
    # before the group goes, and the supervisor's exit report. Each source's count that the other
    # has not yet matched, so the kill is reported once, whichever comes first.
    ooms_from_sweeps: int = 0
    ooms_from_events: int = 0


class ResourceMonitor:
    """Samples loaded plugins, reports violations, unloads repeat offenders. See the module docstring."""

    def __init__(
        self,
        settings: Settings,
        source: Source,
        unload: Unload,
        *,
        audit: AuditSink | None = None,
    ) -> None:
        self.settings = settings
        self._source = source
        self._unload = unload
        self._audit = audit
        self._states: dict[str, _State] = {}
        self._samples: Mapping[str, Sample] = {}
        self._behavior: dict[str, UnmountBehavior] = {}
        self._recent: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._unload_tasks: set[asyncio.Task[Any]] = set()
        self.interval = settings.monitoring.check_interval_secs
        self.last_sweep_seconds = 0.0
        self._spare = SpareFds()

    # -- configuration -------------------------------------------------------------------------

    def set_unmount_behavior(self, name: str, behavior: UnmountBehavior) -> None:
        """How to react to `name`'s violations from now on (until the daemon stops).

        It wins over `[plugin.NAME] auto_unmount, log_violations`, which win over `[monitoring]`'s.
        """
        self._behavior[name] = behavior

    def unmount_behavior(self, name: str) -> UnmountBehavior:
        """The behaviour in force for `name`: set at run time, else `[plugin.NAME]`, else `[monitoring]`."""
        set_now = self._behavior.get(name)
        if set_now is not None:
            return set_now
        mon = self.settings.monitoring
        override = self.settings.plugin.get(name)
        auto = override.auto_unmount if override is not None else None
        logged = override.log_violations if override is not None else None
        return UnmountBehavior(
            mon.auto_unmount if auto is None else auto,
            mon.log_violations if logged is None else logged,
        )

    def limits_for(self, plugin: MonitoredPlugin) -> ResourceLimits:
        return plugin.limits or ResourceLimits.from_settings(self.settings, plugin.name)

    # -- lifecycle -----------------------------------------------------------------------------

    def start_resource_monitor(self, interval: float | None = None) -> asyncio.Task[None]:
        """Start sweeping every `interval` seconds (default `check_interval_secs`); needs a running loop.

        Raises RuntimeError when already started or when called outside a running event loop.
        """
        if self._task is not None and not self._task.done():
            raise RuntimeError("the resource monitor is already running")
        if interval is not None:
            if interval <= 0:
                raise ValueError(f"monitor interval must be positive, got {interval}")
            self.interval = interval
        self._stopping = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="plugind-monitor")
        metrics.set_sample_source(self.exported_samples)
        return self._task

    @property
    def running(self) -> bool:
        """True between `start_resource_monitor` and `stop`."""
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Stop sweeping and wait for the sweep in progress and any auto-unload it started."""
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._unload_tasks:
            await asyncio.gather(*self._unload_tasks, return_exceptions=True)
        if self._executor is not None:
            executor, self._executor = self._executor, None
            # Pending audit lines are written before we return; waiting for them must not block the loop.
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)
        metrics.set_sample_source(None)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                await self.sweep()
            except Exception:  # a bug in one sweep must not end monitoring for good
                log.exception("resource monitor sweep failed")
            spent = time.monotonic() - started
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self.interval - spent)):
                    await self._stopping.wait()

    # -- sweeping ------------------------------------------------------------------------------

    def sample_all(self, plugins: Iterable[MonitoredPlugin]) -> dict[str, Sample]:
        """Sample every plugin (blocking; the monitor runs it in its own thread).

        A sample that fails for want of an fd (EMFILE) is taken again with the monitor's spare fds
        released for it: the monitor keeps sampling when the process is at its fd limit.
        """
        out: dict[str, Sample] = {}
        errors = 0
        for plugin in plugins:
            try:
                try:
                    sample = sample_plugin(plugin)
                except OSError as exc:
                    if exc.errno not in (errno.EMFILE, errno.ENFILE):
                        raise
                    with self._spare.released():
                        sample = sample_plugin(plugin)
            except Exception:  # one odd process must not hide the others
                errors += 1
                log.exception("sampling failed", extra={"plugin": plugin.name})
                continue
            if sample is not None:
                out[plugin.name] = sample
        metrics.monitor_swept(errors)
        return out

    async def sweep(self) -> dict[str, list[Violation]]:
        """One sweep now: sample all loaded plugins off the loop, then judge and react on it."""
        plugins = list(self._source())
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plugind-monitor")
        started = time.perf_counter()
        samples = await asyncio.get_running_loop().run_in_executor(self._executor, self.sample_all, plugins)
        self.last_sweep_seconds = time.perf_counter() - started
        verdicts: dict[str, list[Violation]] = {}
        # Loaded now, after the sampling: a plugin unloaded (or unloaded and loaded again) meanwhile
        # is not judged on its old process's sample (which unloaded the fresh one, or counted a
        # violation for a plugin whose series were gone).
        live = {p.name: p.pid for p in self._source()}
        for name in list(self._states):
            if name not in live:
                del self._states[name]  # unloaded: its streak and counters go with it
        for plugin in plugins:
            sample = samples.get(plugin.name)
            if sample is None:
                continue  # the process vanished; the supervisor reports that, not us
            if live.get(plugin.name) != plugin.pid:
                continue  # not the process sampled any more
            verdicts[plugin.name] = self._judge(plugin, sample, count=True)
        self._samples = {n: samples[n] for n in samples if n in self._states}
        return verdicts

    def _judge(self, plugin: MonitoredPlugin, sample: Sample, *, count: bool) -> list[Violation]:
        state = self._states.get(plugin.name)
        if state is None or state.pid != plugin.pid:  # new, or restarted under a new pid
            state = _State(pid=plugin.pid)
            if count:
                self._states[plugin.name] = state
        previous = state.last
        cpu_ms = new_ooms = None
        if previous is not None and sample.taken_at > previous.taken_at:
            elapsed = sample.taken_at - previous.taken_at
            delta_ms = max(0.0, sample.cpu_seconds - previous.cpu_seconds) * 1000
            # The limit is "ms per check interval": scale a shorter or longer gap to one interval.
            cpu_ms = int(delta_ms * self.interval / elapsed)
            new_ooms = max(0, sample.oom_kills - previous.oom_kills)
        elif previous is None:
            new_ooms = sample.oom_kills
        if new_ooms and count:
            matched = min(new_ooms, state.ooms_from_events)  # the supervisor reported these already
            state.ooms_from_events -= matched
            new_ooms -= matched
            state.ooms_from_sweeps += new_ooms
        usage = Usage(sample.memory_bytes, sample.threads, sample.fds, sample.connections)
        found = evaluate(
            usage, self.limits_for(plugin), cpu_ms_per_interval=cpu_ms, new_oom_kills=new_ooms or 0
        )
        if not count:
            return found
        state.last = sample
        if found:
            self._on_violations(plugin.name, state, found)
        else:
            state.streak, state.streak_types = 0, frozenset()
        return found

    def _on_violations(self, name: str, state: _State, found: list[Violation]) -> None:
        behavior = self.unmount_behavior(name)
        threshold = self.settings.monitoring.violation_threshold
        kinds = frozenset(v.type for v in found)
        state.streak += 1
        state.violation_count += len(found)
        recent = self._recent_for(name)
        now = time.time()
        for v in found:
            metrics.violation(name, v.type)
            recent.append({"time": now, **v.as_dict()})
        summary = "; ".join(v.describe() for v in found)
        details = [v.as_dict() for v in found]
        if behavior.log_violations:
            log.warning(
                "resource limit exceeded (%d of %d in a row): %s",
                state.streak,
                threshold,
                summary,
                extra={"plugin": name, "violations": [v.type for v in found], "streak": state.streak},
            )
        # The trail gets the start of a streak and any change of its kinds, not every sample.
        if kinds != state.streak_types:
            self._audit_later("violation", name, violations=details, streak=state.streak)
        state.streak_types = kinds
        if state.streak >= threshold and behavior.auto_unmount and not state.unloading:
            state.unloading = True
            reason = f"resource limits exceeded in {state.streak} consecutive checks: {summary}"
            log.error("unloading plugin: %s", reason, extra={"plugin": name, "reason": reason})
            entry = self._audit_later("auto_unload", name, reason=reason, violations=details)
            task = asyncio.get_running_loop().create_task(self._do_unload(name, reason, entry, state.pid))
            self._unload_tasks.add(task)
            task.add_done_callback(self._unload_tasks.discard)

    async def _do_unload(
        self, name: str, reason: str, audited: asyncio.Future[None] | None, pid: int | None = None
    ) -> None:
        if audited is not None:
            await audited  # the trail says why before the unload happens
        if pid is not None and not any(p.name == name and p.pid == pid for p in self._source()):
            log.info("not unloading %s: the process that exceeded its limits is gone", name,
                     extra={"plugin": name})
            return
        try:
            await self._unload(name, reason)
            self.forget(name)
        except Exception as exc:
            log.error("auto-unload failed: %s", exc, extra={"plugin": name})
            state = self._states.get(name)
            if state is not None:
                state.unloading = False  # try again after the next streak

    def _audit_append(self, event: str, name: str, **fields: Any) -> None:
        """Blocking (the audit log fsyncs): runs in the monitor's thread, in submission order."""
        if self._audit is None:
            return
        try:
            self._audit.append(event, plugin=name, **fields)
        except Exception as exc:  # a full disk must not stop the monitor from unloading
            log.error("cannot write the audit log: %s", exc, extra={"plugin": name})

    def _audit_later(self, event: str, name: str, **fields: Any) -> asyncio.Future[None] | None:
        if self._audit is None or self._executor is None:
            return None
        return asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(self._audit_append, event, name, **fields)
        )

    def _recent_for(self, name: str) -> deque[dict[str, Any]]:
        recent = self._recent.get(name)
        if recent is None:
            recent = self._recent[name] = deque(maxlen=RECENT_VIOLATIONS)
            while len(self._recent) > _REMEMBERED_PLUGINS:
                self._recent.popitem(last=False)
        self._recent.move_to_end(name)
        return recent

    # -- queries -------------------------------------------------------------------------------

    def _find(self, name: str) -> MonitoredPlugin:
        for plugin in self._source():
            if plugin.name == name:
                return plugin
        raise NotLoaded(f"plugin {name!r} is not loaded", plugin=name)

    def check_plugin_resources(self, name: str) -> list[Violation]:
        """Sample `name` now and return the limits it is over (blocking: a few /proc reads).

        A check on demand does not count towards the consecutive-violation threshold; only sweeps do.
        Raises NotLoaded when `name` is not a loaded plugin (or its process is gone).
        """
        return self.check(name).violations

    def check(self, name: str) -> ResourceCheck:
        """`check_plugin_resources`, with the metrics of that same sample (blocking).

        Raises NotLoaded when `name` is not a loaded plugin (or its process is gone).
        """
        plugin = self._find(name)
        sample = sample_plugin(plugin)
        if sample is None:
            raise NotLoaded(f"plugin {name!r} has no running process", plugin=name)
        found = self._judge(plugin, sample, count=False)
        state = self._states.get(name)
        return ResourceCheck(name, found, self._metrics_of(sample, state))

    def get_plugin_metrics(self, name: str) -> PluginMetrics:
        """The latest sample of `name` (sampled now if no sweep has seen it yet).

        Raises NotLoaded when `name` is not a loaded plugin.
        """
        sample = self._samples.get(name)
        if sample is None:
            plugin = self._find(name)
            sample = sample_plugin(plugin)
            if sample is None:
                raise NotLoaded(f"plugin {name!r} has no running process", plugin=name)
        return self._metrics_of(sample, self._states.get(name))

    @staticmethod
    def _metrics_of(sample: Sample, state: _State | None) -> PluginMetrics:
        return PluginMetrics(
            heap_bytes=sample.memory_bytes,
            cpu_time_ms=int(sample.cpu_seconds * 1000),
            thread_count=sample.threads,
            fd_count=sample.fds,
            connection_count=sample.connections,
            violation_count=state.violation_count if state is not None else 0,
        )

    def on_plugin_event(self, name: str, kind: str, detail: Any = None) -> None:
        """A supervisor event (through the registry): records `oom_killed` as an `oom_kill` violation.

        A sweep sees OOM kills only in a live group's counter, and a plugin the kernel killed between
        two sweeps has its group removed (and made anew by the restart) before the next one; the
        exit status the supervisor got is the reliable report. A kill that a sweep of the same
        incarnation already counted is not reported again (nor one reported here by a later sweep).
        It is not part of a streak: the kill already ended that process, and repeated crashes are
        the circuit breaker's business.
        """
        if kind == "budget_exceeded" and isinstance(detail, dict):
            self._budget_violation(name, detail)
            return
        if kind == "upgraded":  # another process now: its samples and streak start afresh
            self.forget(name)
            return
        if kind != "oom_killed":
            return
        state = self._states.get(name)
        this_incarnation = state is not None and isinstance(detail, dict) and detail.get("pid") == state.pid
        if state is not None and this_incarnation:
            if state.ooms_from_sweeps > 0:  # a sweep saw this kill in the group's counter already
                state.ooms_from_sweeps -= 1
                return
            state.ooms_from_events += 1
        found = OomKill(count=1)
        metrics.violation(name, found.type)
        self._recent_for(name).append({"time": time.time(), **found.as_dict()})
        if state is not None:
            state.violation_count += 1
        if self.unmount_behavior(name).log_violations:
            log.warning("resource limit exceeded: %s", found.describe(),
                        extra={"plugin": name, "violations": [found.type]})
        self._audit_later("violation", name, violations=[found.as_dict()], streak=0)

    def _budget_violation(self, name: str, detail: dict[str, Any]) -> None:
        # Already throttled by the supervisor (one report per budget per REPORT_EVERY_S). Not part of
        # a streak either: the refusal itself is the remedy, and the plugin keeps running.
        found = Budget(budget=str(detail.get("budget")), limit=int(detail.get("limit") or 0),
                       refused=int(detail.get("refused") or 1))
        metrics.violation(name, found.type)
        self._recent_for(name).append({"time": time.time(), **found.as_dict()})
        state = self._states.get(name)
        if state is not None:
            state.violation_count += 1
        if self.unmount_behavior(name).log_violations:
            log.warning("budget exceeded: %s", detail.get("message") or found.describe(),
                        extra={"plugin": name, "violations": [found.type], "budget": found.budget})
        if self._executor is None and self._audit is not None:
            # Before the first sweep: the trail must not lose a violation for want of its thread.
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plugind-monitor")
        self._audit_later("violation", name, violations=[found.as_dict()], streak=0)

    def recent_violations(self, name: str) -> list[dict[str, Any]]:
        """The last violations of `name` (newest last), also after it was unloaded."""
        return list(self._recent.get(name, ()))

    def consecutive_violations(self, name: str) -> int:
        """The current streak of violating sweeps of `name`."""
        state = self._states.get(name)
        return state.streak if state is not None else 0

    def latest_samples(self) -> Mapping[str, Sample]:
        """The samples of the last sweep, by plugin name."""
        return self._samples

    def forget(self, name: str) -> None:
        """Drop `name`'s latest sample and streak now (it was unloaded); its recent violations stay."""
        self._samples = {n: s for n, s in self._samples.items() if n != name}
        self._states.pop(name, None)

    def exported_samples(self) -> dict[str, metrics.PluginSample]:
        """The last sweep as metrics.PluginSample, for the Prometheus collector (any thread).

        A plugin whose process has exited since the sweep (unloaded, crashed) is left out at once
        rather than reported until the next sweep.
        """
        return {
            name: metrics.PluginSample(s.memory_bytes, s.cpu_seconds, s.threads, s.fds, s.connections)
            for name, s in self._samples.items()
            if _running(s.pid)
        }


class SpareFds:
    """A few fds (of /dev/null) held in reserve for the monitor's own reads; `released()` frees
    them for the duration of a block and takes them back after it. Thread-safe: the monitor's
    thread is the only user of `released()`."""

    COUNT = 4

    def __init__(self) -> None:
        self._fds: list[int] = []
        self._lock = threading.Lock()
        self._take()

    def _take(self) -> None:
        while len(self._fds) < self.COUNT:
            try:
                self._fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return  # still at the limit: fewer spares until the next release

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        with self._lock:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()
            try:
                yield
            finally:
                self._take()

    def close(self) -> None:
        with self._lock:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["MonitoredPlugin", "PluginMetrics", "ResourceCheck", "ResourceMonitor", "UnmountBehavior"]
