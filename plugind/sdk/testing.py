"""Test a plugin in-process, without a host: `PluginHarness(plugin).load(); harness.call(hook, data)`.

Payloads and context values go through msgpack on the way in and out, as they would on the wire,
so a handler returning something the host could not receive (not msgpack, nested deeper than the
host accepts, larger than the default frame size) fails here too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from typing import Any

import msgpack

from plugind.sdk.plugin import Handler, Plugin
from plugind.wire.frames import DEFAULT_MAX_FRAME
from plugind.wire.limits import depth_message, too_deep


def _wire(value: Any) -> Any:
    try:
        packed = msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"not a msgpack value, the host could not receive it: {exc}") from exc
    # The host's own limits (plugind.wire.limits, the default frame size): it would refuse the call.
    if too_deep(value):
        raise TypeError(depth_message("value") + ", the host would refuse it")
    if len(packed) > DEFAULT_MAX_FRAME:
        raise TypeError(f"value of {len(packed)} bytes exceeds the default maximum frame size of "
                        f"{DEFAULT_MAX_FRAME} bytes, the host could not receive it")
    return msgpack.unpackb(packed, raw=False, strict_map_key=False)


class DictContext:
    """A `Context` over a plain dict (the harness's; no grants are enforced)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key`, or `default`."""
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Store a msgpack value. Raises TypeError for anything the wire cannot carry."""
        self.data[key] = _wire(value)

    def delete(self, key: str) -> bool:
        """Remove `key`; True if it existed."""
        return self.data.pop(key, None) is not None

    def keys(self, prefix: str = "") -> list[str]:
        """Keys starting with `prefix`, sorted."""
        return sorted(k for k in self.data if k.startswith(prefix))


class PluginHarness:
    """Drive a `Plugin` the way the runtime does, in the current process.

    `.context` is the dict behind `ctx`; pass `context=` to start from given values.
    """

    def __init__(self, plugin: Plugin, context: dict[str, Any] | None = None) -> None:
        self.plugin = plugin
        self.context: dict[str, Any] = context if context is not None else {}
        self._ctx = DictContext(self.context)
        self.loaded = False

    def _run(self, func: Handler, *args: Any) -> Any:
        if not inspect.iscoroutinefunction(func):
            return func(*args)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(func(*args))
        # Called from async test code: a loop already runs in this thread, so use another thread.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, func(*args)).result()

    def load(self) -> None:
        """Run the on_load callbacks. Raises whatever they raise."""
        for cb in self.plugin.load_callbacks:
            self._run(cb, self._ctx)
        self.loaded = True

    def call(self, hook: str, data: Any = None) -> Any:
        """Call the handler of `hook` with `data`; return its result.

        Raises KeyError if the plugin has no handler for `hook`, TypeError if `data` or the result
        is not a msgpack value, and whatever the handler raises.
        """
        spec = self.plugin.hooks.get(hook)
        if spec is None:
            raise KeyError(f"plugin has no handler for hook {hook!r}")
        return _wire(self._run(spec.func, _wire(data), self._ctx))

    def unload(self) -> None:
        """Run the on_unload callbacks. Raises whatever they raise."""
        for cb in self.plugin.unload_callbacks:
            self._run(cb, self._ctx)
        self.loaded = False


__all__ = [
    "DictContext",
    "PluginHarness",
]
