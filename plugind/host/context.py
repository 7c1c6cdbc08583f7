"""The host-side key/value context shared with plugins, and the per-plugin proxy that enforces grants.

Keys are printable, without whitespace, at most 256 characters. Values are msgpack values of at most
64 KiB once encoded. Each writer (a plugin, or the integrators) holds at most its `ContextBudget` of
keys and bytes. `host.*` keys are predefined by the host and read-only for everyone else. A
plugin reads every key, and writes or deletes only under `NAME.` and the prefixes granted to it in
`[plugin.NAME] context_grants`.
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Iterable
from typing import Any

import msgpack

import plugind
from plugind.errors import BudgetExceeded, ContextError
from plugind.host.budgets import ContextBudget
from plugind.wire.limits import depth_message, too_deep

MAX_KEY_CHARS = 256
MAX_VALUE_BYTES = 64 * 1024
MAX_LISTED_KEYS = 1_000
RESERVED_PREFIX = "host."
# Owners that are not plugins (plugin names never start with ":").
API_OWNER = ":api"
HOST_OWNER = ":host"
# Bytes charged per key beside its key and value: what the store's own bookkeeping of a key costs
# (dict slots, the key and bytes objects, the owner's set), so a budget in bytes bounds memory.
KEY_OVERHEAD = 256
DEFAULT_PLUGIN_KEYS, DEFAULT_PLUGIN_BYTES = 1000, 8 * 1024 * 1024  # as [budgets]
DEFAULT_API_KEYS, DEFAULT_API_BYTES = 10_000, 64 * 1024 * 1024


def check_key(key: object) -> str:
    """Return `key` if it is a valid context key. Raises ContextError naming the problem."""
    if not isinstance(key, str) or not key:
        raise ContextError("context key must be a non-empty string", key=str(key)[:80])
    if len(key) > MAX_KEY_CHARS:
        raise ContextError(f"context key longer than {MAX_KEY_CHARS} characters", key=key[:80])
    if not key.isprintable() or any(c.isspace() for c in key):
        raise ContextError("context key must be printable and contain no whitespace", key=repr(key)[:80])
    return key


def pack_value(value: Any) -> bytes:
    """`value` as msgpack. Raises ContextError if it is not a msgpack value."""
    try:
        packed: bytes = msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ContextError(f"context value is not a msgpack value: {exc}") from exc
    return packed


def encoded_size(value: Any) -> int:
    """Size of `value` as msgpack. Raises ContextError if it is not a msgpack value."""
    return len(pack_value(value))


def _unpack(packed: bytes) -> Any:
    return msgpack.unpackb(packed, raw=False, strict_map_key=False)


class PluginContext:
    """The store. Not thread-safe: use it from the daemon's event loop.

    Every key has an owner, whoever wrote it last: a plugin (by name), the integrators
    (`API_OWNER`: the REST API and host code) or the host (`host.*`). Each owner but the host has a
    `ContextBudget` of keys and bytes, so no plugin can fill the store for the others; `release(owner)`
    drops what an owner holds (the registry calls it when a plugin is unloaded). Values are kept
    msgpack-encoded, so the bytes counted are the bytes held, whatever the value's shape.
    """

    def __init__(
        self,
        *,
        max_value_bytes: int = MAX_VALUE_BYTES,
        max_keys: int | None = None,
        api_budget: ContextBudget | None = None,
        predefined: dict[str, Any] | None = None,
    ) -> None:
        self.max_value_bytes = max_value_bytes
        self.max_keys = max_keys  # an optional cap over everyone, for library use; the daemon has none
        self.api_budget = api_budget or ContextBudget(DEFAULT_API_KEYS, DEFAULT_API_BYTES)
        self._data: dict[str, bytes] = {}
        # Every key, sorted: a listing by prefix is a search and a slice, not a scan and a sort of
        # the whole store (which a plugin asking again and again made a stall of the event loop).
        self._sorted: list[str] = []
        self._owner: dict[str, str] = {}
        self._charge: dict[str, int] = {}
        self._keys_of: dict[str, set[str]] = {}
        self._bytes_of: dict[str, int] = {}
        builtin = {
            "host.version": plugind.__version__,
            "host.started_at": time.time(),
            "host.pid": os.getpid(),
            "host.hostname": os.uname().nodename,
        }
        for key, value in (builtin | (predefined or {})).items():
            self.set_predefined(key, value)

    def set_predefined(self, key: str, value: Any) -> None:
        """Set a read-only `host.*` key (host code only). Raises ContextError."""
        check_key(key)
        if not key.startswith(RESERVED_PREFIX):
            raise ContextError(f"predefined keys live under {RESERVED_PREFIX!r}", key=key)
        self._store(key, self._pack(key, value), HOST_OWNER)

    def _pack(self, key: str, value: Any) -> bytes:
        if too_deep(value):  # stored, it would fail every reader that has to encode it again
            raise ContextError(depth_message(f"context value for {key!r}"), key=key)
        packed = pack_value(value)
        if len(packed) > self.max_value_bytes:
            raise ContextError(
                f"context value for {key!r} is {len(packed)} bytes; the limit is {self.max_value_bytes}",
                key=key,
            )
        return packed

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key`, or `default`. Raises ContextError for an invalid key."""
        packed = self._data.get(check_key(key))
        return default if packed is None else _unpack(packed)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def set(
        self, key: str, value: Any, *, owner: str = API_OWNER, budget: ContextBudget | None = None
    ) -> None:
        """Store `value` under `key`, owned by `owner` (default the integrators, under `api_budget`).

        Raises ContextError for an invalid or reserved key, a value that is not msgpack or too big,
        or a full store; BudgetExceeded when `owner` would hold more keys or bytes than `budget`.
        """
        check_key(key)
        if key.startswith(RESERVED_PREFIX):
            raise ContextError(f"{key!r} is a predefined host key and is read-only", key=key)
        packed = self._pack(key, value)
        if self.max_keys is not None and key not in self._data and len(self._data) >= self.max_keys:
            raise ContextError(f"context is full ({self.max_keys} keys)", key=key)
        self._check_budget(key, len(key) + len(packed) + KEY_OVERHEAD, owner, budget or self.api_budget)
        self._store(key, packed, owner)

    def _check_budget(self, key: str, charge: int, owner: str, budget: ContextBudget) -> None:
        keys = len(self._keys_of.get(owner, ()))
        used = self._bytes_of.get(owner, 0)
        if self._owner.get(key) == owner:  # an overwrite of its own key replaces its charge
            used -= self._charge[key]
        else:
            keys += 1
        who = "integrators' context writes" if owner == API_OWNER else f"plugin {owner!r}"
        where = "[budgets] api_context_" if owner == API_OWNER else f"[plugin.{owner}.budgets] context_"
        plugin = None if owner == API_OWNER else owner
        if keys > budget.keys:
            raise BudgetExceeded(
                f"{who} may hold {budget.keys} context keys and hold {keys - 1}: delete some, or raise "
                f"{where}keys", plugin=plugin, budget="context_keys", limit=budget.keys)
        if used + charge > budget.bytes:
            raise BudgetExceeded(
                f"{who} may hold {budget.bytes} bytes of context and hold {used}; {key!r} needs {charge} "
                f"more: delete some, or raise {where}bytes", plugin=plugin, budget="context_bytes",
                limit=budget.bytes)

    def _store(self, key: str, packed: bytes, owner: str) -> None:
        self._drop(key)
        self._data[key] = packed
        bisect.insort(self._sorted, key)
        self._owner[key] = owner
        self._charge[key] = charge = len(key) + len(packed) + KEY_OVERHEAD
        self._keys_of.setdefault(owner, set()).add(key)
        self._bytes_of[owner] = self._bytes_of.get(owner, 0) + charge

    def _drop(self, key: str) -> bool:
        if self._data.pop(key, None) is None:
            return False
        del self._sorted[bisect.bisect_left(self._sorted, key)]
        owner = self._owner.pop(key)
        charge = self._charge.pop(key)
        keys = self._keys_of[owner]
        keys.discard(key)
        self._bytes_of[owner] -= charge
        if not keys:
            del self._keys_of[owner], self._bytes_of[owner]
        return True

    def delete(self, key: str) -> bool:
        """Remove `key`; True if it existed. Raises ContextError for an invalid or reserved key."""
        check_key(key)
        if key.startswith(RESERVED_PREFIX):
            raise ContextError(f"{key!r} is a predefined host key and cannot be deleted", key=key)
        return self._drop(key)

    def release(self, owner: str) -> int:
        """Drop every key `owner` holds (a plugin being unloaded); returns how many."""
        keys = list(self._keys_of.get(owner, ()))
        for key in keys:
            self._drop(key)
        return len(keys)

    def usage(self, owner: str) -> tuple[int, int]:
        """(keys, bytes) that `owner` holds, as counted against its budget."""
        return len(self._keys_of.get(owner, ())), self._bytes_of.get(owner, 0)

    def keys(self, prefix: str = "") -> list[str]:
        """Keys starting with `prefix`, sorted (at most 1000)."""
        keys = self._sorted
        start = bisect.bisect_left(keys, prefix)
        out = keys[start : start + MAX_LISTED_KEYS]
        # Sorted, the keys with the prefix come first, all together: where they end, by halves.
        lo, hi = 0, len(out)
        while lo < hi:
            mid = (lo + hi) // 2
            if out[mid].startswith(prefix):
                lo = mid + 1
            else:
                hi = mid
        return out[:lo]

    def snapshot(self) -> dict[str, Any]:
        """A copy of the whole store."""
        return {k: _unpack(v) for k, v in self._data.items()}

    def proxy_for(
        self, name: str, grants: Iterable[str] = (), budget: ContextBudget | None = None
    ) -> ContextProxy:
        """The view plugin `name` gets: reads anything, writes `NAME.` and `grants`, holds at most
        `budget` (default: the built-in plugin budget)."""
        return ContextProxy(self, name, grants, budget)


class ContextProxy:
    """One plugin's access to the context, answering its ctx.* requests."""

    def __init__(
        self,
        context: PluginContext,
        name: str,
        grants: Iterable[str] = (),
        budget: ContextBudget | None = None,
    ) -> None:
        self.context = context
        self.name = name
        self.budget = budget or ContextBudget(DEFAULT_PLUGIN_KEYS, DEFAULT_PLUGIN_BYTES)
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
        """Store `value` if `key` is granted, owned by this plugin and counted against its budget.
        Raises ContextError, BudgetExceeded."""
        self._check_write(key)
        self.context.set(key, value, owner=self.name, budget=self.budget)

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
    "API_OWNER",
    "ContextProxy",
    "PluginContext",
    "check_key",
]
