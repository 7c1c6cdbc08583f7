"""`POST /api/hooks/{hook}/execute`, and `POST /api/plugins/load` and `/unload`, without FastAPI's
per-request machinery.

The hook call is the API's hot path: FastAPI's routing, dependency solving, request and response
models and the layers of middleware cost the daemon several times what the hook call itself does
(bench/peers.py, REST row). `HookFastPath` sits in front of the whole FastAPI app (its own
middleware included: `app.PlugindAPI.__call__`); it answers a
well-formed, authorized hook call itself and hands everything else to the FastAPI app, so the
contract cannot drift:

- anything it does not fully understand goes to FastAPI untouched (other paths and methods, a
  missing, malformed or oversized Content-Length, a content type other than JSON, a wrong or missing
  bearer token, a body that is not valid JSON or not a valid `HookRequest`, a hook name off the
  pattern, `data` nested too deep or holding a lone surrogate, `timeout_s` over `[hooks]
  max_timeout_secs`): FastAPI answers it exactly as it
  does without the fast path (401, 404, 405, 413, 422, ...), from the body bytes already read;
- only a request with nothing to refuse runs here: the same token check (`BearerAuth.accepts`,
  constant time), the same body limit, the same boundary check of `data` (`json_problem`), the same
  `registry.hooks.run`, the same error mapping of what it raises (`app.plugin_error_reply`) and the
  same redaction of plugins' error messages; the reply is `HookReply`'s JSON (its fields, in its
  order; `jsonable`'s JSON-able values, though `encode_result` skips its walk when JSON takes the
  values as they are, for the same bytes).

With httptools the edge protocol runs `hook_of`, `call_of` and `answer` itself, without making the
call an ASGI request (plugind/api/edge.py, `GuardedHttpToolsProtocol`).

A load or unload (`action_of`, `parse_name`, `act`) is taken the same way: the same header checks,
a body that is exactly a valid `PluginNameRequest`, the registry's `load_plugin` or `unload_plugin`
as the routes call it, their reply (`load_reply`, `unload_reply`: one source for both), the same error
mapping; anything else is FastAPI's. These go through the ASGI layer only (not the edge protocol):
a load's own work dwarfs the cost of an ASGI request, not FastAPI's ~0.7 ms in front of it.

The routes stay registered in FastAPI, so the OpenAPI schema lists them and the fallback serves them.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plugind.api.auth import BearerAuth
from plugind.api.routes.hooks import redact_errors, reply_of
from plugind.api.routes.plugins import load_reply, unload_reply
from plugind.api.schemas import HOOK_PATTERN, MAX_HOOK_TIMEOUT_S, NAME_PATTERN
from plugind.config import Settings
from plugind.host.hooks import HookResult
from plugind.host.poll import LOOP_POLLING
from plugind.host.registry import PluginRegistry
from plugind.wire.limits import json_problem

log = logging.getLogger("plugind.api")

PREFIX = "/api/hooks/"
SUFFIX = "/execute"
# The plugin actions answered here too: a load's or unload's own work is the same either way, but
# FastAPI's layers added ~0.7 ms to each (bench/cold.py, from the request to the registry's call).
ACTIONS = {"/api/plugins/load": "load", "/api/plugins/unload": "unload"}
# As HOOK_PATTERN, matched whole (`$` would let a trailing newline through; FastAPI's check would not).
_HOOK = re.compile(HOOK_PATTERN.removeprefix("^").removesuffix("$"))
_NAME = re.compile(NAME_PATTERN.removeprefix("^").removesuffix("$"))
_POLICIES = frozenset(("chain", "until_error", "all"))
_FIELDS = frozenset(("data", "policy", "timeout_s"))
_JSON_TYPES = (b"application/json", b"application/json; charset=utf-8")
_HEADERS = [(b"content-type", b"application/json")]
_loads = json.loads
_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def parse_request(body: bytes) -> tuple[Any, str, float | None] | None:
    """(data, policy, timeout_s) of a body that `HookRequest` takes as it is, or None (any doubt:
    FastAPI decides). Stricter than pydantic's lax mode on purpose: e.g. "5" for timeout_s is None
    here and FastAPI's to judge."""
    try:
        value = _loads(body)
    except (ValueError, RecursionError):
        return None
    if type(value) is not dict or not _FIELDS.issuperset(value):
        return None
    policy = value.get("policy", "chain")
    if type(policy) is not str or policy not in _POLICIES:
        return None
    timeout = value.get("timeout_s")
    if timeout is not None:
        if type(timeout) not in (int, float) or not 0 < timeout <= MAX_HOOK_TIMEOUT_S:
            return None
        timeout = float(timeout)
    return value.get("data"), policy, timeout


