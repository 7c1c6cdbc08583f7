"""Value limits at the host's boundaries: a real plugin child returning values too deep or too big,
data too big to send, and context values too deep. Each is one failed call (or a ContextError): the
plugin keeps its process, and no protocol violation is recorded."""

from __future__ import annotations

import re
import textwrap
from types import SimpleNamespace
from typing import Any

import pytest
from test_supervisor import HEADER, Rig, run, settings

from plugind.errors import ContextError, HookFailed
from plugind.host.context import PluginContext
from plugind.host.supervisor import Supervisor
from plugind.wire.frames import MAX_CONTAINERS
from plugind.wire.limits import MAX_DEPTH

MAX_FRAME = 64 * 1024

BOUNDS = '''
@plugin.hook("deep")
def deep(depth, ctx):
    value = "leaf"
    for _ in range(depth):
        value = [value]
    return value

@plugin.hook("big")
def big(size, ctx):
    return b"x" * size

@plugin.hook("surrogate")
def surrogate(data, ctx):
    return {"s": "a\\ud800b"}

@plugin.hook("set_deep")
def set_deep(depth, ctx):
    value = 1
    for _ in range(depth):
        value = [value]
    ctx.set("bounds.deep", value)
    return ctx.get("bounds.deep") == value

@plugin.hook("echo")
def echo(data, ctx):
    return data

@plugin.hook("many")
def many(n, ctx):
    return [[] for _ in range(n)]

@plugin.hook("stamp")
def stamp(data, ctx):
    import msgpack
    return {"at": msgpack.Timestamp(0)}

@plugin.hook("lookalike")
def lookalike(n, ctx):
    return bytes([0x90]) * n  # the bytes of empty arrays, in a bin: no container
'''


def deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def bounds_supervisor(rig: Rig) -> Supervisor:
    tree = rig.tmp_path / "bounds"
    tree.mkdir(exist_ok=True)
    (tree / "scenario.py").write_text(textwrap.dedent(HEADER) + textwrap.dedent(BOUNDS))
    manifest = SimpleNamespace(name="bounds", version="1.0", entrypoint="scenario:plugin", api=1)
    return Supervisor("bounds", tree, manifest, rig.settings, rig.launcher, rig.context, rig.on_event)


def test_bad_results_are_call_errors_and_the_plugin_lives(tmp_path: Any) -> None:
    async def body(rig: Rig) -> None:
        sup = bounds_supervisor(rig)
        await sup.start()
        pid = sup.pid
        at_limit = await sup.invoke("deep", MAX_DEPTH, 10)
        assert at_limit == _leaf_list(MAX_DEPTH)
        with pytest.raises(HookFailed, match=re.escape(
                f"the value hook 'deep' of plugin 'bounds' returned is nested deeper than {MAX_DEPTH} "
                "levels")) as info:
            await sup.invoke("deep", MAX_DEPTH + 1, 10)
        assert (info.value.plugin, info.value.hook, info.value.error_type) == ("bounds", "deep", "ValueError")

        # A result over the frame cap is refused by the plugin's runtime before it is sent.
        assert await sup.invoke("big", MAX_FRAME - 100, 10) == b"x" * (MAX_FRAME - 100)
        with pytest.raises(HookFailed, match=f"exceeds the maximum frame size of {MAX_FRAME} bytes") as info:
            await sup.invoke("big", MAX_FRAME + 1, 10)
        assert info.value.error_type == "ValueError"

        # Data over the frame cap is refused before anything is sent to the plugin.
        with pytest.raises(HookFailed, match=re.escape("cannot send data to hook 'echo': message of ")):
            await sup.invoke("echo", b"y" * (MAX_FRAME + 1), 10)

        with pytest.raises(HookFailed, match="surrogates not allowed"):
            await sup.invoke("surrogate", None, 10)
        with pytest.raises(HookFailed, match="surrogates not allowed"):
            await sup.invoke("echo", "\udfff", 10)

        assert await sup.invoke("echo", "still here", 10) == "still here"
        assert (sup.state, sup.pid, sup.restarts) == ("running", pid, 0)
        assert rig.events == []  # no violation, no crash
        await sup.stop()

    run(tmp_path, body, settings(max_frame_bytes=MAX_FRAME))


