"""PluginContext and the per-plugin proxy: predefined keys, validation, bounds, grants."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import plugind
from plugind.errors import BudgetExceeded, ContextError
from plugind.host.budgets import ContextBudget
from plugind.host.context import API_OWNER, KEY_OVERHEAD, MAX_VALUE_BYTES, PluginContext, pack_value


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


def test_each_writer_holds_at_most_its_budget_and_others_are_untouched() -> None:
    ctx = PluginContext(api_budget=ContextBudget(keys=2, bytes=10_000))
    hog = ctx.proxy_for("hog", budget=ContextBudget(keys=3, bytes=1_000_000))
    calm = ctx.proxy_for("calm", budget=ContextBudget(keys=3, bytes=1_000_000))
    for i in range(3):
        hog.set(f"hog.k{i}", i)
    full = re.escape("plugin 'hog' may hold 3 context keys and hold 3")
    with pytest.raises(BudgetExceeded, match=full) as info:
        hog.set("hog.k3", 3)
    assert (info.value.budget, info.value.limit, info.value.plugin) == ("context_keys", 3, "hog")
    assert "hog.k3" not in ctx
    hog.set("hog.k0", "an overwrite of its own key is within the budget")
    calm.set("calm.k", 1)  # another plugin and the integrators are not refused for the hog
    ctx.set("app.a", 1)
    ctx.set("app.b", 2)
    with pytest.raises(BudgetExceeded, match=re.escape("[budgets] api_context_keys")):
        ctx.set("app.c", 3)
    assert ctx.usage("hog")[0] == 3 and ctx.usage(API_OWNER)[0] == 2


def test_bytes_are_counted_as_held_and_ownership_moves_with_the_writer() -> None:
    ctx = PluginContext()
    small = ctx.proxy_for("small", grants=["shared."], budget=ContextBudget(keys=100, bytes=2_000))
    too_big = r"'small.big' needs \d+ more: .*\[plugin.small.budgets\] context_bytes"
    with pytest.raises(BudgetExceeded, match=too_big):
        small.set("small.big", "x" * 2_000)
    small.set("shared.k", "y" * 500)
    keys, held = ctx.usage("small")
    assert keys == 1 and held == len("shared.k") + len(pack_value("y" * 500)) + KEY_OVERHEAD
    ctx.set("shared.k", "taken over")  # the integrators wrote it last: theirs now
    assert ctx.usage("small") == (0, 0) and ctx.usage(API_OWNER)[0] == 1
    assert ctx.delete("shared.k") and ctx.usage(API_OWNER) == (0, 0)


def test_release_drops_every_key_of_an_owner_and_nothing_else() -> None:
    ctx = PluginContext()
    gone = ctx.proxy_for("gone", grants=["shared."])
    for i in range(5):
        gone.set(f"gone.k{i}", [i])
    gone.set("shared.x", 1)
    ctx.set("app.kept", 1)
    assert ctx.release("gone") == 6
    assert ctx.keys("gone.") == [] and "shared.x" not in ctx and ctx.get("app.kept") == 1
    assert ctx.usage("gone") == (0, 0) and ctx.release("gone") == 0
    assert ctx.get("host.version") == plugind.__version__  # the host's keys are no one's to release


def test_values_are_copies_not_shared_objects() -> None:
    ctx = PluginContext()
    value = {"n": [1, 2]}
    ctx.set("app.v", value)
    value["n"].append(3)
    got = ctx.get("app.v")
    got["n"].append(4)
    assert ctx.get("app.v") == {"n": [1, 2]}


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.text(alphabet="ab.\u00e9\uff5a", min_size=1, max_size=4)),
                    max_size=60),
       prefix=st.text(alphabet="ab.\u00e9\uff5a", max_size=3))
def test_keys_by_prefix_are_those_of_a_full_scan(ops: list[tuple[bool, str]], prefix: str) -> None:
    # The listing searches a sorted index of the keys (a scan and sort of the whole store per request
    # let a plugin stall the event loop): the same answer as the scan, through sets and deletes.
    ctx = PluginContext()
    for is_set, key in ops:
        if is_set:
            ctx.set(key, 1)
        else:
            ctx.delete(key)
    expected = sorted(k for k in ctx.snapshot() if k.startswith(prefix))[:1000]
    assert ctx.keys(prefix) == expected


def test_keys_lists_at_most_a_thousand_from_the_prefix_on() -> None:
    ctx = PluginContext()
    for i in range(1500):
        ctx.set(f"app.k{i:04d}", i)
    ctx.set("app.l", 1)
    listed = ctx.keys("app.k")
    assert listed == [f"app.k{i:04d}" for i in range(1000)]
    assert ctx.keys("app.k1") == [f"app.k{i:04d}" for i in range(1000, 1500)]
    assert ctx.keys("app.l") == ["app.l"] and ctx.keys("zzz") == []
