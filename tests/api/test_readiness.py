"""`/ready`'s decision as a table: start-up, shutdown, and configured plugins that do not run."""

from __future__ import annotations

from typing import Any

import pytest

from plugind.api.routes.system import readiness

ONE_FAILED = {"b": "sandbox step 'filesystem': setns(6, 0x20000): EPERM"}
UNREADABLE = "state file data/loaded.json is unreadable: empty; truncated or overwritten?"
NOT_SAVED = "the state file data/loaded.json could not be written (No space left on device)"


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
        # The state file does not hold the intent: degraded as by a failed plugin, and says why.
        ({"running": 0, "state": UNREADABLE}, "any", 503,
         {"ready": False, "status": "failed", "failed": {}, "state": UNREADABLE}),
        ({"running": 0, "state": UNREADABLE}, "started", 200,
         {"ready": True, "status": "failed", "failed": {}, "state": UNREADABLE}),
        ({"state": NOT_SAVED}, "any", 200,
         {"ready": True, "status": "degraded", "failed": {}, "state": NOT_SAVED}),
        ({"state": NOT_SAVED}, "all", 503,
         {"ready": False, "status": "degraded", "failed": {}, "state": NOT_SAVED}),
    ],
    ids=["starting", "stopping", "all-run", "nothing-wanted", "some-failed-any", "some-failed-all",
         "all-failed-any", "all-failed-started", "state-unreadable-any", "state-unreadable-started",
         "state-not-saved-any", "state-not-saved-all"],
)
def test_readiness(state: dict[str, Any], requires: str, code: int, body: dict[str, Any]) -> None:
    args = {"started": True, "stopping": False, "running": 1, "failed": {}, **state}
    got_code, got_body = readiness(**args, requires=requires)
    assert (got_code, got_body.model_dump(exclude_none=True)) == (code, body)
