"""Message types of protocol api 1, their fields, and the checks every received message passes.

The full description for implementers in other languages is docs/protocol.md; keep both in step.
"""

from __future__ import annotations

import re
from typing import Any

from plugind.errors import ProtocolViolation

API_VERSION = 1

# plugin -> host
HELLO = "hello"
FATAL = "fatal"
RESULT = "result"
PONG = "pong"
LOG = "log"
CTX_GET = "ctx.get"
CTX_SET = "ctx.set"
CTX_DELETE = "ctx.delete"
CTX_KEYS = "ctx.keys"
# host -> plugin
WELCOME = "welcome"
INVOKE = "invoke"
PING = "ping"
SHUTDOWN = "shutdown"
CTX_REPLY = "ctx.reply"

# spare -> daemon, on the unsandboxed spare's own socket (not a frame): it has rehearsed and takes a
# request at once (plugind/host/forkserver.py)
SPARE_READY = b"ready"

CTX_TYPES = frozenset({CTX_GET, CTX_SET, CTX_DELETE, CTX_KEYS})
FROM_PLUGIN = frozenset({HELLO, FATAL, RESULT, PONG, LOG}) | CTX_TYPES
FROM_HOST = frozenset({WELCOME, INVOKE, PING, SHUTDOWN, CTX_REPLY})

MAX_ID = 2**63 - 1
MAX_HOOKS = 256
MAX_HOOK_NAME = 128  # characters (HOOK_NAME_RE allows no more)
HOOK_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")
PRIORITY_RANGE = (-(2**31), 2**31 - 1)
MAX_LOG_CHARS = 8192
LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def _bad(detail: str) -> ProtocolViolation:
    return ProtocolViolation(f"malformed message: {detail}", detail=detail)


def _id(msg: dict[str, Any]) -> int:
    value = msg.get("id")
    if type(value) is not int or not 0 <= value <= MAX_ID:
        raise _bad(f"{msg['type']}: 'id' must be an integer in 0..2**63-1")
    return value


def _str(msg: dict[str, Any], field: str, max_len: int = 256, *, optional: bool = False) -> str | None:
    value = msg.get(field)
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise _bad(f"{msg['type']}: '{field}' must be a string of at most {max_len} characters")
    return value


def valid_hook_name(name: object) -> bool:
    """True if `name` may name a hook: 1-128 characters of [A-Za-z0-9_.:-], not starting with . : -."""
    return isinstance(name, str) and HOOK_NAME_RE.match(name) is not None


def check_hooks(hooks: object) -> dict[str, int]:
    """Validate a hello's hooks map (hook name -> priority). Raises ProtocolViolation."""
    if not isinstance(hooks, dict) or len(hooks) > MAX_HOOKS:
        raise _bad(f"hello: 'hooks' must be a map of at most {MAX_HOOKS} entries")
    out: dict[str, int] = {}
    lo, hi = PRIORITY_RANGE
    for name, prio in hooks.items():
        if not valid_hook_name(name):
            raise _bad(f"hello: invalid hook name {str(name)[:80]!r}")
        if type(prio) is not int or not lo <= prio <= hi:
            raise _bad(f"hello: priority of {name!r} must be a 32-bit integer")
        out[name] = prio
    return out


