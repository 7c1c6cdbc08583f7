"""Message checks: what each side accepts from the other."""

from __future__ import annotations

from typing import Any

import pytest

from plugind.errors import ProtocolViolation
from plugind.wire import messages as m

GOOD_FROM_PLUGIN = [
    m.hello("p", "1.0", {"on_request": 10, "a.b:c-d": -5}, pid=3),
    m.result_ok(1, {"x": 1}),
    m.result_error(2, {"type": "HookFailed", "message": "boom", "context": {}}),
    {"type": "pong", "id": 7},
    {"type": "log", "level": "info", "msg": "hi", "logger": "plugin.p"},
    {"type": "ctx.get", "id": 1, "key": "p.k"},
    {"type": "ctx.set", "id": 2, "key": "p.k", "value": None},
    {"type": "ctx.delete", "id": 3, "key": "p.k"},
    {"type": "ctx.keys", "id": 4, "prefix": "p."},
    {"type": "fatal", "error": {"type": "InitializationError", "message": "x"}},
]


@pytest.mark.parametrize("msg", GOOD_FROM_PLUGIN, ids=lambda msg: msg["type"])
def test_valid_plugin_messages(msg: dict[str, Any]) -> None:
    assert m.check_from_plugin(msg) == msg["type"]


BAD_FROM_PLUGIN = [
    ({"type": "invoke", "id": 1, "hook": "h", "data": 1}, "unexpected message type 'invoke' from a plugin"),
    ({"type": "result", "id": -1, "ok": True, "data": 1}, "'id' must be an integer"),
    ({"type": "result", "id": True, "ok": True, "data": 1}, "'id' must be an integer"),
    ({"type": "result", "id": 1, "ok": True}, "'data' missing"),
    ({"type": "result", "id": 1, "ok": 1, "data": 1}, "'ok' must be a boolean"),
    ({"type": "result", "id": 1, "ok": False, "error": "x"}, "'error' must be a map"),
    ({"type": "log", "level": "loud", "msg": "x"}, "'level' must be one of"),
    ({"type": "log", "level": "info", "msg": 5}, "'msg' must be a string"),
    ({"type": "ctx.set", "id": 1, "key": "k"}, "'value' missing"),
    ({"type": "ctx.get", "id": 1, "key": "k" * 2000}, "'key' must be a string of at most 1024"),
    ({"type": "hello", "api": "1", "name": "p", "hooks": {}}, "'api' must be an integer"),
    ({"type": "hello", "api": 1, "name": "p", "hooks": {"../x": 1}}, "invalid hook name"),
    ({"type": "hello", "api": 1, "name": "p", "hooks": {"h": 2**40}}, "must be a 32-bit integer"),
    ({"type": "hello", "api": 1, "name": "p", "hooks": {f"h{i}": 0 for i in range(300)}},
     "at most 256 entries"),
    ({"type": "hello", "api": 1, "name": "p", "hooks": []}, "'hooks' must be a map"),
    ({"type": "fatal", "error": None}, "'error' must be a map"),
]


@pytest.mark.parametrize(("msg", "message"), BAD_FROM_PLUGIN,
                         ids=[f"{i}-{msg['type']}" for i, (msg, _) in enumerate(BAD_FROM_PLUGIN)])
def test_invalid_plugin_messages(msg: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolViolation, match="malformed message") as info:
        m.check_from_plugin(msg)
    assert message in info.value.message
    assert info.value.detail


BAD_FROM_HOST = [
    ({"type": "hello", "api": 1}, "unexpected message type 'hello' from the host"),
    ({"type": "invoke", "id": 1, "hook": "h"}, "'data' missing"),
    ({"type": "invoke", "id": 1, "hook": "h", "data": 1, "deadline_ms": -1}, "'deadline_ms' must be"),
    ({"type": "ping"}, "'id' must be an integer"),
    ({"type": "welcome"}, "'api' must be an integer"),
]


@pytest.mark.parametrize(("msg", "message"), BAD_FROM_HOST, ids=lambda v: str(v)[:30])
def test_invalid_host_messages(msg: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolViolation, match="malformed message") as info:
        m.check_from_host(msg)
    assert message in info.value.message


def test_valid_host_messages() -> None:
    for msg in (m.invoke(1, "h", None, 500), m.invoke(2, "h", 1, None), {"type": "ping", "id": 1},
                {"type": "shutdown", "reason": "unload"}, {"type": "welcome", "api": 1},
                {"type": "ctx.reply", "id": 1, "ok": True}):
        assert m.check_from_host(msg) == msg["type"]


@pytest.mark.parametrize(("name", "ok"), [("on_request", True), ("a.b:c-d_9", True), ("", False),
                                          (".x", False), ("a b", False), ("x" * 129, False),
                                          ("é", False), (5, False)])
def test_hook_names(name: object, ok: bool) -> None:
    assert m.valid_hook_name(name) is ok


def test_public_api_exports_exist() -> None:
    # Order is enforced by ruff (RUF022); here: every name is real and listed once.
    import plugind.wire as wire

    for module in (wire, m):
        assert len(set(module.__all__)) == len(module.__all__)
        assert all(hasattr(module, name) for name in module.__all__)
