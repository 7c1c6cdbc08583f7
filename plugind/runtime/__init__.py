"""The plugin side of a child process: loads the plugin, serves hooks, proxies context.

Imports nothing from the host side (host, api, monitor, trust, sandbox).
"""

from __future__ import annotations

from plugind.runtime.child import ChildHooks, NoHooks, Runtime, load_plugin, run_child, serve_child

__all__ = [
    "ChildHooks",
    "NoHooks",
    "Runtime",
    "load_plugin",
    "run_child",
    "serve_child",
]
