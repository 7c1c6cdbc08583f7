"""Shared helpers for route modules: the registry and settings the app factory stored, and the
boundary check of JSON values coming in."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError

from plugind.config import Settings
from plugind.host.registry import PluginRegistry
from plugind.wire.limits import json_problem


def registry(request: Request) -> PluginRegistry:
    reg: PluginRegistry = request.app.state.registry
    return reg


def settings(request: Request) -> Settings:
    s: Settings = request.app.state.settings
    return s


def monitor(request: Request) -> Any:
    return request.app.state.monitor


def audit_log(request: Request) -> Any:
    return request.app.state.audit_log


async def check_value(request: Request, value: Any, field: str) -> None:
    """Refuse (422, invalid_input) a request whose `field` no plugin and no reply could carry:
    nested deeper than plugind.wire.limits.MAX_DEPTH or holding a lone surrogate. The body is
    already read and cached by FastAPI; the usual request costs a glance at its bytes."""
    problem = json_problem(await request.body(), value, field)
    if problem is not None:
        raise RequestValidationError([{"type": "value_error", "loc": ("body",), "msg": problem}])


def check_timeout(request: Request, timeout_s: float | None) -> None:
    """Refuse (422, invalid_input) a `timeout_s` over `[hooks] max_timeout_secs`."""
    maximum = settings(request).hooks.max_timeout_secs
    if timeout_s is not None and timeout_s > maximum:
        message = f"must be in (0, {maximum:g}] seconds ([hooks] max_timeout_secs), got {timeout_s!r}"
        raise RequestValidationError([{"type": "value_error", "loc": ("body", "timeout_s"), "msg": message}])
