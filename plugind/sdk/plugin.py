"""The `Plugin` object plugin authors create: hooks with priorities, on_load / on_unload, a logger."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from plugind.wire.messages import PRIORITY_RANGE, valid_hook_name


class Context(Protocol):
    """What handlers receive as `ctx`: the host's key/value store, seen through this plugin's grants."""

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key`, or `default`."""

    def set(self, key: str, value: Any) -> None:
        """Store `value` (a msgpack value) under `key`; the plugin may write only its granted keys."""

    def delete(self, key: str) -> bool:
        """Remove `key`; True if it existed."""

    def keys(self, prefix: str = "") -> list[str]:
        """Keys starting with `prefix`, sorted."""


Handler = Callable[..., Any]
F = TypeVar("F", bound=Handler)


@dataclass(frozen=True)
class HookSpec:
    """One registered handler: the hook it serves, its priority and whether it is a coroutine."""

    name: str
    priority: int
    func: Handler
    is_async: bool


class Plugin:
    """A plugin: register handlers with `@plugin.hook(name, priority=0)`, `@plugin.on_load`,
    `@plugin.on_unload`. Handlers take `(data, ctx)` and return the (new) data; lifecycle
    callbacks take `(ctx)`. Any of them may be `async def`.
    """

    def __init__(self, name: str | None = None, version: str | None = None) -> None:
        self.name = name
        self.version = version
        self.hooks: dict[str, HookSpec] = {}
        self.load_callbacks: list[Handler] = []
        self.unload_callbacks: list[Handler] = []

    def hook(self, name: str, priority: int = 0) -> Callable[[F], F]:
        """Decorator registering a handler for hook `name`.

        Raises ValueError for an invalid hook name, a priority outside 32 bits, or a second handler
        for the same hook; TypeError if `priority` is not an int.
        """
        if not valid_hook_name(name):
            raise ValueError(
                f"invalid hook name {name!r}: use 1-128 characters of letters, digits, _ . : -"
            )
        if type(priority) is not int:
            raise TypeError(f"priority of hook {name!r} must be an int, not {type(priority).__name__}")
        if not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]:
            raise ValueError(f"priority of hook {name!r} must fit in 32 bits")
        if name in self.hooks:
            raise ValueError(f"hook {name!r} already has a handler in this plugin")

        def register(func: F) -> F:
            self.hooks[name] = HookSpec(name, priority, func, inspect.iscoroutinefunction(func))
            return func

        return register

    def on_load(self, func: F) -> F:
        """Decorator: `func(ctx)` runs once after the plugin is imported, before it serves hooks."""
        self.load_callbacks.append(func)
        return func

    def on_unload(self, func: F) -> F:
        """Decorator: `func(ctx)` runs once when the host shuts the plugin down cleanly."""
        self.unload_callbacks.append(func)
        return func

    @property
    def priorities(self) -> dict[str, int]:
        """Hook name -> priority, as announced to the host."""
        return {name: spec.priority for name, spec in self.hooks.items()}

    @property
    def log(self) -> logging.Logger:
        """A logger whose records the runtime forwards to the host, tagged with this plugin's name."""
        return logging.getLogger(f"plugin.{self.name}" if self.name else "plugin")

    def __repr__(self) -> str:
        return f"<Plugin {self.name or '?'} hooks={sorted(self.hooks)}>"