def check_from_plugin(msg: dict[str, Any]) -> str:
    """Check a message the host received; return its type. Raises ProtocolViolation."""
    kind = msg["type"]
    if kind == RESULT:
        _id(msg)
        ok = msg.get("ok")
        if ok is True:
            if "data" not in msg:
                raise _bad("result: 'data' missing")
        elif ok is False:
            if not isinstance(msg.get("error"), dict):
                raise _bad("result: 'error' must be a map")
        else:
            raise _bad("result: 'ok' must be a boolean")
    elif kind == PONG:
        _id(msg)
    elif kind == LOG:
        level = msg.get("level")
        if level not in LOG_LEVELS:
            raise _bad("log: 'level' must be one of debug, info, warning, error, critical")
        if not isinstance(msg.get("msg"), str):
            raise _bad("log: 'msg' must be a string")
        _str(msg, "logger", optional=True)
    elif kind in CTX_TYPES:
        _id(msg)
        if kind == CTX_KEYS:
            _str(msg, "prefix", optional=True)
        else:
            _str(msg, "key", max_len=1024)
            if kind == CTX_SET and "value" not in msg:
                raise _bad("ctx.set: 'value' missing")
    elif kind == HELLO:
        if type(msg.get("api")) is not int:
            raise _bad("hello: 'api' must be an integer")
        _str(msg, "name", max_len=64)
        _str(msg, "version", max_len=64, optional=True)
        check_hooks(msg.get("hooks"))
    elif kind == FATAL:
        if not isinstance(msg.get("error"), dict):
            raise _bad("fatal: 'error' must be a map")
    else:
        raise _bad(f"unexpected message type {kind[:40]!r} from a plugin")
    return kind


def check_from_host(msg: dict[str, Any]) -> str:
    """Check a message the plugin received; return its type. Raises ProtocolViolation."""
    kind = msg["type"]
    if kind == INVOKE:
        _id(msg)
        _str(msg, "hook", max_len=MAX_HOOK_NAME)
        if "data" not in msg:
            raise _bad("invoke: 'data' missing")
        deadline = msg.get("deadline_ms")
        if deadline is not None and (type(deadline) not in (int, float) or deadline < 0):
            raise _bad("invoke: 'deadline_ms' must be a non-negative number")
    elif kind in (PING, CTX_REPLY):
        _id(msg)
    elif kind == WELCOME:
        if type(msg.get("api")) is not int:
            raise _bad("welcome: 'api' must be an integer")
    elif kind == SHUTDOWN:
        _str(msg, "reason", max_len=1024, optional=True)
    else:
        raise _bad(f"unexpected message type {kind[:40]!r} from the host")
    return kind


def hello(name: str, version: str, hooks: dict[str, int], *, pid: int | None = None) -> dict[str, Any]:
    """The plugin's first message."""
    return {"type": HELLO, "api": API_VERSION, "name": name, "version": version, "hooks": hooks,
            "pid": pid}


def invoke(call_id: int, hook: str, data: Any, deadline_ms: float | None, *,
           cpu: int | None = None) -> dict[str, Any]:
    """A hook call from the host; `cpu`: the CPU it is sent from (optional)."""
    msg = {"type": INVOKE, "id": call_id, "hook": hook, "data": data, "deadline_ms": deadline_ms}
    if cpu is not None:
        msg["cpu"] = cpu
    return msg


def result_ok(call_id: int, data: Any, *, cpu: int | None = None) -> dict[str, Any]:
    """A successful hook result; `cpu`: the CPU the plugin answered on (optional)."""
    msg = {"type": RESULT, "id": call_id, "ok": True, "data": data}
    if cpu is not None:
        msg["cpu"] = cpu
    return msg


def result_error(call_id: int, error: dict[str, Any], *, late: bool = False) -> dict[str, Any]:
    """A failed hook result; `error` is `PluginError.to_wire()` data."""
    return {"type": RESULT, "id": call_id, "ok": False, "error": error, "late": late}


__all__ = [
    "API_VERSION",
    "CTX_DELETE",
    "CTX_GET",
    "CTX_KEYS",
    "CTX_REPLY",
    "CTX_SET",
    "CTX_TYPES",
    "FATAL",
    "FROM_HOST",
    "FROM_PLUGIN",
    "HELLO",
    "INVOKE",
    "LOG",
    "LOG_LEVELS",
    "MAX_HOOKS",
    "MAX_HOOK_NAME",
    "PING",
    "PONG",
    "RESULT",
    "SHUTDOWN",
    "WELCOME",
    "check_from_host",
    "check_from_plugin",
    "check_hooks",
    "hello",
    "invoke",
    "result_error",
    "result_ok",
    "valid_hook_name",
]
