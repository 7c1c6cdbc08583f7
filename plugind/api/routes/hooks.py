"""`/api/hooks/{hook}/execute`: fire a hook under a policy and return every plugin's outcome.

Plugin outputs are msgpack values; the few that JSON cannot carry are mapped: bytes become
`{"$bytes": "<base64>"}`, non-finite floats the strings "NaN", "Infinity", "-Infinity", map keys strings.
"""

from __future__ import annotations

import base64
import math
from typing import Any

from fastapi import APIRouter, Path, Request

from plugind.api.routes import _deps
from plugind.api.schemas import HOOK_PATTERN, ErrorReply, HookReply, HookRequest

router = APIRouter(tags=["hooks"])


def jsonable(value: Any) -> Any:
    """`value` (a msgpack value) as something JSON can carry, see the module docstring."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


@router.post(
    "/hooks/{hook}/execute",
    response_model=HookReply,
    responses={401: {"model": ErrorReply}, 422: {"model": ErrorReply}},
)
async def execute(
    request: Request, body: HookRequest, hook: str = Path(pattern=HOOK_PATTERN)
) -> HookReply:
    """Run `hook` with `policy` (chain, until_error, all) and an optional deadline `timeout_s`."""
    reg = _deps.registry(request)
    result = await reg.hooks.run(hook, body.data, body.policy, body.timeout_s)
    return HookReply.model_validate(jsonable(result.to_dict()))
