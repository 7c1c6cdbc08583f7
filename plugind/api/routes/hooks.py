"""`/api/hooks/{hook}/execute`: fire a hook under a policy and return every plugin's outcome."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Request

from plugind.api.routes import _deps
from plugind.api.schemas import HOOK_PATTERN, ErrorReply, HookReply, HookRequest, jsonable
from plugind.host.hooks import HookResult
from plugind.host.poll import LOOP_POLLING
from plugind.logs import current_redactor

router = APIRouter(tags=["hooks"])


@router.post(
    "/hooks/{hook}/execute",
    response_model=HookReply,
    responses={401: {"model": ErrorReply}, 422: {"model": ErrorReply}},
)
async def execute(
    request: Request, body: HookRequest, hook: str = Path(pattern=HOOK_PATTERN)
) -> HookReply:
    """Run `hook` with `policy` (chain, until_error, all) and an optional deadline `timeout_s`;
    422 for `data` nested too deep or holding a lone surrogate, or `timeout_s` over `[hooks]
    max_timeout_secs`. (plugind/api/fastpath.py answers the calls with nothing to refuse.)"""
    await _deps.check_value(request, body.data, "data")
    _deps.check_timeout(request, body.timeout_s)
    reg = _deps.registry(request)
    LOOP_POLLING.set(False)  # this request's own task: its call does not make the loop poll
    result = await reg.hooks.run(hook, body.data, body.policy, body.timeout_s)
    return HookReply.model_validate(reply_of(result))


def reply_of(result: HookResult) -> dict[str, Any]:
    """`result` as the JSON-able dict of a HookReply, plugins' error messages redacted as the daemon
    log is (their outputs are data, left alone). The FastAPI route and the fast path both answer
    with it."""
    reply: dict[str, Any] = jsonable(result.to_dict())
    return redact_errors(reply)


def redact_errors(reply: dict[str, Any]) -> dict[str, Any]:
    """`reply` (a HookResult's dict) with its error messages redacted, in place."""
    redactor = current_redactor()
    for holder in (reply, *reply["results"]):
        if holder.get("error") is not None:
            holder["error"] = redactor.redact_value(holder["error"])
    return reply
