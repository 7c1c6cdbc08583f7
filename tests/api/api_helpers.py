"""Helpers for tests/api."""

from __future__ import annotations

import psutil

# A handler appending the plugin's name to data["seen"].
ECHO = "data.setdefault('seen', []).append({name!r})\nreturn data"


def plugins_alive(pids: list[int]) -> list[int]:
    """The pids of `pids` that are still running (not zombies)."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive
