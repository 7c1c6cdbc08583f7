"""`/api/plugins`: list, inspect, load, unload, rescan, per-plugin metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Path, Request

from plugind.api.routes import _deps
from plugind.api.schemas import (
    NAME_PATTERN,
    ActionReply,
    ErrorReply,
    PluginDetail,
    PluginMetrics,
    PluginNameRequest,
    PluginSummary,
    RescanReply,
    UpgradeReply,
    UpgradeRequest,
)
from plugind.errors import NotLoaded
from plugind.host.registry import LoadedPlugin, PluginRegistry

router = APIRouter(tags=["plugins"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorReply} for code in (401, 403, 404, 409, 422, 500)
}
NamePath = Path(pattern=NAME_PATTERN, description="plugin name")


def _summary(reg: PluginRegistry, name: str) -> PluginSummary:
    loaded = reg.get_plugin(name)
    avail = reg.get_available(name)
    if loaded is not None:
        return PluginSummary(
            name=name,
            version=loaded.version,
            trust_level=loaded.trust_level,
            state=reg.state_of(name),
            pid=loaded.supervisor.pid,
            hash=loaded.digest,
            description=avail.description if avail else "",
        )
    failed = reg.failed_plugins().get(name)
    if avail is None:
        if failed is None:
            raise HTTPException(404, f"unknown plugin {name!r}")
        # Wanted, but its bundle is gone: listed, so the operator sees why it does not run.
        return PluginSummary(name=name, version="", trust_level="unknown", state="load_failed", error=failed)
    return PluginSummary(
        name=name,
        version=avail.version,
        trust_level=avail.trust_level,
        state=reg.state_of(name),
        hash=avail.digest,
        description=avail.description,
        error=failed or avail.error,
    )


async def _metrics_of(request: Request, name: str) -> PluginMetrics | None:
    monitor = _deps.monitor(request)
    if monitor is None:
        return None
    try:
        # May sample the process now (psutil): off the event loop.
        found = await asyncio.to_thread(monitor.get_plugin_metrics, name)
    except NotLoaded:
        return None
    return PluginMetrics.model_validate(found.as_dict())


@router.get("/plugins", response_model=list[PluginSummary], responses=_ERRORS)
async def list_plugins(request: Request) -> list[PluginSummary]:
    """Every known plugin: name, version, trust level, state, pid, hash."""
    reg = _deps.registry(request)
    names = sorted(
        {p.name for p in reg.get_available_plugins()}
        | {p.name for p in reg.get_loaded_plugins()}
        | set(reg.failed_plugins())
    )
    return [_summary(reg, n) for n in names]


@router.get("/plugins/{name}", response_model=PluginDetail, responses=_ERRORS)
async def get_plugin(request: Request, name: str = NamePath) -> PluginDetail:
    """One plugin, with its hooks, isolation steps, metrics and recent violations."""
    reg = _deps.registry(request)
    detail = PluginDetail(**_summary(reg, name).model_dump())
    loaded = reg.get_plugin(name)
    if loaded is not None:
        sup = loaded.supervisor
        detail.hooks = dict(sup.hooks)
        detail.restarts = int(sup.restarts)
        detail.isolation = dict(sup.isolation or {})
        detail.metrics = await _metrics_of(request, name)
    monitor = _deps.monitor(request)
    if monitor is not None:
        detail.violations = monitor.recent_violations(name)
    return detail


@router.get("/plugins/{name}/metrics", response_model=PluginMetrics, responses=_ERRORS)
async def plugin_metrics(request: Request, name: str = NamePath) -> PluginMetrics:
    """heap_bytes, cpu_time_ms, thread_count, fd_count, connection_count, violation_count."""
    reg = _deps.registry(request)
    if reg.get_plugin(name) is None:
        raise HTTPException(404, f"plugin {name!r} is not loaded")
    return await _metrics_of(request, name) or PluginMetrics()


@router.post("/plugins/load", response_model=ActionReply, response_model_exclude_none=True,
             responses=_ERRORS)
async def load(request: Request, body: PluginNameRequest) -> ActionReply:
    """Load a scanned plugin by name. 404 unknown, 403 untrusted, 409 loaded, 500 failed init, 503
    when the state file cannot be written (the load is rolled back: the plugin does not run)."""
    return load_reply(await _deps.registry(request).load_plugin(body.plugin_name))


@router.post("/plugins/unload", response_model=ActionReply, response_model_exclude_none=True,
             responses=_ERRORS)
async def unload(request: Request, body: PluginNameRequest) -> ActionReply:
    """Unload a plugin: it stops, and is no longer loaded at start. 409 when it is neither loaded
    nor wanted (a wanted plugin whose load failed is only forgotten). When the state file cannot
    be written the unload stands: 200 with a `warning`."""
    reg = _deps.registry(request)
    return unload_reply(reg, body.plugin_name, await reg.unload_plugin(body.plugin_name))


def load_reply(loaded: LoadedPlugin) -> ActionReply:
    """The reply to a load that succeeded (here and in plugind/api/fastpath.py)."""
    return ActionReply(
        success=True,
        message=f"loaded {loaded.name} {loaded.version} (pid {loaded.supervisor.pid})",
    )


def unload_reply(reg: PluginRegistry, name: str, stopped: bool) -> ActionReply:
    """The reply to an unload of `name` (`stopped`: it was running) once it is done (here and in
    plugind/api/fastpath.py)."""
    if stopped:
        message = f"unloaded {name}"
    else:
        message = f"{name} was not running (its load had failed); it is no longer loaded at start"
    warning = None
    if reg.state_problem is not None:  # set after the unload: its write failed
        warning = (f"{reg.state_problem}: until it is, a restart would load {name} again (plugind "
                   "writes it again at the next load or unload and at shutdown)")
    return ActionReply(success=True, message=message, warning=warning)


@router.post("/plugins/upgrade", response_model=UpgradeReply, responses=_ERRORS)
async def upgrade(request: Request, body: UpgradeRequest) -> UpgradeReply:
    """Replace a loaded plugin by another version without dropping a call: the new version starts
    next to the old, hook calls switch to it, the old one finishes its calls in flight and stops.
    404 no such version, 403 not admitted (untrusted, tampered), 409 not loaded / already at the
    highest admitted version / another upgrade or unload under way, 500 the new version failed to
    start. On any error the old version keeps serving."""
    done = await _deps.registry(request).upgrade_plugin(body.plugin_name, body.version)
    return UpgradeReply(
        success=True,
        message=done.message,
        plugin_name=done.name,
        from_version=done.from_version,
        to_version=done.to_version,
        old_pid=done.old_pid,
        pid=done.pid,
        hash=done.digest,
        drained=done.drained,
        skipped=done.skipped,
    )


@router.post("/plugins/rescan", response_model=RescanReply, responses=_ERRORS)
async def rescan(request: Request) -> RescanReply:
    """Scan the plugin directory again."""
    changes = await _deps.registry(request).rescan()
    return RescanReply(**changes)
