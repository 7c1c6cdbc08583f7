"""Liveness, readiness and Prometheus metrics: open endpoints that never block the event loop."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from plugind.api.routes import _deps
from plugind.api.schemas import HealthReply, ReadyReply
from plugind.host.registry import PluginRegistry
from plugind.monitor import metrics

router = APIRouter(tags=["system"])
metrics_router = APIRouter(tags=["system"])


@router.get("/health", response_model=HealthReply)
async def health(request: Request) -> HealthReply:
    """Liveness: answers as long as the event loop runs, whatever the plugins do."""
    return health_reply(_deps.registry(request))


def health_reply(reg: PluginRegistry) -> HealthReply:
    """The body of `/health` (also served by the probe listener, plugind/api/probe.py)."""
    loaded, total, failed = reg.health_counts()
    return HealthReply(status="ok", plugins_loaded=loaded, plugins_total=total, plugins_failed=failed)


def readiness(
    *, started: bool, stopping: bool, running: int, failed: dict[str, str], requires: str,
    state: str | None = None,
) -> tuple[int, ReadyReply]:
    """(HTTP status, body) of `/ready`; `requires` is `api.ready_requires` ("started", "any", "all").

    503 before the start-up scan and load finished and from SIGTERM on. After that the body says
    "ready", "degraded" (some configured plugins do not run) or "failed" (none of them runs), with
    each failed plugin and why; whether that is still 200 is the operator's choice: "started"
    always, "any" unless none runs, "all" only when every configured plugin runs. `state` (why the
    state file does not hold the operator's intent) degrades it the same way as a failed plugin.
    """
    if stopping:
        return 503, ReadyReply(ready=False, status="shutting down")
    if not started:
        return 503, ReadyReply(ready=False, status="starting")
    if not failed and state is None:
        return 200, ReadyReply(ready=True, status="ready")
    ok = requires == "started" or (requires == "any" and running > 0)
    status: Literal["degraded", "failed"] = "degraded" if running else "failed"
    return (200 if ok else 503), ReadyReply(ready=ok, status=status, failed=failed, state=state)


@router.get("/ready", response_model=ReadyReply, responses={503: {"model": ReadyReply}})
async def ready(request: Request) -> JSONResponse:
    """Readiness: start-up done, not stopping, and the configured plugins run (`api.ready_requires`)."""
    code, body = ready_reply(_deps.registry(request), _deps.settings(request).api.ready_requires)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=code)


def ready_reply(reg: PluginRegistry, requires: str) -> tuple[int, ReadyReply]:
    """(HTTP status, body) of `/ready` for `reg` (also served by the probe listener)."""
    failed = reg.failed_plugins()
    return readiness(
        started=reg.ready,
        stopping=reg.shutting_down,
        running=sum(1 for n in reg.wanted_plugins() if reg.is_loaded(n) and n not in failed),
        failed=failed,
        requires=requires,
        state=reg.state_problem,
    )


@metrics_router.get("/metrics", response_class=Response)
def prometheus() -> Response:
    """Prometheus text format (a plain `def`: FastAPI runs it in a thread, off the event loop)."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
