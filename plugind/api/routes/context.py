"""`/api/context/{key}`: read, write and delete host context values (`host.*` keys are read-only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Path, Request

from plugind.api.routes import _deps
from plugind.api.schemas import KEY_PATTERN, ContextReply, ContextValue, ErrorReply, jsonable
from plugind.host.context import PluginContext

router = APIRouter(tags=["context"])
KeyPath = Path(pattern=KEY_PATTERN)
_ERRORS: dict[int | str, dict[str, Any]] = {c: {"model": ErrorReply} for c in (401, 403, 404, 422, 429)}


def _context(request: Request) -> PluginContext:
    ctx: PluginContext | None = _deps.registry(request).context
    if ctx is None:
        raise HTTPException(404, "no host context configured")
    return ctx


@router.get("/context/{key}", response_model=ContextReply, responses=_ERRORS)
async def get_value(request: Request, key: str = KeyPath) -> ContextReply:
    """The value of `key`; 404 when it is not set."""
    ctx = _context(request)
    if key not in ctx:
        raise HTTPException(404, f"no context key {key!r}")
    return ContextReply(key=key, value=jsonable(ctx.get(key)))


@router.put("/context/{key}", response_model=ContextReply, responses=_ERRORS)
async def put_value(request: Request, body: ContextValue, key: str = KeyPath) -> ContextReply:
    """Set `key`; 403 for a read-only `host.*` key, 422 for a value the wire cannot carry."""
    await _deps.check_value(request, body.value, "value")
    _context(request).set(key, body.value)
    return ContextReply(key=key, value=body.value)


@router.delete("/context/{key}", response_model=ContextReply, responses=_ERRORS)
async def delete_value(request: Request, key: str = KeyPath) -> ContextReply:
    """Remove `key` and return its last value; 404 when it is not set."""
    ctx = _context(request)
    if key not in ctx:
        raise HTTPException(404, f"no context key {key!r}")
    value = ctx.get(key)
    ctx.delete(key)
    return ContextReply(key=key, value=jsonable(value))
