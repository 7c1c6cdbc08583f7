"""schema-validator: valid bodies pass unchanged, each kind of problem is named."""

from __future__ import annotations

import pytest
from examples_loader import load_example

from plugind.sdk.testing import PluginHarness

mod = load_example("schema-validator")


@pytest.fixture
def harness() -> PluginHarness:
    h = PluginHarness(mod.plugin)
    h.load()
    return h


def test_default_schema_set_at_load(harness: PluginHarness) -> None:
    assert harness.context["schema-validator.schema"] == {"user": "str", "action": "str"}


def test_valid_body_passes_unchanged(harness: PluginHarness) -> None:
    data = {"body": {"user": "ann", "action": "read", "extra": 1}}
    assert harness.call("on_request", data) == data


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"user": "ann"}, "missing field 'action'"),
        ({}, "missing field 'action'; missing field 'user'"),
        ({"user": 3, "action": "x"}, "field 'user' must be str, got int"),
        ("text", "body must be a map, got str"),
    ],
    ids=["missing-one", "missing-all", "wrong-type", "not-a-map"],
)
def test_bad_body_rejected(harness: PluginHarness, body: object, message: str) -> None:
    with pytest.raises(mod.ValidationFailed, match=f"^{message}$"):
        harness.call("on_request", {"body": body})


def test_custom_schema_bool_is_not_an_int() -> None:
    h = PluginHarness(mod.plugin, context={"schema-validator.schema": {"n": "int", "ok": "bool"}})
    h.load()
    assert h.call("on_request", {"body": {"n": 2, "ok": True}}) == {"body": {"n": 2, "ok": True}}
    with pytest.raises(mod.ValidationFailed, match="field 'n' must be int, got bool"):
        h.call("on_request", {"body": {"n": True, "ok": True}})
