"""Shared accessors for route modules: the registry and settings the app factory stored."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from plugind.config import Settings
from plugind.host.registry import PluginRegistry


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
