"""Liveness, readiness and Prometheus metrics: open endpoints that never block the event loop."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from plugind.api.routes import _deps
from plugind.api.schemas import HealthReply, ReadyReply
from plugind.monitor import metrics

router = APIRouter(tags=["system"])
metrics_router = APIRouter(tags=["system"])


@router.get("/health", response_model=HealthReply)
async def health(request: Request) -> HealthReply:
    """Liveness: answers as long as the event loop runs, whatever the plugins do."""
    reg = _deps.registry(request)
    return HealthReply(
        status="ok", plugins_loaded=reg.plugin_count(), plugins_total=reg.total_plugin_count()
    )


@router.get("/ready", response_model=ReadyReply, responses={503: {"model": ReadyReply}})
async def ready(request: Request) -> JSONResponse:
    """Readiness: 200 once the start-up scan and auto-load are done; 503 before and while stopping."""
    reg = _deps.registry(request)
    if reg.ready and not reg.shutting_down:
        return JSONResponse({"ready": True, "status": "ready"})
    state = "shutting down" if reg.shutting_down else "starting"
    return JSONResponse({"ready": False, "status": state}, status_code=503)


@metrics_router.get("/metrics", response_class=Response)
def prometheus() -> Response:
    """Prometheus text format (a plain `def`: FastAPI runs it in a thread, off the event loop)."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
