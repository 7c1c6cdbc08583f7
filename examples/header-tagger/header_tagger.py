"""header-tagger: adds `x-plugind-host` and `x-plugind-tag` headers to `on_request` payloads.

The tag comes from the context key `header-tagger.tag` (set at load, changeable by the operator
with `PUT /api/context/header-tagger.tag`); the host version from the predefined `host.version`.
"""

from __future__ import annotations

from typing import Any

from plugind.sdk import Plugin

plugin = Plugin()
TAG_KEY = "header-tagger.tag"


@plugin.on_load
def setup(ctx: Any) -> None:
    if ctx.get(TAG_KEY) is None:
        ctx.set(TAG_KEY, "tagged")


@plugin.hook("on_request", priority=10)
def tag(data: Any, ctx: Any) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"on_request payload must be a map, got {type(data).__name__}")
    headers = dict(data.get("headers") or {})
    headers["x-plugind-tag"] = str(ctx.get(TAG_KEY, "tagged"))
    host = ctx.get("host.version")
    if host is not None:
        headers["x-plugind-host"] = str(host)
    return {**data, "headers": headers}
