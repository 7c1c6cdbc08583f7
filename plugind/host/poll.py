"""Host-side adaptive polling: the event loop does not go to sleep for a moment while a hook call is
in flight.

Waking an idle CPU costs tens of microseconds on a VM (an interrupt and two exits to the
hypervisor), as much as the whole raw socketpair round trip across CPUs. While a call that usually
comes back within a few dozen microseconds is in flight, `LoopPoller` keeps one callback rescheduling
itself with `call_soon`, so the loop polls its sockets with a zero timeout instead of sleeping in
epoll; the answer is then read as soon as it lands. Each round yields the CPU (`sched_yield`), so a
plugin that shares this CPU runs meanwhile.

How long each call may be polled for is decided per plugin by `plugind.wire.polling.PollWindow`
(the plugin runtime uses the same to poll for calls): a plugin answering in bursts gets polled
for, one that takes milliseconds never is.

Calls made for a REST request do not poll (`LOOP_POLLING`, set False by the API's hook routes): a
REST call already costs a few hundred microseconds of HTTP work, polling bought it nothing
measurable on a quiet machine, and on a loaded one a polling loop loses whole scheduler ticks to
other processes (bench/peers.py: REST p50 0.65-1.55 ms polling, 0.32-0.48 ms not, with a CPU hog on
each CPU).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import time
import weakref

# Whether a call made in this context may have the loop poll for its answer. A task's own context:
# the REST hook routes set it False in theirs, library callers keep the default.
LOOP_POLLING: contextvars.ContextVar[bool] = contextvars.ContextVar("plugind_loop_polling", default=True)

_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopPoller] = weakref.WeakKeyDictionary()


class LoopPoller:
    """Keeps one event loop polling (not sleeping) while calls that asked for it are in flight."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._until = 0.0  # time.monotonic() until which to poll
        self._waiting = 0  # calls in flight that asked for polling
        self._active = False
        self._answered = False  # an answer was read since the last round: skip one yield
        self.rounds = 0  # polling rounds run (for tests and curious operators)
        self.yields = 0  # rounds that yielded the CPU
        # Bound once: a round (one after every answer is on the answer's path) schedules the next.
        self._call_soon = loop.call_soon
        self._round = self._poll

    def begin(self, window_s: float) -> None:
        """A call that may be answered within `window_s` is in flight: poll until it is answered or
        the window has passed. Call `end()` once it is answered."""
        self._waiting += 1
        until = time.monotonic() + window_s
        if until > self._until:
            self._until = until
        if not self._active:
            self._active = True
            self._call_soon(self._round)

    def end(self) -> None:
        """The call of a `begin()` is over."""
        self._waiting -= 1
        if self._waiting <= 0:
            self._until = 0.0  # the next call's window starts afresh

    def answered(self) -> None:
        """An answer was just read: the caller it wakes runs in the next turn, after this poller's
        round, which then does not yield the CPU (a syscall on the answer's critical path)."""
        if self._active:
            self._answered = True

    def _poll(self) -> None:
        if self._waiting <= 0 or time.monotonic() >= self._until:
            self._active = False
            self._answered = False
            return
        self.rounds += 1
        if self._answered:
            self._answered = False
        else:
            self.yields += 1
            os.sched_yield()
        self._call_soon(self._round)


def poller_for(loop: asyncio.AbstractEventLoop) -> LoopPoller:
    """The poller of `loop` (one per loop, shared by every supervisor on it)."""
    poller = _pollers.get(loop)
    if poller is None:
        poller = _pollers[loop] = LoopPoller(loop)
    return poller


__all__ = ["LOOP_POLLING", "LoopPoller", "poller_for"]
