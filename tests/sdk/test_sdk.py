"""SDK: the Plugin object, its decorators, the PluginHarness, and its independence from the host."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from plugind.sdk import Plugin
from plugind.sdk.testing import PluginHarness

FORBIDDEN = ("fastapi", "uvicorn", "plugind.host", "plugind.api", "plugind.monitor", "plugind.trust",
             "plugind.sandbox", "pydantic", "cryptography")


def make_plugin() -> Plugin:
    plugin = Plugin()

    @plugin.on_load
    def setup(ctx: Any) -> None:
        ctx.set("hello.greeting", "hi")

    @plugin.hook("on_request", priority=10)
    def tag(data: Any, ctx: Any) -> Any:
        data["headers"]["x-hello"] = ctx.get("hello.greeting")
        return data

    @plugin.hook("count")
    async def count(data: Any, ctx: Any) -> Any:
        n = ctx.get("hello.count", 0) + data
        ctx.set("hello.count", n)
        return n

    @plugin.hook("bad")
    def bad(data: Any, ctx: Any) -> Any:
        return {"not": object()}

    @plugin.hook("boom")
    def boom(data: Any, ctx: Any) -> Any:
        raise RuntimeError("boom: " + str(data))

    @plugin.on_unload
    async def teardown(ctx: Any) -> None:
        ctx.delete("hello.greeting")

    return plugin


def test_harness_runs_sync_and_async_handlers_with_context() -> None:
    plugin = make_plugin()
    harness = PluginHarness(plugin, context={"other.key": 1})
    harness.load()
    assert harness.context == {"other.key": 1, "hello.greeting": "hi"}
    assert harness.call("on_request", {"headers": {}}) == {"headers": {"x-hello": "hi"}}
    assert harness.call("count", 2) == 2
    assert harness.call("count", 3) == 5
    assert harness.context["hello.count"] == 5
    harness.unload()
    assert "hello.greeting" not in harness.context
    assert plugin.priorities == {"on_request": 10, "count": 0, "bad": 0, "boom": 0}


def test_harness_surfaces_what_the_wire_would_refuse() -> None:
    harness = PluginHarness(make_plugin())
    with pytest.raises(TypeError, match="not a msgpack value, the host could not receive it"):
        harness.call("bad", None)
    with pytest.raises(TypeError, match="not a msgpack value"):
        harness.call("count", object())
    with pytest.raises(KeyError, match="plugin has no handler for hook 'nope'"):
        harness.call("nope", 1)
    with pytest.raises(RuntimeError, match="boom: 7"):
        harness.call("boom", 7)


def test_harness_works_inside_a_running_event_loop() -> None:
    import asyncio

    async def main() -> Any:
        return PluginHarness(make_plugin()).call("count", 4)

    assert asyncio.run(main()) == 4


@pytest.mark.parametrize(
    ("name", "priority", "exc", "message"),
    [
        ("", 0, ValueError, "invalid hook name ''"),
        ("a b", 0, ValueError, "invalid hook name 'a b'"),
        ("../x", 0, ValueError, "invalid hook name"),
        ("h", 2**40, ValueError, "priority of hook 'h' must fit in 32 bits"),
        ("h", 1.5, TypeError, "priority of hook 'h' must be an int, not float"),
        ("h", True, TypeError, "must be an int, not bool"),
    ],
    ids=["empty", "space", "path", "big-priority", "float-priority", "bool-priority"],
)
def test_hook_decorator_validation(name: str, priority: Any, exc: type[Exception], message: str) -> None:
    with pytest.raises(exc, match=message):
        Plugin().hook(name, priority=priority)


def test_one_handler_per_hook() -> None:
    plugin = Plugin()
    plugin.hook("h")(lambda data, ctx: data)
    with pytest.raises(ValueError, match="hook 'h' already has a handler in this plugin"):
        plugin.hook("h")


def test_log_is_named_after_the_plugin() -> None:
    assert Plugin().log.name == "plugin"
    assert Plugin(name="tagger").log.name == "plugin.tagger"
    assert repr(Plugin(name="x")) == "<Plugin x hooks=[]>"


def test_public_api() -> None:
    import plugind.sdk as sdk

    assert sdk.__all__ == [
        "HOST_FIRED", "INTEGRATOR_FIRED", "ON_ERROR", "ON_REQUEST", "ON_RESPONSE", "ON_SHUTDOWN",
        "ON_STARTUP", "Context", "HookSpec", "Plugin",
    ]


def test_well_known_hook_names() -> None:
    import plugind.sdk as sdk

    names = (sdk.ON_REQUEST, sdk.ON_RESPONSE, sdk.ON_ERROR, sdk.ON_STARTUP, sdk.ON_SHUTDOWN)
    assert names == ("on_request", "on_response", "on_error", "on_startup", "on_shutdown")
    assert {"on_startup", "on_shutdown", "on_error"} == sdk.HOST_FIRED
    assert set(names) == sdk.INTEGRATOR_FIRED | sdk.HOST_FIRED
    assert not sdk.INTEGRATOR_FIRED & sdk.HOST_FIRED


def test_sdk_imports_nothing_of_the_host_in_a_fresh_interpreter() -> None:
    code = ("import sys, json; import plugind.sdk, plugind.sdk.testing, plugind.runtime; "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = json.loads(out.stdout)
    leaked = [mod for mod in modules if mod.startswith(FORBIDDEN)]
    assert leaked == []
    assert "plugind.sdk" in modules and "plugind.runtime.child" in modules