def parse_name(body: bytes) -> str | None:
    """The plugin name of a body `PluginNameRequest` takes as it is (UTF-8 JSON, `{"plugin_name":
    NAME}` and nothing else, NAME on the pattern), or None (any doubt: FastAPI decides)."""
    try:
        value = _loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if type(value) is not dict or len(value) != 1:
        return None
    name = value.get("plugin_name")
    if type(name) is not str or _NAME.fullmatch(name) is None:
        return None
    return name


def encode_reply(reply: dict[str, Any]) -> bytes:
    """`HookReply`'s JSON of `reply` (HookResult.to_dict() made JSON-able): its fields in its order."""
    results = [
        {
            "plugin": r["plugin"],
            "outcome": r["outcome"],
            "output": r["output"],
            "error": r["error"],
            "duration_s": float(r["duration_s"]),
        }
        for r in reply["results"]
    ]
    out = {
        "hook": reply["hook"],
        "policy": reply["policy"],
        "success": reply["success"],
        "data": reply["data"],
        "results": results,
        "error": reply["error"],
        "duration_s": float(reply["duration_s"]),
    }
    encoded: bytes = _dumps(out).encode("utf-8")
    return encoded


# What a map key that is not a string (True, False, None) becomes in JSON, where `jsonable` makes it
# str(key) ("True", ...): a reply holding one of these is encoded the long way. (Only a key can end
# so: inside a string value the quote is escaped, and no value is followed by a colon.)
_ODD_KEYS = (b'true":', b'false":', b'null":')
# A key that reads as a number: a number key (1, 1.5) is written "1", as a string key "1" is, and a
# map holding both would come out with the key twice, where `jsonable` keeps one. Such a reply (a
# string key that looks like a number too) is encoded the long way. (A quote in a string value is
# escaped, and only a key is followed by `":`.)
_NUMBER_KEY = re.compile(rb'[{,]"-?[0-9][^"]*":')


def encode_result(result: HookResult) -> bytes:
    """`encode_reply(reply_of(result))`, without `jsonable`'s walk of every value when JSON takes
    them as they are (str, int, float, bool, None, lists, dicts with str or int keys: a plugin's
    usual answer). Anything else (bytes, NaN, infinities, keys that are not strings, ...) makes the
    strict encoder refuse, or leaves a mark `_ODD_KEYS` or `_NUMBER_KEY` finds: then the long way."""
    reply = redact_errors(result.to_dict())
    reply["duration_s"] = float(reply["duration_s"])
    for r in reply["results"]:
        r["duration_s"] = float(r["duration_s"])
    try:
        encoded: bytes = _dumps(reply).encode("utf-8")
    except (TypeError, ValueError):
        return encode_reply(reply_of(result))
    if any(mark in encoded for mark in _ODD_KEYS) or _NUMBER_KEY.search(encoded) is not None:
        return encode_reply(reply_of(result))
    return encoded


