"""The FastAPI application factory: routes, auth, error mapping and the request body limit.

The app holds no business logic: it validates input, calls the `PluginRegistry` and maps the error
tree to status codes (404 unknown, 403 untrusted or tampered, 409 already loaded / not loaded,
422 bad input, 429 over a budget, 500 failed init). Every error message is redacted as the log is.
Nothing blocking runs on the event loop.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plugind import __version__
from plugind.api.auth import BearerAuth
from plugind.api.fastpath import HookFastPath
from plugind.api.routes import audit as audit_routes
from plugind.api.routes import context as context_routes
from plugind.api.routes import hooks as hook_routes
from plugind.api.routes import monitoring as monitoring_routes
from plugind.api.routes import plugins as plugin_routes
from plugind.api.routes import system as system_routes
from plugind.config import Settings
from plugind.errors import (
    AlreadyLoaded,
    BudgetExceeded,
    ContextError,
    LoadError,
    NotLoaded,
    PluginBusy,
    PluginError,
    PluginNotFound,
    SecurityError,
)
from plugind.host.context import RESERVED_PREFIX
from plugind.host.registry import PluginRegistry
from plugind.logs import redact
from plugind.wire.limits import depth_message

log = logging.getLogger("plugind.api")

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def status_for(exc: PluginError) -> int:
    """The HTTP status of a plugind error."""
    if isinstance(exc, PluginNotFound):
        return 404
    if isinstance(exc, SecurityError):
        return 403
    if isinstance(exc, (AlreadyLoaded, NotLoaded, PluginBusy)):
        return 409
    if isinstance(exc, LoadError) and exc.reason == "invalid_name":
        return 422
    if isinstance(exc, LoadError) and exc.reason in ("shutting_down", "state_not_saved"):
        return 503
    if isinstance(exc, BudgetExceeded):
        return 429
    if isinstance(exc, ContextError):
        key = str(getattr(exc, "key", "") or "")
        return 403 if key.startswith(RESERVED_PREFIX) else 422
    return 500


def error_body(message: str, error: str) -> dict[str, Any]:
    """The body of every error reply; its message redacted as the daemon log is."""
    return {"success": False, "message": redact(message), "error": error}


def plugin_error_reply(method: str, path: str, exc: Exception) -> tuple[int, dict[str, Any]]:
    """The status and body of the reply to a request that raised `exc` (logged when it is a 500)."""
    if not isinstance(exc, PluginError):
        # A bug: log it with its traceback, tell the client nothing about the internals.
        log.error("%s %s: unexpected error", method, path, exc_info=exc)
        return 500, error_body("internal error (see the daemon log)", "internal")
    code = status_for(exc)
    label = getattr(exc, "reason", None) or exc.code
    if code == 500:
        log.error("%s %s failed: %s", method, path, exc)
    return code, error_body(exc.message, str(label))


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 before the app sees it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._reject(scope, send, 400, "malformed Content-Length")
                    return
                if declared > self.max_bytes:
                    await self._reject(scope, send, 413, self._too_large())
                    return
        # Buffer the body (bounded by max_bytes) so a chunked upload cannot exceed the limit.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._reject(scope, send, 413, self._too_large())
                return
            chunks.append(body)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> str:
        return f"request body larger than api.max_body_bytes ({self.max_bytes} bytes)"

    async def _reject(self, scope: Scope, send: Send, code: int, message: str) -> None:
        label = "body_too_large" if code == 413 else "bad_request"
        response = JSONResponse(error_body(message, label), status_code=code)
        await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class PlugindAPI(FastAPI):
    """FastAPI, with the hook-call fast path (if any) in front of all of it."""

    fast_path: HookFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.fast_path is not None:
            await self.fast_path(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(
    registry: PluginRegistry,
    settings: Settings,
    *,
    token: str | None = None,
    monitor: Any = None,
    audit_log: Any = None,
    lifespan: Lifespan | None = None,
    fast_hooks: bool = True,
) -> FastAPI:
    """Build the app. `token` None means /api/* is open (the daemon allows that on loopback only).

    `monitor` (a ResourceMonitor) and `audit_log` (an AuditLog) are optional; their endpoints say so
    when they are missing. `fast_hooks` False leaves hook calls to FastAPI alone (the reference
    the fast path is tested against).
    """
    app = PlugindAPI(
        title="plugind",
        version=__version__,
        description="Plugin host daemon: load signed plugins, fire hooks, read metrics.",
        lifespan=lifespan,
    )
    app.state.registry = registry
    app.state.settings = settings
    app.state.monitor = monitor
    app.state.audit_log = audit_log

    bearer = BearerAuth(token)
    auth = [Depends(bearer)]
    app.include_router(system_routes.router)
    if settings.api.open_metrics:
        app.include_router(system_routes.metrics_router)
    else:
        app.include_router(system_routes.metrics_router, dependencies=auth)
    for router in (
        plugin_routes.router,
        monitoring_routes.router,
        hook_routes.router,
        context_routes.router,
        audit_routes.router,
    ):
        app.include_router(router, prefix="/api", dependencies=auth)

    async def _error(request: Request, exc: Exception) -> JSONResponse:
        # A PluginError's own status and label; anything else is a bug: 500, logged.
        code, body = plugin_error_reply(request.method, request.url.path, exc)
        return JSONResponse(body, status_code=code)

    app.add_exception_handler(PluginError, _error)
    app.add_exception_handler(Exception, _error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return JSONResponse(error_body(message, "invalid_input"), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        labels = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 503: "unavailable"}
        if isinstance(exc.__cause__, RecursionError):  # FastAPI's 400 for JSON nested past json's limit
            message = depth_message("request body") + "; it was not parsed"
            return JSONResponse(error_body(message, "invalid_input"), status_code=exc.status_code)
        return JSONResponse(
            error_body(str(exc.detail), labels.get(exc.status_code, "error")),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    app.add_middleware(BodyLimit, max_bytes=settings.api.max_body_bytes)
    if fast_hooks:
        # In front of everything, FastAPI's own layers included: hook calls with nothing to refuse
        # skip its machinery (plugind/api/fastpath.py); the rest go on to FastAPI.
        app.fast_path = HookFastPath(
            functools.partial(FastAPI.__call__, app),
            registry=registry,
            settings=settings,
            auth=bearer,
            max_body_bytes=settings.api.max_body_bytes,
            error_reply=plugin_error_reply,
        )
    return app


__all__ = ["BodyLimit", "PlugindAPI", "create_app", "error_body", "plugin_error_reply", "status_for"]
