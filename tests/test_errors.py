"""The error tree: context attributes and the round trip across the wire."""

from __future__ import annotations

import msgpack
import pytest

from plugind import errors
from plugind.errors import (
    HookFailed,
    HookTimeout,
    PluginError,
    ProtocolViolation,
    SandboxError,
    from_wire,
)


def test_every_error_is_a_plugin_error_and_exported() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, PluginError), name
    assert errors.__all__ == sorted(errors.__all__)


@pytest.mark.parametrize(
    "err",
    [
        HookTimeout("hook on_request timed out after 0.5 s", plugin="p", hook="on_request", timeout_s=0.5),
        HookFailed("boom", plugin="p", hook="h", error_type="ValueError", remote_traceback="tb"),
        SandboxError("cannot mount /proc", plugin="p", step="mounts", detail="mount: EPERM"),
    ],
    ids=["timeout", "failed", "sandbox"],
)
def test_round_trip_through_msgpack(err: PluginError) -> None:
    back = from_wire(msgpack.unpackb(msgpack.packb(err.to_wire())))
    assert type(back) is type(err)
    assert str(back) == str(err)
    assert back.context() == err.context()


def test_unknown_or_malformed_wire_errors_are_contained() -> None:
    assert type(from_wire({"type": "SystemExit", "message": "x"})) is PluginError
    bad = from_wire(["not", "a", "map"])
    assert isinstance(bad, ProtocolViolation)
    assert "malformed" in str(bad)
    # A hostile context cannot set private or dunder attributes.
    err = from_wire({"type": "HookFailed", "message": "m", "context": {"__class__": 1, "_x": 2, "hook": "h"}})
    assert type(err) is HookFailed
    assert err.hook == "h"
    assert not hasattr(err, "_x")


def test_a_peer_sets_plain_context_values_only() -> None:
    # A value nested a thousand deep made str() of it raise RecursionError in the host; a long or
    # nested list is no context any error of plugind's has.
    deep: list[object] = []
    for _ in range(999):
        deep = [deep]
    err = from_wire({"type": "InitializationError", "message": "nope",
                     "context": {"reason": deep, "detail": "x" * 20000, "caps": ["a", "b"], "n": 3,
                                 "many": list(range(65)), "nested": [[1]], "ok": None}})
    assert isinstance(err, errors.InitializationError)
    assert (err.message, err.caps, err.n) == ("nope", ["a", "b"], 3)  # type: ignore[attr-defined]
    for absent in ("reason", "detail", "many", "nested"):
        assert getattr(err, absent, None) is None, absent
    str(err.context())
