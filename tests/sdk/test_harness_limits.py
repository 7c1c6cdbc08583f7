"""PluginHarness holds handlers to the host's value limits, so a plugin's own tests catch them."""

from __future__ import annotations

from typing import Any

import pytest

from plugind.sdk import Plugin
from plugind.sdk.testing import PluginHarness
from plugind.wire.frames import DEFAULT_MAX_FRAME
from plugind.wire.limits import MAX_DEPTH


def nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def harness() -> PluginHarness:
    plugin = Plugin(name="limits")

    @plugin.hook("deep")
    def deep(depth: int, ctx: Any) -> Any:
        return nest(depth)

    @plugin.hook("big")
    def big(size: int, ctx: Any) -> Any:
        return b"x" * size

    @plugin.hook("store")
    def store(depth: int, ctx: Any) -> None:
        ctx.set("limits.v", nest(depth))

    return PluginHarness(plugin)


def test_results_at_and_past_the_limits() -> None:
    h = harness()
    assert h.call("deep", MAX_DEPTH) == nest(MAX_DEPTH)
    with pytest.raises(TypeError, match=f"value is nested deeper than {MAX_DEPTH} levels"):
        h.call("deep", MAX_DEPTH + 1)
    with pytest.raises(TypeError, match=f"exceeds the default maximum frame size of {DEFAULT_MAX_FRAME}"):
        h.call("big", DEFAULT_MAX_FRAME)
    with pytest.raises(TypeError, match="nested deeper than"):
        h.call("deep", nest(MAX_DEPTH + 1))  # data the host would refuse too


def test_context_values_past_the_limit() -> None:
    h = harness()
    h.call("store", MAX_DEPTH)
    assert h.context["limits.v"] == nest(MAX_DEPTH)
    with pytest.raises(TypeError, match="nested deeper than"):
        h.call("store", MAX_DEPTH + 1)
