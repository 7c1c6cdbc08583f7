"""The plugin SDK: what plugin authors import. Imports nothing from the host side.

```python
from plugind.sdk import Plugin
plugin = Plugin()

@plugin.hook("on_request", priority=10)
def tag(data, ctx):
    return data
```
"""

from __future__ import annotations

from plugind.sdk.plugin import Context, HookSpec, Plugin

__all__ = [
    "Context",
    "HookSpec",
    "Plugin",
]
