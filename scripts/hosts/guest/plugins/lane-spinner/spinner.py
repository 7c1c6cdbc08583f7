"""Host lane plugin: hook `lane.spin` keeps one CPU busy for `seconds` of wall time."""

from __future__ import annotations

import time
from typing import Any

from plugind.sdk import Plugin

plugin = Plugin()


@plugin.hook("lane.spin")
def spin(data: Any, ctx: Any) -> Any:
    end = time.monotonic() + float(data["seconds"])
    rounds = 0
    while time.monotonic() < end:
        rounds += 1
    return {"rounds": rounds}
