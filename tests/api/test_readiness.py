"""`/ready`'s decision as a table: start-up, shutdown, and configured plugins that do not run."""

from __future__ import annotations

from typing import Any

import pytest

from plugind.api.routes.system import readiness

ONE_FAILED = {"b": "sandbox step 'filesystem': setns(6, 0x20000): EPERM"}


@pytest.mark.parametrize(
    ("state", "requires", "code", "body"),
    [
        ({"started": False}, "any", 503, {"ready": False, "status": "starting", "failed": {}}),
        ({"stopping": True}, "started", 503, {"ready": False, "status": "shutting down", "failed": {}}),
        ({}, "all", 200, {"ready": True, "status": "ready", "failed": {}}),
        ({"running": 0}, "any", 200, {"ready": True, "status": "ready", "failed": {}}),  # none wanted
        ({"failed": ONE_FAILED}, "any", 200, {"ready": True, "status": "degraded", "failed": ONE_FAILED}),
        ({"failed": ONE_FAILED}, "all", 503, {"ready": False, "status": "degraded", "failed": ONE_FAILED}),
        ({"running": 0, "failed": ONE_FAILED}, "any", 503,
         {"ready": False, "status": "failed", "failed": ONE_FAILED}),
        ({"running": 0, "failed": ONE_FAILED}, "started", 200,
         {"ready": True, "status": "failed", "failed": ONE_FAILED}),
    ],
    ids=["starting", "stopping", "all-run", "nothing-wanted", "some-failed-any", "some-failed-all",
         "all-failed-any", "all-failed-started"],
)
def test_readiness(state: dict[str, Any], requires: str, code: int, body: dict[str, Any]) -> None:
    args = {"started": True, "stopping": False, "running": 1, "failed": {}, **state}
    got_code, got_body = readiness(**args, requires=requires)
    assert (got_code, got_body.model_dump()) == (code, body)
