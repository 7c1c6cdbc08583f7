"""The plugin SDK: what plugin authors import. Imports nothing from the host side.

```python
from plugind.sdk import Plugin
plugin = Plugin()

@plugin.hook("on_request", priority=10)
def tag(data, ctx):
    return data
```

The well-known hook names are constants (`ON_REQUEST`, `ON_ERROR`, ...); see `plugind.sdk.hooknames`
for which the host fires itself.
"""

from __future__ import annotations

from plugind.sdk.hooknames import (
    HOST_FIRED,
    INTEGRATOR_FIRED,
    ON_ERROR,
    ON_REQUEST,
    ON_RESPONSE,
    ON_SHUTDOWN,
    ON_STARTUP,
)
from plugind.sdk.plugin import Context, HookSpec, Plugin

__all__ = [
    "HOST_FIRED",
    "INTEGRATOR_FIRED",
    "ON_ERROR",
    "ON_REQUEST",
    "ON_RESPONSE",
    "ON_SHUTDOWN",
    "ON_STARTUP",
    "Context",
    "HookSpec",
    "Plugin",
]
