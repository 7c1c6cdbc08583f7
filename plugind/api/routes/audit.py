"""`/api/audit`: the tail of the audit trail (loads, refusals, crashes, restarts, violations)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Query, Request

from plugind.api.routes import _deps
from plugind.api.schemas import AuditReply

router = APIRouter(tags=["audit"])


@router.get("/audit", response_model=AuditReply)
async def tail(request: Request, limit: int = Query(100, ge=1, le=1000)) -> AuditReply:
    """The last `limit` audit entries, oldest first."""
    log = _deps.audit_log(request)
    if log is None:
        raise HTTPException(404, "no audit log configured")
    entries = await asyncio.to_thread(log.tail, limit)
    return AuditReply(entries=list(entries))
