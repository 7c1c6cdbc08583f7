"""Per-plugin budgets: what the daemon keeps on a plugin's behalf, and how often going over is reported.

A budget bounds daemon memory or output that a plugin causes: the context keys and bytes it owns,
the log bytes it writes per second, the hook calls in flight to it, the replies queued for it while
it does not read. `[budgets]` gives the defaults, `[plugin.NAME.budgets]` one plugin's own values
(wider or narrower: the operator decides). Going over refuses that one request with BudgetExceeded
and is a violation of the plugin; `ReportThrottle` keeps a plugin that hammers a budget from turning
every refusal into an audit line and a log line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from plugind.config import Settings

REPORT_EVERY_S = 10.0  # at most one violation report per plugin and budget in this long


@dataclass(frozen=True)
class ContextBudget:
    """How many context keys one owner may hold, and how many bytes they may take."""

    keys: int
    bytes: int


@dataclass(frozen=True)
class PluginBudgets:
    """One plugin's budgets, resolved from `[budgets]` and `[plugin.NAME.budgets]`."""

    context: ContextBudget
    log_bytes_per_sec: int
    pending_calls: int
    buffered_bytes: int

    @classmethod
    def for_plugin(cls, settings: Settings, name: str) -> PluginBudgets:
        """The budgets of plugin `name`: its override where set, else the default."""
        default = settings.budgets
        own = settings.override_for(name).budgets

        def pick(value: int | None, fallback: int) -> int:
            return fallback if value is None else value

        return cls(
            context=ContextBudget(
                pick(own.context_keys, default.context_keys), pick(own.context_bytes, default.context_bytes)
            ),
            log_bytes_per_sec=pick(own.log_bytes_per_sec, default.log_bytes_per_sec),
            pending_calls=pick(own.pending_calls, default.pending_calls),
            buffered_bytes=pick(own.buffered_bytes, default.buffered_bytes),
        )


def api_context_budget(settings: Settings) -> ContextBudget:
    """The budget integrators' own context writes (`PUT /api/context`) share."""
    return ContextBudget(settings.budgets.api_context_keys, settings.budgets.api_context_bytes)


@dataclass
class ReportThrottle:
    """Decides which refusals become a violation report: the first, then one per `every` seconds
    per budget, carrying how many refusals it stands for."""

    every: float = REPORT_EVERY_S
    _last: dict[str, float] = field(default_factory=dict)
    _folded: dict[str, int] = field(default_factory=dict)

    def refused(self, budget: str, now: float) -> int:
        """Count one refusal of `budget` at monotonic time `now`; return how many refusals to report
        now (this one and the ones held back since the last report), or 0 to stay quiet."""
        count = self._folded.get(budget, 0) + 1
        last = self._last.get(budget)
        if last is not None and now - last < self.every:
            self._folded[budget] = count
            return 0
        self._last[budget] = now
        self._folded[budget] = 0
        return count


__all__ = ["REPORT_EVERY_S", "ContextBudget", "PluginBudgets", "ReportThrottle", "api_context_budget"]
