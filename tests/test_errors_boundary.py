"""An error rebuilt from a peer's data: its context adds attributes, never replaces what the class
defines or the message (a hostile plugin's list there once turned the API's reply into a 500)."""

from __future__ import annotations

from typing import Any

import pytest

from plugind.errors import HookFailed, from_wire


@pytest.mark.parametrize(("key", "value"), [
    ("message", [[["not", "a", "string"]]]),
    ("args", 5),
    ("code", {"x": 1}),
    ("with_traceback", "shadowed"),
    ("to_wire", None),
], ids=["message", "args", "code", "method", "own-method"])
def test_context_cannot_replace_what_the_error_is(key: str, value: Any) -> None:
    err = from_wire({"type": "HookFailed", "message": "boom",
                     "context": {key: value, "error_type": "ValueError"}})
    assert type(err) is HookFailed
    assert err.message == "boom" and str(err) == "boom"
    assert err.error_type == "ValueError"  # type: ignore[attr-defined]  # context still adds attributes
    assert err.code == "failed"
    assert callable(err.with_traceback) and callable(err.to_wire)
    assert err.to_wire()["message"] == "boom"


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("message", [_nested(1000), 5, None, {"a": "b"}],
                         ids=["nested-1000", "int", "nil", "map"])
def test_a_message_that_is_not_a_string_is_named_not_rendered(message: Any) -> None:
    err = from_wire({"type": "HookFailed", "message": message})
    assert type(err) is HookFailed
    assert err.message == f"(malformed error message: {type(message).__name__})"
