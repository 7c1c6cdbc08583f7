"""`plugind new NAME`: scaffold a working plugin directory (plugin.toml, a module, a test)."""

from __future__ import annotations

import argparse

_MANIFEST = """\
[plugin]
name = "{name}"
version = "0.1.0"
entrypoint = "{module}:plugin"
api = 1
description = "{name}: describe what it does"

# What the plugin asks for; the operator's config decides what it gets.
# [plugin.requires]
# network = ["api.example.com:443"]
# memory_mb = 64
"""

_MODULE = '''\
"""{name}: a plugind plugin. Hooks receive msgpack values (dict, list, str, int, ...) and the context."""

from __future__ import annotations

from typing import Any

from plugind.sdk import Plugin

plugin = Plugin()
GREETING_KEY = "{name}.greeting"  # a plugin writes context keys under its own "{name}." prefix


@plugin.on_load
def setup(ctx: Any) -> None:
    ctx.set(GREETING_KEY, "hello from {name}")


@plugin.hook("on_request", priority=10)
def tag(data: Any, ctx: Any) -> Any:
    headers = dict(data.get("headers") or {{}})
    headers["x-{name}"] = ctx.get(GREETING_KEY)
    return {{**data, "headers": headers}}
'''

_TEST = '''\
"""Tests of {name}, run with `python -m pytest` in this directory (no daemon needed)."""

from __future__ import annotations

from plugind.sdk.testing import PluginHarness

from {module} import GREETING_KEY, plugin


def test_on_request_adds_the_greeting_header() -> None:
    h = PluginHarness(plugin, context={{}})
    h.load()
    try:
        out = h.call("on_request", {{"headers": {{"accept": "*/*"}}}})
    finally:
        h.unload()
    assert out == {{"headers": {{"accept": "*/*", "x-{name}": "hello from {name}"}}}}
    assert h.context[GREETING_KEY] == "hello from {name}"
'''

_GITIGNORE = "__pycache__/\n*.pyc\n.pytest_cache/\n*.plugin\n*.plugin.sig\n"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the new command."""
    p = subparsers.add_parser("new", help="scaffold a plugin directory with a hook and a test")
    p.add_argument("name", metavar="NAME", help="plugin name, [a-z0-9][a-z0-9_-]{0,62}")
    p.add_argument("--dir", metavar="DIR", help="directory to create (default ./NAME)")
    p.set_defaults(func=run_new)


def module_name(name: str) -> str:
    """The Python module name for plugin `name` (dashes become underscores; must not start with a digit)."""
    module = name.replace("-", "_")
    return module if module.isidentifier() else f"plugin_{module}"


def run_new(args: argparse.Namespace) -> int:
    """Create the directory. Raises PluginError (bad name, directory exists and is not empty)."""
    import os
    from pathlib import Path

    from plugind.config import PLUGIN_NAME_RE
    from plugind.errors import PluginError

    name = args.name
    if not PLUGIN_NAME_RE.match(name):
        raise PluginError(f"plugin name {name!r} must match [a-z0-9][a-z0-9_-]{{0,62}}")
    target = Path(args.dir) if args.dir else Path(name)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise PluginError(f"{target} already exists and is not empty; choose another --dir")
    module = module_name(name)
    files = {
        "plugin.toml": _MANIFEST.format(name=name, module=module),
        f"{module}.py": _MODULE.format(name=name),
        f"test_{module}.py": _TEST.format(name=name, module=module),
        ".gitignore": _GITIGNORE,
    }
    target.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        fd = os.open(target / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    print(f"created {target}/ with {', '.join(files)}")
    print(f"next: cd {target} && python -m pytest -q, then plugind pack {target} and plugind sign")
    return 0
