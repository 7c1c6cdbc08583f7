"""`/api/plugins/{name}/unmount-behavior` and `/api/plugins/{name}/check`: the resource monitor's
per-plugin controls (`ResourceMonitor.set_unmount_behavior` and `check_plugin_resources`)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Path, Request

from plugind.api.routes import _deps
from plugind.api.schemas import (
    NAME_PATTERN,
    CheckReply,
    ErrorReply,
    PluginMetrics,
    UnmountBehaviorReply,
    UnmountBehaviorRequest,
)
from plugind.monitor.resource import ResourceMonitor, UnmountBehavior

router = APIRouter(tags=["monitoring"])

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorReply} for code in (401, 404, 409, 422)}
NamePath = Path(pattern=NAME_PATTERN, description="plugin name")


def _monitor(request: Request) -> ResourceMonitor:
    monitor: ResourceMonitor | None = _deps.monitor(request)
    return monitor if monitor is not None else _deps.registry(request).monitor


def _known(request: Request, name: str) -> None:
    reg = _deps.registry(request)
    if reg.get_plugin(name) is None and reg.get_available(name) is None:
        raise HTTPException(404, f"unknown plugin {name!r}")


def _reply(name: str, behavior: UnmountBehavior) -> UnmountBehaviorReply:
    return UnmountBehaviorReply(
        plugin=name, auto_unmount=behavior.auto_unmount, log_violations=behavior.log_violations
    )


@router.get("/plugins/{name}/unmount-behavior", response_model=UnmountBehaviorReply, responses=_ERRORS)
async def get_unmount_behavior(request: Request, name: str = NamePath) -> UnmountBehaviorReply:
    """The monitor's reaction to this plugin's violations, as in force now."""
    _known(request, name)
    return _reply(name, _monitor(request).unmount_behavior(name))


@router.put("/plugins/{name}/unmount-behavior", response_model=UnmountBehaviorReply, responses=_ERRORS)
async def set_unmount_behavior(
    request: Request, body: UnmountBehaviorRequest, name: str = NamePath
) -> UnmountBehaviorReply:
    """Set whether violations of this plugin unload it and are logged, until the daemon stops
    (`[plugin.NAME] auto_unmount, log_violations` is the lasting form). 404 unknown plugin."""
    _known(request, name)
    monitor = _monitor(request)
    monitor.set_unmount_behavior(name, UnmountBehavior(body.auto_unmount, body.log_violations))
    return _reply(name, monitor.unmount_behavior(name))


@router.post("/plugins/{name}/check", response_model=CheckReply, responses=_ERRORS)
async def check(request: Request, name: str = NamePath) -> CheckReply:
    """Sample the plugin now: the limits it is over and its metrics. It does not count towards the
    auto-unload threshold. 404 unknown plugin, 409 not loaded."""
    _known(request, name)
    # A few /proc and cgroupfs reads: off the event loop.
    found = await asyncio.to_thread(_monitor(request).check, name)
    return CheckReply(
        plugin=name,
        violations=[v.as_dict() for v in found.violations],
        metrics=PluginMetrics.model_validate(found.metrics.as_dict()),
    )