class HookFastPath:
    """An ASGI app in front of `app` (FastAPI): answers well-formed, authorized hook calls itself and
    hands everything else to `app` (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: PluginRegistry,
        settings: Settings,
        auth: BearerAuth,
        max_body_bytes: int,
        error_reply: Any,
    ) -> None:
        self.app = app
        self.registry = registry
        self.settings = settings
        self.auth = auth
        self.max_bytes = max_body_bytes
        self.error_reply = error_reply  # app.plugin_error_reply

    def hook_of(self, scope: Scope) -> str | None:
        """The hook of a request (an http scope) that may be answered here once its body is read:
        POST to the route, a hook name on the pattern, a JSON content type, a Content-Length within
        the body limit and the right bearer token. None: FastAPI's to answer."""
        if scope.get("method") != "POST":
            return None
        path: str = scope.get("path", "")
        if not path.startswith(PREFIX) or not path.endswith(SUFFIX):
            return None
        hook = path[len(PREFIX) : -len(SUFFIX)]
        if _HOOK.fullmatch(hook) is None or not self._admits(scope):
            return None
        return hook

    def action_of(self, scope: Scope) -> str | None:
        """"load" or "unload" for a request (an http scope) to that route that may be answered here
        once its body is read (POST, JSON, within the body limit, the right bearer token); None:
        FastAPI's to answer."""
        if scope.get("method") != "POST":
            return None
        action = ACTIONS.get(scope.get("path", ""))
        if action is None or not self._admits(scope):
            return None
        return action

    def _admits(self, scope: Scope) -> bool:
        # A JSON content type, a Content-Length within the body limit, the right bearer token. A
        # header given twice (Authorization, Content-Type) is FastAPI's to read as it reads it.
        authorization: bytes | None = None
        content_type: bytes | None = None
        declared = -1
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is not None:
                    return False
                authorization = value
            elif name == b"content-type":
                if content_type is not None:
                    return False
                content_type = value
            elif name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1  # BodyLimit's 400
        return (
            declared <= self.max_bytes
            and content_type is not None
            and content_type.lower() in _JSON_TYPES
            and self.auth.accepts("" if authorization is None else authorization.decode("latin-1"))
        )

    def call_of(self, body: bytes) -> tuple[Any, str, float | None] | None:
        """(data, policy, timeout_s) of a body with nothing to refuse (not over the body limit, a
        valid `HookRequest`, `data` within the wire's bounds, `timeout_s` within `[hooks]
        max_timeout_secs`); None: FastAPI's to answer."""
        parsed = None if len(body) > self.max_bytes else parse_request(body)
        if (
            parsed is None
            or json_problem(body, parsed[0], "data") is not None
            or (parsed[2] is not None and parsed[2] > self.settings.hooks.max_timeout_secs)
        ):
            return None
        return parsed

    async def answer(self, hook: str, call: tuple[Any, str, float | None], path: str) -> tuple[int, bytes]:
        """Run the hook call; its status and JSON body (HookReply's, or the error reply FastAPI's
        handlers give)."""
        data, policy, timeout_s = call
        LOOP_POLLING.set(False)  # this request's own task: its call does not make the loop poll
        try:
            result = await self.registry.hooks.run(hook, data, policy, timeout_s)  # type: ignore[arg-type]
            return 200, encode_result(result)
        except Exception as exc:  # a PluginError's status and label, else 500 (logged): as FastAPI's handlers
            code, answer = self.error_reply("POST", path, exc)
            return code, _dumps(answer).encode("utf-8")

    async def act(self, action: str, name: str, path: str) -> tuple[int, bytes]:
        """Load or unload `name` as the FastAPI routes do; the status and JSON body of the reply
        (ActionReply's without its unset fields, or the error reply FastAPI's handlers give)."""
        try:
            if action == "load":
                reply = load_reply(await self.registry.load_plugin(name))
            else:
                reply = unload_reply(self.registry, name, await self.registry.unload_plugin(name))
            return 200, _dumps(reply.model_dump(exclude_none=True)).encode("utf-8")
        except Exception as exc:  # as FastAPI's handlers: a PluginError's status and label, else 500
            code, answer = self.error_reply("POST", path, exc)
            return code, _dumps(answer).encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hook = action = None
        if scope["type"] == "http":
            hook = self.hook_of(scope)
            if hook is None:
                action = self.action_of(scope)
        if hook is None and action is None:
            await self.app(scope, receive, send)
            return
        # The body, bounded as BodyLimit bounds it.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # http.disconnect: nobody to answer
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_bytes and more:
                break
        body = b"".join(chunks)
        if hook is not None:
            call = None if more else self.call_of(body)
            if call is None:
                await self.app(scope, _replay(chunks, more, receive), send)
                return
            code, payload = await self.answer(hook, call, scope["path"])
        else:
            name = None if more or len(body) > self.max_bytes else parse_name(body)
            if name is None or action is None:
                await self.app(scope, _replay(chunks, more, receive), send)
                return
            code, payload = await self.act(action, name, scope["path"])
        await send(
            {
                "type": "http.response.start",
                "status": code,
                "headers": [*_HEADERS, (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _replay(chunks: list[bytes], more: bool, receive: Receive) -> Receive:
    """A `receive` that gives the messages already read again (as one), then the rest from `receive`."""
    pending: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": more}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay


__all__ = ["HookFastPath", "encode_reply", "encode_result", "parse_name", "parse_request"]
