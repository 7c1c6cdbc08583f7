"""PluginContext and the per-plugin proxy: predefined keys, validation, bounds, grants."""

from __future__ import annotations

import re
from typing import Any

import pytest

import plugind
from plugind.errors import ContextError
from plugind.host.context import MAX_VALUE_BYTES, PluginContext


def test_predefined_keys_are_present_and_read_only() -> None:
    ctx = PluginContext(predefined={"host.region": "eu"})
    assert ctx.get("host.version") == plugind.__version__
    assert isinstance(ctx.get("host.started_at"), float)
    assert ctx.get("host.region") == "eu"
    read_only = re.escape("'host.version' is a predefined host key and is read-only")
    with pytest.raises(ContextError, match=read_only):
        ctx.set("host.version", "9")
    with pytest.raises(ContextError, match="cannot be deleted") as info:
        ctx.delete("host.pid")
    assert info.value.key == "host.pid"
    with pytest.raises(ContextError, match=re.escape("predefined keys live under 'host.'")):
        ctx.set_predefined("region", "eu")


def test_custom_keys_set_get_delete_keys() -> None:
    ctx = PluginContext()
    ctx.set("app.b", {"n": [1, 2]})
    ctx.set("app.a", b"\x00")
    assert ctx.get("app.b") == {"n": [1, 2]}
    assert ctx.get("app.missing", 5) == 5
    assert ctx.keys("app.") == ["app.a", "app.b"]
    assert ctx.delete("app.a") is True
    assert ctx.delete("app.a") is False
    assert "app.b" in ctx and "app.a" not in ctx
    assert ctx.snapshot()["app.b"] == {"n": [1, 2]}


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "non-empty string"),
        (5, "non-empty string"),
        ("a b", "printable and contain no whitespace"),
        ("a\x00b", "printable and contain no whitespace"),
        ("a\nb", "printable and contain no whitespace"),
        ("k" * 257, "longer than 256 characters"),
    ],
    ids=["empty", "int", "space", "nul", "newline", "long"],
)
def test_invalid_keys(key: Any, message: str) -> None:
    ctx = PluginContext()
    with pytest.raises(ContextError, match=message):
        ctx.set(key, 1)
    with pytest.raises(ContextError, match=message):
        ctx.get(key)


def test_value_bounds_and_types() -> None:
    ctx = PluginContext(max_keys=8)
    with pytest.raises(ContextError, match=f"is {MAX_VALUE_BYTES + 6} bytes; the limit is {MAX_VALUE_BYTES}"):
        ctx.set("a.big", b"x" * (MAX_VALUE_BYTES + 1))
    with pytest.raises(ContextError, match="not a msgpack value"):
        ctx.set("a.obj", object())
    n = len(ctx.snapshot())
    for i in range(8 - n):
        ctx.set(f"a.k{i}", i)
    with pytest.raises(ContextError, match=r"context is full \(8 keys\)"):
        ctx.set("a.one-more", 1)
    ctx.set("a.k0", "overwrite is fine")


def test_proxy_writes_only_own_namespace_and_grants() -> None:
    ctx = PluginContext()
    ctx.set("other.secret", "s")
    proxy = ctx.proxy_for("tagger", grants=["shared.", "", "host."])
    proxy.set("tagger.x", 1)
    proxy.set("shared.y", 2)
    assert proxy.get("other.secret") == "s"  # reads are allowed
    assert proxy.prefixes == ("tagger.", "shared.")  # empty and host. grants are ignored
    for key in ("other.secret", "taggerx", "host.version", "tagger"):
        with pytest.raises(ContextError, match=f"plugin 'tagger' may not write context key '{key}'") as info:
            proxy.set(key, 1)
        assert info.value.plugin == "tagger" and info.value.key == key
        with pytest.raises(ContextError, match="may not write"):
            proxy.delete(key)
    assert ctx.get("other.secret") == "s"
    assert proxy.delete("shared.y") is True


def test_proxy_answers_wire_requests() -> None:
    ctx = PluginContext()
    proxy = ctx.proxy_for("p")
    assert proxy.handle("ctx.set", {"key": "p.a", "value": [1]}) == {}
    assert proxy.handle("ctx.get", {"key": "p.a"}) == {"found": True, "value": [1]}
    assert proxy.handle("ctx.get", {"key": "p.none"}) == {"found": False, "value": None}
    assert proxy.handle("ctx.keys", {"prefix": "p."}) == {"keys": ["p.a"]}
    assert proxy.handle("ctx.delete", {"key": "p.a"}) == {"found": True}
    with pytest.raises(ContextError, match="may not write"):
        proxy.handle("ctx.set", {"key": "q.a", "value": 1})
    with pytest.raises(ContextError, match="printable"):
        proxy.handle("ctx.get", {"key": "a b"})
