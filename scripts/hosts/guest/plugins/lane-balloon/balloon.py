"""Host lane plugin: hook `lane.balloon` allocates `mb` MiB and writes every page of it."""

from __future__ import annotations

from typing import Any

from plugind.sdk import Plugin

plugin = Plugin()
_held: list[bytearray] = []


@plugin.hook("lane.balloon")
def balloon(data: Any, ctx: Any) -> Any:
    for _ in range(int(data["mb"])):
        chunk = bytearray(1024 * 1024)
        for i in range(0, len(chunk), 4096):
            chunk[i] = 1
        _held.append(chunk)
    return {"held_mb": len(_held)}
