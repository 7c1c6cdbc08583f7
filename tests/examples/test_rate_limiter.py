"""rate-limiter: counts per client in its own context namespace, refuses over the limit, resets."""

from __future__ import annotations

import time

import pytest
from examples_loader import load_example

from plugind.sdk.testing import PluginHarness

mod = load_example("rate-limiter")


def test_counts_per_client_and_refuses_over_limit() -> None:
    h = PluginHarness(mod.plugin, context={"rate-limiter.limit": 2})
    h.load()
    assert h.call("on_request", {"client": "a"})["headers"] == {"x-ratelimit-remaining": "1"}
    assert h.call("on_request", {"client": "a"})["headers"] == {"x-ratelimit-remaining": "0"}
    with pytest.raises(mod.RateLimited, match=r"client 'a' is over 2 requests per 60 s"):
        h.call("on_request", {"client": "a"})
    # Another client has its own counter.
    assert h.call("on_request", {"client": "b"})["headers"] == {"x-ratelimit-remaining": "1"}
    # All state lives under the plugin's own namespace.
    assert all(k.startswith("rate-limiter.") for k in h.context)
    assert h.context["rate-limiter.count.a"][1] == 2


def test_window_expiry_resets_the_count() -> None:
    h = PluginHarness(mod.plugin, context={"rate-limiter.limit": 1, "rate-limiter.window_s": 60})
    h.load()
    h.call("on_request", {"client": "c"})
    h.context["rate-limiter.count.c"] = [time.time() - 61, 1]
    assert h.call("on_request", {"client": "c"})["headers"]["x-ratelimit-remaining"] == "0"


@pytest.mark.parametrize("data", [{}, {"client": ""}, {"client": "a/b"}, "x"], ids=repr)
def test_client_required(data: object) -> None:
    h = PluginHarness(mod.plugin)
    h.load()
    with pytest.raises(ValueError, match="needs a 'client'"):
        h.call("on_request", data)
