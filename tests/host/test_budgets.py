"""plugind.host.budgets: resolving a plugin's budgets, and how often a refusal is reported."""

from __future__ import annotations

import pytest

from plugind.config import Settings
from plugind.host.budgets import ContextBudget, PluginBudgets, ReportThrottle, api_context_budget


def test_a_plugin_gets_its_override_where_set_and_the_default_elsewhere() -> None:
    settings = Settings.model_validate({
        "budgets": {"context_keys": 10, "pending_calls": 8, "api_context_bytes": 5000},
        "plugin": {"cache": {"budgets": {"context_keys": 50_000, "log_bytes_per_sec": 100}}},
    })
    cache = PluginBudgets.for_plugin(settings, "cache")
    other = PluginBudgets.for_plugin(settings, "other")
    assert cache.context == ContextBudget(keys=50_000, bytes=8 * 1024 * 1024)  # wider than [budgets]
    assert (cache.log_bytes_per_sec, cache.pending_calls) == (100, 8)
    assert other.context.keys == 10 and other.log_bytes_per_sec == 64 * 1024
    assert api_context_budget(settings) == ContextBudget(keys=10_000, bytes=5000)


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("budgets", {"pending_calls": 0}, "greater than or equal to 1"),
        ("budgets", {"buffered_bytes": 1024}, "greater than or equal to 65536"),
        ("budgets", {"context_keys": -1}, "greater than or equal to 0"),
        ("budgets", {"no_such_budget": 1}, "Extra inputs are not permitted"),
    ],
    ids=["no-calls", "tiny-buffer", "negative", "unknown"],
)
def test_invalid_budgets_are_refused(section: str, values: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.model_validate({section: values})


def test_the_throttle_reports_the_first_refusal_then_one_per_period_with_the_count() -> None:
    throttle = ReportThrottle(every=10.0)
    assert throttle.refused("context_keys", 100.0) == 1
    assert [throttle.refused("context_keys", t) for t in (101.0, 102.0, 109.9)] == [0, 0, 0]
    assert throttle.refused("log_bytes", 103.0) == 1  # each budget on its own
    assert throttle.refused("context_keys", 110.0) == 4  # this one and the three held back
    assert throttle.refused("context_keys", 111.0) == 0
