"""Which plugin handles which hook, and the three execution policies (docs/integrators.md, "Hook calls").

Order: higher `priority` first, then load order (the plugin registered first runs first).
Deadline of one handler: the per-call `timeout_s` (a deadline for the whole call), else the
plugin's `[plugin.NAME] hook_timeouts`, else `[hooks.timeouts]`, else the default.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from plugind.config import Settings
from plugind.errors import HookError, HookTimeout, PluginCrashed, PluginError, ProtocolViolation
from plugind.monitor import metrics

log = logging.getLogger("plugind.host.hooks")
_monotonic = time.monotonic
observe_hook = metrics.observe_hook
observe_ok = metrics.observe_ok

Policy = Literal["chain", "until_error", "all"]
POLICIES: tuple[str, ...] = ("chain", "until_error", "all")
Outcome = Literal["ok", "error", "timeout", "crashed", "skipped"]

# Slack on top of a handler's deadline before the host gives up on a target that does not
# enforce its own deadline (the supervisor does; this guards the event loop against one that does not).
_GRACE_S = 1.0


class HookTarget(Protocol):
    """What the hook registry calls: the supervisor of one plugin."""

    async def invoke(self, hook: str, data: Any, timeout_s: float) -> Any: ...


def _enforces_deadline(target: HookTarget) -> bool:
    """Whether `target` fails its own calls at their deadline (a class attribute `enforces_deadline
    = True`, as the Supervisor has: its expiry timer). Others get a timeout scope of their own."""
    return getattr(type(target), "enforces_deadline", False) is True


@dataclass(slots=True)
class HookOutcome:
    """What one plugin did with one hook call."""

    plugin: str
    outcome: Outcome
    output: Any = None
    error: PluginError | None = None
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able view (the API's per-plugin result)."""
        err = None
        if self.error is not None:
            err = {"type": type(self.error).__name__, "message": self.error.message}
        return {
            "plugin": self.plugin,
            "outcome": self.outcome,
            "output": self.output,
            "error": err,
            "duration_s": round(self.duration_s, 6),
        }


