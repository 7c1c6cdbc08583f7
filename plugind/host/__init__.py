"""plugind.host: the host side as a library (registry, loader, hooks, context, supervisor, launcher).

```python
registry = PluginRegistry(settings, loader=PluginLoader(settings, security),
                          supervisor_factory=Supervisor, context=PluginContext(), launcher=launcher)
await registry.start()                      # scan, restore or auto-load, on_startup
result = await registry.hooks.execute("on_request", data)
done = await registry.upgrade_plugin("hello")   # -> UpgradeResult; no call is dropped
```
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plugind.host.context import ContextProxy, PluginContext
    from plugind.host.hooks import HookOutcome, HookRegistry, HookResult
    from plugind.host.launcher import Launcher
    from plugind.host.loader import LoadedBundle, PluginLoader
    from plugind.host.registry import AvailablePlugin, LoadedPlugin, PluginRegistry
    from plugind.host.supervisor import Supervisor
    from plugind.host.upgrade import UpgradeResult

# Imported on first use: the fork-server imports plugind.host.forkserver and must not pay for the
# registry, FastAPI-free as it is, nor for prometheus_client.
_WHERE = {
    "AvailablePlugin": "registry",
    "ContextProxy": "context",
    "HookOutcome": "hooks",
    "HookRegistry": "hooks",
    "HookResult": "hooks",
    "Launcher": "launcher",
    "LoadedBundle": "loader",
    "LoadedPlugin": "registry",
    "PluginContext": "context",
    "PluginLoader": "loader",
    "PluginRegistry": "registry",
    "Supervisor": "supervisor",
    "UpgradeResult": "upgrade",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'plugind.host' has no attribute {name!r}")
    return getattr(importlib.import_module(f"plugind.host.{module}"), name)


__all__ = [
    "AvailablePlugin",
    "ContextProxy",
    "HookOutcome",
    "HookRegistry",
    "HookResult",
    "Launcher",
    "LoadedBundle",
    "LoadedPlugin",
    "PluginContext",
    "PluginLoader",
    "PluginRegistry",
    "Supervisor",
    "UpgradeResult",
]
