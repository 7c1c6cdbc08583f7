"""The host-side key/value context shared with plugins, and the per-plugin proxy that enforces grants.

Keys are printable, without whitespace, at most 256 characters. Values are msgpack values of at most
64 KiB once encoded. `host.*` keys are predefined by the host and read-only for everyone else. A
plugin reads every key, and writes or deletes only under `NAME.` and the prefixes granted to it in
`[plugin.NAME] context_grants`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

import msgpack

import plugind
from plugind.errors import ContextError
from plugind.wire.limits import depth_message, too_deep

MAX_KEY_CHARS = 256
MAX_VALUE_BYTES = 64 * 1024
MAX_KEYS = 10_000
MAX_LISTED_KEYS = 1_000
RESERVED_PREFIX = "host."


def check_key(key: object) -> str:
    """Return `key` if it is a valid context key. Raises ContextError naming the problem."""
    if not isinstance(key, str) or not key:
        raise ContextError("context key must be a non-empty string", key=str(key)[:80])
    if len(key) > MAX_KEY_CHARS:
        raise ContextError(f"context key longer than {MAX_KEY_CHARS} characters", key=key[:80])
    if not key.isprintable() or any(c.isspace() for c in key):
        raise ContextError("context key must be printable and contain no whitespace", key=repr(key)[:80])
    return key


def encoded_size(value: Any) -> int:
    """Size of `value` as msgpack. Raises ContextError if it is not a msgpack value."""
    try:
        return len(msgpack.packb(value, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        raise ContextError(f"context value is not a msgpack value: {exc}") from exc


class PluginContext:
    """The store. Not thread-safe: use it from the daemon's event loop."""

    def __init__(
        self,
        *,
        max_value_bytes: int = MAX_VALUE_BYTES,
        max_keys: int = MAX_KEYS,
        predefined: dict[str, Any] | None = None,
    ) -> None:
        self.max_value_bytes = max_value_bytes
        self.max_keys = max_keys
        self._data: dict[str, Any] = {
            "host.version": plugind.__version__,
            "host.started_at": time.time(),
            "host.pid": os.getpid(),
            "host.hostname": os.uname().nodename,
        }
        for key, value in (predefined or {}).items():
            self.set_predefined(key, value)

    def set_predefined(self, key: str, value: Any) -> None:
        """Set a read-only `host.*` key (host code only). Raises ContextError."""
        check_key(key)
        if not key.startswith(RESERVED_PREFIX):
            raise ContextError(f"predefined keys live under {RESERVED_PREFIX!r}", key=key)
        self._check_value(key, value)
        self._data[key] = value

    def _check_value(self, key: str, value: Any) -> None:
        size = encoded_size(value)
        if size > self.max_value_bytes:
            raise ContextError(
                f"context value for {key!r} is {size} bytes; the limit is {self.max_value_bytes}", key=key
            )
        if too_deep(value):  # stored, it would fail every reader that has to encode it again
            raise ContextError(depth_message(f"context value for {key!r}"), key=key)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key`, or `default`. Raises ContextError for an invalid key."""
        return self._data.get(check_key(key), default)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def set(self, key: str, value: Any) -> None:
        """Store `value` under `key`. Raises ContextError for an invalid or reserved key, a value that is
        not msgpack or too big, or a full store."""
        check_key(key)
        if key.startswith(RESERVED_PREFIX):
            raise ContextError(f"{key!r} is a predefined host key and is read-only", key=key)
        self._check_value(key, value)
        if key not in self._data and len(self._data) >= self.max_keys:
            raise ContextError(f"context is full ({self.max_keys} keys)", key=key)
        self._data[key] = value

    def delete(self, key: str) -> bool:
        """Remove `key`; True if it existed. Raises ContextError for an invalid or reserved key."""
        check_key(key)
        if key.startswith(RESERVED_PREFIX):
            raise ContextError(f"{key!r} is a predefined host key and cannot be deleted", key=key)
        return self._data.pop(key, _MISSING) is not _MISSING

    def keys(self, prefix: str = "") -> list[str]:
        """Keys starting with `prefix`, sorted (at most 1000)."""
        return sorted(k for k in self._data if k.startswith(prefix))[:MAX_LISTED_KEYS]

    def snapshot(self) -> dict[str, Any]:
        """A shallow copy of the whole store."""
        return dict(self._data)

    def proxy_for(self, name: str, grants: Iterable[str] = ()) -> ContextProxy:
        """The view plugin `name` gets: reads anything, writes `NAME.` and `grants`."""
        return ContextProxy(self, name, grants)


_MISSING = object()


class ContextProxy:
    """One plugin's access to the context, answering its ctx.* requests."""

    def __init__(self, context: PluginContext, name: str, grants: Iterable[str] = ()) -> None:
        self.context = context
        self.name = name
        # An empty grant would allow everything: ignore it, and never grant the reserved namespace.
        granted = (g for g in grants if g and not g.startswith(RESERVED_PREFIX))
        self.prefixes = (f"{name}.", *granted)

    def may_write(self, key: str) -> bool:
        """True if this plugin may set or delete `key`."""
        return key.startswith(self.prefixes)

    def _check_write(self, key: str) -> None:
        check_key(key)
        if not self.may_write(key):
            raise ContextError(
                f"plugin {self.name!r} may not write context key {key!r}: it writes under "
                f"{self.name + '.'!r} unless [plugin.{self.name}] context_grants lists the prefix",
                plugin=self.name,
                key=key,
            )

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key`, or `default`. Raises ContextError for an invalid key."""
        return self.context.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Store `value` if `key` is granted. Raises ContextError."""
        self._check_write(key)
        self.context.set(key, value)

    def delete(self, key: str) -> bool:
        """Remove `key` if granted; True if it existed. Raises ContextError."""
        self._check_write(key)
        return self.context.delete(key)

    def keys(self, prefix: str = "") -> list[str]:
        """Keys starting with `prefix`, sorted."""
        return self.context.keys(prefix)

    def handle(self, kind: str, msg: dict[str, Any]) -> dict[str, Any]:
        """Answer one checked ctx.* message: the fields of the ctx.reply. Raises ContextError."""
        if kind == "ctx.get":
            key = msg["key"]
            check_key(key)
            if key in self.context:
                return {"found": True, "value": self.context.get(key)}
            return {"found": False, "value": None}
        if kind == "ctx.set":
            self.set(msg["key"], msg["value"])
            return {}
        if kind == "ctx.delete":
            return {"found": self.delete(msg["key"])}
        prefix = msg.get("prefix") or ""
        return {"keys": self.keys(prefix)}


__all__ = [
    "ContextProxy",
    "PluginContext",
    "check_key",
]