@dataclass(slots=True)
class HookResult:
    """The result of one hook call under one policy.

    `data` is the final output for `chain` and `until_error` (the input if no handler ran) and None
    for `all`, whose outputs are in `results`. `error` is the first failure (for `until_error`, the one
    that stopped the call).
    """

    hook: str
    policy: Policy
    data: Any
    results: list[HookOutcome] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.outcome == "ok" for r in self.results)

    @property
    def error(self) -> HookOutcome | None:
        return next((r for r in self.results if r.outcome not in ("ok", "skipped")), None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able view (the API's reply)."""
        first = self.error
        return {
            "hook": self.hook,
            "policy": self.policy,
            "success": self.ok,
            "data": self.data,
            "results": [r.to_dict() for r in self.results],
            "error": first.to_dict()["error"] if first is not None else None,
            "duration_s": round(self.duration_s, 6),
        }


@dataclass(frozen=True)
class _Handler:
    plugin: str
    priority: int
    order: int
    target: HookTarget
    # No timeout scope of ours around a target that enforces its deadline (see _call).
    guarded: bool = True


def _outcome_of(exc: PluginError) -> Outcome:
    if isinstance(exc, HookTimeout):
        return "timeout"
    if isinstance(exc, (PluginCrashed, ProtocolViolation)):
        return "crashed"
    return "error"


class HookRegistry:
    """Maps hooks to the plugins that handle them and runs calls under a policy."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._by_plugin: dict[str, dict[str, _Handler]] = {}
        self._load_order: dict[str, int] = {}  # plugin -> its place, kept by an upgrade (replace)
        self._order = itertools.count()
        # Told of every failed handler call (hook, plugin, outcome, message); must not raise or
        # block. The registry's `on_error` dispatcher (plugind.host.error_hooks) listens here.
        self.on_failure: Callable[[str, str, str, str], None] | None = None
        # hook -> its handlers in run order, made on first use after a (un)registration: a call
        # would otherwise scan every plugin and sort (at 1,000 plugins, most of the call).
        self._ordered: dict[str, tuple[_Handler, ...]] = {}

    def register(self, plugin: str, hooks: Mapping[str, int], target: HookTarget) -> None:
        """Add `plugin` as the handler of `hooks` (name -> priority). Re-registering replaces it."""
        order = self._load_order[plugin] = next(self._order)
        old = self._by_plugin.get(plugin, {})
        self._by_plugin[plugin] = {
            hook: _Handler(plugin, int(priority), order, target, not _enforces_deadline(target))
            for hook, priority in hooks.items()
        }
        self._forget_orders(old, hooks)

    def _forget_orders(self, *hook_sets: Mapping[str, Any]) -> None:
        # Only the run orders of the hooks a change touches: at 1,000 plugins, clearing them all on
        # every load made each hook's next call scan and sort every plugin again.
        for hooks in hook_sets:
            for hook in hooks:
                self._ordered.pop(hook, None)

    def replace(self, plugin: str, hooks: Mapping[str, int], target: HookTarget) -> None:
        """Make `target` the handler of `plugin`'s `hooks` in one step, keeping the plugin's place in
        the load order (an upgrade swaps versions). Calls that already picked their handlers keep
        them; every later call gets the new ones."""
        current = self._by_plugin.get(plugin)
        order = self._load_order.get(plugin)
        if order is None:  # (even one that handles no hook has its place)
            order = self._load_order[plugin] = next(self._order)
        self._by_plugin[plugin] = {
            hook: _Handler(plugin, int(priority), order, target, not _enforces_deadline(target))
            for hook, priority in hooks.items()
        }
        self._forget_orders(current or {}, hooks)  # their cached run orders hold the old version

    def unregister(self, plugin: str) -> None:
        """Forget every hook of `plugin` (no error if it had none)."""
        self._load_order.pop(plugin, None)
        self._forget_orders(self._by_plugin.pop(plugin, {}))

    def handlers(self, hook: str) -> list[tuple[str, int]]:
        """(plugin, priority) of every handler of `hook`, in the order they run."""
        return [(h.plugin, h.priority) for h in self._handlers(hook)]

    def hooks(self) -> dict[str, list[str]]:
        """Every hook name -> the plugins handling it, in run order."""
        names = sorted({hook for hooks in self._by_plugin.values() for hook in hooks})
        return {name: [p for p, _ in self.handlers(name)] for name in names}

    def _handlers(self, hook: str) -> tuple[_Handler, ...]:
        # A tuple, replaced (not changed) on (un)registration: a plugin may be unloaded while a
        # call is in flight. Unknown hooks are not remembered (callers choose the names).
        found = self._ordered.get(hook)
        if found is None:
            found = tuple(sorted((hooks[hook] for hooks in self._by_plugin.values() if hook in hooks),
                                 key=lambda h: (-h.priority, h.order)))
            if found:
                self._ordered[hook] = found
        return found

    def run(
        self, hook: str, data: Any, policy: Policy = "chain", timeout_s: float | None = None
    ) -> Coroutine[Any, Any, HookResult]:
        """Run `hook` under `policy` (awaitable). Raises ValueError for an unknown policy or a bad
        timeout, when awaited."""
        if policy == "chain" or policy == "until_error":
            return self._sequential(hook, data, timeout_s, policy)
        if policy == "all":
            return self.execute_all(hook, data, timeout_s)
        return _refuse(ValueError(f"unknown policy {policy!r}: use one of {', '.join(POLICIES)}"))

    # execute and execute_until_error hand back the coroutine of _sequential (they are not coroutine
    # functions themselves): one coroutine less to make and to resume through on every public call.
    def execute(
        self, hook: str, data: Any, timeout_s: float | None = None
    ) -> Coroutine[Any, Any, HookResult]:
        """Chain (awaitable): each handler gets the previous output; a failing handler is skipped
        and reported."""
        return self._sequential(hook, data, timeout_s, "chain")

    def execute_until_error(
        self, hook: str, data: Any, timeout_s: float | None = None
    ) -> Coroutine[Any, Any, HookResult]:
        """As chain (awaitable), but stop at the first failure; the handlers after it are reported
        `skipped`."""
        return self._sequential(hook, data, timeout_s, "until_error")

    async def execute_all(self, hook: str, data: Any, timeout_s: float | None = None) -> HookResult:
        """Every handler gets the same input, concurrently; the result lists each outcome."""
        _check_timeout(timeout_s, self._settings.hooks.max_timeout_secs)
        started = time.monotonic()
        deadline = None if timeout_s is None else started + timeout_s
        handlers = self._handlers(hook)
        outcomes = await asyncio.gather(*(self._call(h, hook, data, deadline) for h in handlers))
        return HookResult(hook, "all", None, list(outcomes), time.monotonic() - started)

    async def _sequential(self, hook: str, data: Any, timeout_s: float | None, policy: Policy) -> HookResult:
        # The public hot path (execute is this, chain policy): kept flat on purpose. One clock
        # reading per handler: each call starts when the one before it ended. A target that enforces
        # its own deadline (the supervisor) is called inline, as _call would call it; everything
        # else, and every failure, goes through _call / _failed. The result object is made at the
        # end, from locals (the same fields; nobody sees it before it is returned).
        if timeout_s is not None:
            _check_timeout(timeout_s, self._settings.hooks.max_timeout_secs)
        now = started = _monotonic()
        deadline = None if timeout_s is None else started + timeout_s
        results: list[HookOutcome] = []
        stopped = False
        hook_timeout = self._settings.hook_timeout
        for handler in self._ordered.get(hook) or self._handlers(hook):  # (the cache, then the scan)
            plugin = handler.plugin
            if stopped:
                results.append(HookOutcome(plugin, "skipped"))
                continue
            timeout = hook_timeout(hook, plugin) if deadline is None else deadline - now
            if handler.guarded or timeout <= 0:
                outcome = await self._call(handler, hook, data, deadline, now)
            else:
                try:
                    output = await handler.target.invoke(hook, data, timeout)
                except Exception as exc:
                    outcome = self._failed(handler, hook, exc, now, timeout)
                else:
                    elapsed = _monotonic() - now
                    observe_ok(hook, plugin, elapsed)
                    results.append(HookOutcome(plugin, "ok", output, None, elapsed))
                    data = output
                    now += elapsed
                    continue
            now += outcome.duration_s
            results.append(outcome)
            if outcome.outcome == "ok":
                data = outcome.output
            elif policy == "until_error":
                stopped = True
        return HookResult(hook, policy, data, results, now - started)

    async def _call(
        self, handler: _Handler, hook: str, data: Any, deadline: float | None,
        started: float | None = None,
    ) -> HookOutcome:
        """Call one handler; `started`: the clock now, when the caller has just read it."""
        if started is None:
            started = _monotonic()
        if deadline is None:
            timeout = self._settings.hook_timeout(hook, handler.plugin)
        else:
            timeout = deadline - started
        try:
            if timeout <= 0:
                raise HookTimeout(
                    f"hook {hook!r} of plugin {handler.plugin!r}: call deadline passed before it ran",
                    plugin=handler.plugin,
                    hook=hook,
                    timeout_s=0.0,
                )
            try:
                if handler.guarded:
                    # A timeout scope, not wait_for: no extra task per call on the hot path.
                    async with asyncio.timeout(timeout + _GRACE_S):
                        output = await handler.target.invoke(hook, data, timeout)
                else:
                    # The target fails the call with HookTimeout at `timeout` itself (the
                    # supervisor's expiry timer): a second scope would cost a timer per call.
                    output = await handler.target.invoke(hook, data, timeout)
            except TimeoutError:
                raise HookTimeout(
                    f"hook {hook!r} of plugin {handler.plugin!r} did not answer within {timeout:.3g} s",
                    plugin=handler.plugin,
                    hook=hook,
                    timeout_s=timeout,
                ) from None
        except Exception as exc:
            return self._failed(handler, hook, exc, started, timeout)
        elapsed = _monotonic() - started
        observe_ok(hook, handler.plugin, elapsed)
        return HookOutcome(handler.plugin, "ok", output, None, elapsed)

    def _failed(self, handler: _Handler, hook: str, exc: Exception, started: float,
                timeout: float) -> HookOutcome:
        """The outcome of a handler call that raised `exc` (counted, logged, told to on_failure)."""
        elapsed = _monotonic() - started
        if isinstance(exc, TimeoutError) and not isinstance(exc, PluginError):
            # Our own timeout scope (_call) around a target that does not enforce its deadline.
            exc = HookTimeout(
                f"hook {hook!r} of plugin {handler.plugin!r} did not answer within {timeout:.3g} s",
                plugin=handler.plugin,
                hook=hook,
                timeout_s=timeout,
            )
        if isinstance(exc, PluginError):
            kind = _outcome_of(exc)
            observe_hook(hook, handler.plugin, kind, elapsed)
            log.warning(
                "hook %s of %s failed: %s", hook, handler.plugin, exc, extra={"plugin": handler.plugin}
            )
            if self.on_failure is not None:
                self.on_failure(hook, handler.plugin, kind, exc.message)
            return HookOutcome(handler.plugin, kind, error=exc, duration_s=elapsed)
        # A bug in a target must not take the whole call down.
        observe_hook(hook, handler.plugin, "error", elapsed)
        log.error("hook %s of %s raised", hook, handler.plugin, exc_info=exc,
                  extra={"plugin": handler.plugin})
        err = HookError(f"{type(exc).__name__}: {exc}", plugin=handler.plugin, hook=hook)
        if self.on_failure is not None:
            self.on_failure(hook, handler.plugin, "error", err.message)
        return HookOutcome(handler.plugin, "error", error=err, duration_s=elapsed)


async def _refuse(exc: Exception) -> HookResult:
    raise exc


def _check_timeout(timeout_s: float | None, maximum: float) -> None:
    # Capped: a call inside its deadline excuses a plugin's missed heartbeats (plugind/host/liveness.py).
    if timeout_s is not None and not (0 < timeout_s <= maximum):
        raise ValueError(
            f"timeout_s must be in (0, {maximum:g}] seconds ([hooks] max_timeout_secs), got {timeout_s!r}"
        )


__all__ = ["POLICIES", "HookOutcome", "HookRegistry", "HookResult", "HookTarget", "Policy"]
