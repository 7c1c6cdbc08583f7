"""header-tagger: headers added from the context, payload kept, bad payloads refused."""

from __future__ import annotations

import pytest
from examples_loader import load_example

from plugind.sdk.testing import PluginHarness

mod = load_example("header-tagger")


def test_adds_tag_and_host_version_and_keeps_the_rest() -> None:
    harness = PluginHarness(mod.plugin, context={"host.version": "0.1.0"})
    harness.load()
    assert harness.context["header-tagger.tag"] == "tagged"
    out = harness.call("on_request", {"path": "/x", "headers": {"accept": "*/*"}})
    assert out == {
        "path": "/x",
        "headers": {"accept": "*/*", "x-plugind-tag": "tagged", "x-plugind-host": "0.1.0"},
    }


def test_operator_set_tag_is_kept_at_load_and_used() -> None:
    harness = PluginHarness(mod.plugin, context={"header-tagger.tag": "blue"})
    harness.load()
    out = harness.call("on_request", {})
    assert out == {"headers": {"x-plugind-tag": "blue"}}


def test_non_map_payload_is_refused() -> None:
    harness = PluginHarness(mod.plugin)
    harness.load()
    with pytest.raises(TypeError, match="on_request payload must be a map, got list"):
        harness.call("on_request", [1, 2])
