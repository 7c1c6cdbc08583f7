"""The adaptive poll window both sides use: how long to poll for the peer's next message before
sleeping, decided the way KVM decides its halt-polling.

- A message that came while polling leaves the window alone.
- One that came later, but within the budget, doubles it (starting at `START_S`).
- One that came later than the budget resets it to 0: peers that answer in milliseconds are never
  polled for, so polling costs (almost) nothing outside bursts. That includes a peer slowed down
  by a CPU-bound task next to us: our polls would only take turns with it.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

START_S = 10e-6


def _cpu_reader() -> Callable[[], int]:
    try:
        libc = ctypes.CDLL(None)
        libc.sched_getcpu  # noqa: B018 - raises AttributeError where libc has none
        # rseq or the vDSO answers in nanoseconds and never blocks: called with the GIL held
        # (PYFUNCTYPE), which spares the release and re-take of a CFUNCTYPE call (a third of it).
        reader: Callable[[], int] = ctypes.PYFUNCTYPE(ctypes.c_int)(("sched_getcpu", libc))
        return reader
    except (OSError, AttributeError):
        return lambda: -1


# The CPU this thread runs on (-1 if unknown). The host sends its own with each invoke and a plugin
# its own with each result, so that neither polls for a peer on its own CPU: polling would only take
# turns with the very process it waits for (bench/hooks.py --placement same).
getcpu: Callable[[], int] = _cpu_reader()


class PollWindow:
    """One peer's poll window, in seconds (0: do not poll), within `budget`."""

    __slots__ = ("budget", "window")

    def __init__(self, budget_s: float = 0.0) -> None:
        self.budget = budget_s
        self.window = 0.0

    def update(self, window: float, took_s: float) -> None:
        """A wait that polled for `window` (0: it slept at once) ended after `took_s` seconds."""
        if self.budget and took_s > window:
            self.window = min(max(2 * window, START_S), self.budget) if took_s <= self.budget else 0.0


__all__ = ["START_S", "PollWindow", "getcpu"]
