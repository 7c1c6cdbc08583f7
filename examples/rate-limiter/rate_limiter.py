"""rate-limiter: at most `limit` `on_request` calls per client per window, counted in the context.

State lives in the host context under this plugin's own namespace (`rate-limiter.`), so it
survives a restart of the plugin process: `rate-limiter.count.<client>` = [window start, count].
Settings: `rate-limiter.limit` (default 100) and `rate-limiter.window_s` (default 60). The client is
`data["client"]`. Over the limit the handler raises, so `until_error` stops the request there.
"""

from __future__ import annotations

import re
import time
from typing import Any

from plugind.sdk import Plugin

plugin = Plugin()
PREFIX = "rate-limiter."
DEFAULT_LIMIT = 100
DEFAULT_WINDOW_S = 60.0
_CLIENT_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class RateLimited(RuntimeError):
    """The client is over its limit in the current window."""


@plugin.on_load
def setup(ctx: Any) -> None:
    if ctx.get(PREFIX + "limit") is None:
        ctx.set(PREFIX + "limit", DEFAULT_LIMIT)
    if ctx.get(PREFIX + "window_s") is None:
        ctx.set(PREFIX + "window_s", DEFAULT_WINDOW_S)


@plugin.hook("on_request", priority=90)
def limit(data: Any, ctx: Any) -> Any:
    client = data.get("client") if isinstance(data, dict) else None
    if not isinstance(client, str) or not _CLIENT_RE.match(client):
        raise ValueError("on_request payload needs a 'client' of 1-64 letters, digits, _ . : -")
    max_calls = int(ctx.get(PREFIX + "limit", DEFAULT_LIMIT))
    window = float(ctx.get(PREFIX + "window_s", DEFAULT_WINDOW_S))
    now = time.time()
    key = f"{PREFIX}count.{client}"
    started, count = ctx.get(key) or [now, 0]
    if now - started >= window:
        started, count = now, 0
    if count >= max_calls:
        raise RateLimited(f"client {client!r} is over {max_calls} requests per {window:g} s")
    ctx.set(key, [started, count + 1])
    remaining = max_calls - count - 1
    headers = dict(data.get("headers") or {})
    headers["x-ratelimit-remaining"] = str(remaining)
    return {**data, "headers": headers}