def _leaf_list(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def test_a_too_deep_ctx_set_is_a_context_error_in_the_plugin(tmp_path: Any) -> None:
    async def body(rig: Rig) -> None:
        sup = bounds_supervisor(rig)
        await sup.start()
        assert await sup.invoke("set_deep", MAX_DEPTH, 10) is True
        with pytest.raises(HookFailed, match=re.escape(
                "raised ContextError: context value for 'bounds.deep' is nested deeper than")):
            await sup.invoke("set_deep", MAX_DEPTH + 1, 10)
        assert rig.context.get("bounds.deep") == deep(MAX_DEPTH)  # the refused value stored nothing
        assert rig.events == []
        await sup.stop()

    run(tmp_path, body)


@pytest.mark.parametrize(("depth", "ok"), [(MAX_DEPTH, True), (MAX_DEPTH + 1, False)],
                         ids=["limit", "limit+1"])
def test_context_values_at_and_past_the_limit(depth: int, ok: bool) -> None:
    ctx = PluginContext()
    value = {"wrapped": deep(depth - 1)}
    if ok:
        ctx.set("app.v", value)
        assert ctx.get("app.v") == value
    else:
        with pytest.raises(ContextError, match=re.escape(
                f"context value for 'app.v' is nested deeper than {MAX_DEPTH} levels")):
            ctx.set("app.v", value)
        assert "app.v" not in ctx
        with pytest.raises(ContextError, match="nested deeper than"):
            ctx.set_predefined("host.v", value)


def test_results_the_protocol_does_not_carry_are_call_errors(tmp_path: Any) -> None:
    # More maps and arrays than a message may hold (the host would take the frame for an attack on
    # its memory), and a msgpack timestamp (extension type -1, which msgpack decodes on its own):
    # refused by the plugin's runtime, or by the host on receipt, as one failed call.
    async def body(rig: Rig) -> None:
        sup = bounds_supervisor(rig)
        await sup.start()
        pid = sup.pid
        # The result's message is a map and its data a list: MAX_CONTAINERS in all, then one more.
        assert len(await sup.invoke("many", MAX_CONTAINERS - 2, 30)) == MAX_CONTAINERS - 2
        with pytest.raises(HookFailed, match=f"holds more than {MAX_CONTAINERS} maps and arrays") as info:
            await sup.invoke("many", MAX_CONTAINERS - 1, 30)
        assert info.value.error_type == "ValueError"
        assert await sup.invoke("lookalike", MAX_CONTAINERS + 1, 30) == bytes([0x90]) * (MAX_CONTAINERS + 1)
        # Call data past the limit is refused before anything is sent (the plugin would take it for
        # a violation); at the limit it goes.
        assert len(await sup.invoke("echo", [[]] * (MAX_CONTAINERS - 2), 30)) == MAX_CONTAINERS - 2
        with pytest.raises(HookFailed, match=re.escape("cannot send data to hook 'echo': message holds "
                                                       f"more than {MAX_CONTAINERS} maps and arrays")):
            await sup.invoke("echo", [[]] * (MAX_CONTAINERS - 1), 30)
        with pytest.raises(HookFailed, match=re.escape(
                "hook 'stamp' of plugin 'bounds' returned a msgpack timestamp (extension type -1)")):
            await sup.invoke("stamp", None, 10)
        assert await sup.invoke("echo", "still here", 10) == "still here"
        assert (sup.state, sup.pid, sup.restarts) == ("running", pid, 0)
        assert rig.events == []  # no violation, no crash
        await sup.stop()

    run(tmp_path, body, settings(max_frame_bytes=4 << 20))
