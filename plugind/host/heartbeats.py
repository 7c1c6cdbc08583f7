"""Heartbeats for every plugin on an event loop from one timer: a sweep, not a task per plugin.

A task per plugin (sleep, ping, wait for the pong under a timeout) cost the daemon about 10% of a
CPU idle with 1,000 plugins, and a wake-up per plugin per interval. Here the supervisors of a loop
(with the same `[supervisor] heartbeat_interval_secs` and `heartbeat_timeout_secs`) are members of
one `HeartbeatSweep`, whose single timer runs `sweep`: for each member it notes a pong (or the end
of the child), judges a ping unanswered for `heartbeat_timeout_secs` exactly as before
(`plugind.host.liveness.unresponsive`: a call in its deadline or a result or pong heard since the
ping excuses the silence, a stopped process never is excused; an excused plugin is pinged again at
once), and sends the pings that are due. Sweeps are at least `grain` apart (an eighth of the
shorter of interval and timeout, so 0.25 s by default): pings due within a grain go out together,
so members loaded at different times still share few sweeps, and a decision may come up to a grain
later than the timeout (a stopped plugin is found within interval + timeout + grain).

A ping is a `_Ping` in the incarnation's `pings` map, where the receive path answers it
(`set_result`) and a dying child fails it (`set_exception`), as it did the futures it replaces: no
future, no task, no timer per ping.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING, Any

from plugind.host.liveness import process_state, unresponsive
from plugind.wire import messages as m

if TYPE_CHECKING:
    from plugind.host.supervisor import Supervisor, _Incarnation

log = logging.getLogger("plugind.host.heartbeats")

SLICE = 64  # members handled per loop turn of a sweep


class _Ping:
    """One ping in flight; duck-types the part of a Future the supervisor's receive path uses."""

    __slots__ = ("answered", "failed", "id", "inc", "sent")

    def __init__(self, inc: _Incarnation, ping_id: int, sent: float) -> None:
        self.inc = inc
        self.id = ping_id
        self.sent = sent
        self.answered = False
        self.failed = False

    def done(self) -> bool:
        return self.answered or self.failed

    def set_result(self, _value: object) -> None:
        self.answered = True

    def set_exception(self, _exc: BaseException) -> None:
        self.failed = True  # the child is gone: its exit watcher handles it


class Beat:
    """A supervisor's membership of a sweep: when its next ping is due, and the ping in flight."""

    __slots__ = ("due", "ping", "sup", "sweep")

    def __init__(self, sup: Supervisor, sweep: HeartbeatSweep, due: float) -> None:
        self.sup = sup
        self.sweep = sweep
        self.due = due
        self.ping: _Ping | None = None

    def cancel(self) -> None:
        """Leave the sweep: no more pings, and a ping in flight is never judged."""
        self.sweep.leave(self)


class HeartbeatSweep:
    """The supervisors of one loop with the same interval and timeout, and the one timer for them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float, timeout: float) -> None:
        self.loop = loop
        self.interval = interval
        self.timeout = timeout
        self.grain = min(interval, timeout) / 8
        self.members: dict[Supervisor, Beat] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._when = 0.0  # when the armed timer fires
        self._last = float("-inf")  # when the last sweep ran
        self._sweeping = False  # a sweep is under way (its next slice is the armed callback)
        self._joined = float("inf")  # the earliest due of members that joined during it

    def join(self, sup: Supervisor) -> Beat:
        """Start pinging `sup` (its first ping one interval from now)."""
        old = self.members.get(sup)
        if old is not None:
            self.leave(old)
        beat = Beat(sup, self, self.loop.time() + self.interval)
        self.members[sup] = beat
        if self._sweeping:
            self._joined = min(self._joined, beat.due)
        else:
            self._arm(beat.due)
        return beat

    def leave(self, beat: Beat) -> None:
        if self.members.get(beat.sup) is beat:
            del self.members[beat.sup]
        beat.ping = None
        if not self.members and self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._sweeping = False

    def _arm(self, when: float) -> None:
        when = max(when, self._last + self.grain)
        if self._timer is not None:
            if self._when <= when:
                return
            self._timer.cancel()
        self._when = when
        self._timer = self.loop.call_at(when, self._run)

    def _run(self) -> None:
        self._timer = None
        now = self.loop.time()
        self._last = now
        self._sweeping = True
        self._joined = float("inf")
        self._pass(list(self.members.values()), 0, now, float("inf"))

    def _pass(self, beats: list[Beat], start: int, now: float, nearest: float) -> None:
        # One sweep, SLICE members per loop turn: 1,000 pings in one callback would hold the loop
        # (and every request waiting on it) for milliseconds.
        end = min(start + SLICE, len(beats))
        try:
            nearest = min(nearest, self.sweep(beats[start:end], now))
        finally:
            if end < len(beats) and self.members:
                self._timer = self.loop.call_soon(self._pass, beats, end, now, nearest)  # type: ignore[assignment]
                self._when = now
            else:
                self._timer = None
                self._sweeping = False
                nearest = min(nearest, self._joined)
                if self.members:
                    self._arm(nearest if nearest != float("inf") else now + self.interval)

    def sweep(self, beats: list[Beat], now: float) -> float:
        """One pass over `beats` at loop time `now`; returns when the next pass is needed."""
        nearest = float("inf")
        horizon = now + self.grain  # a ping due within a grain goes out with this sweep
        for beat in beats:
            if beat.sweep is not self or self.members.get(beat.sup) is not beat:
                continue  # left since the sweep began
            try:
                when = self._beat(beat, now, horizon)
            except Exception:  # one member's bug must not stop the heartbeats of the others
                log.exception("heartbeat of %s failed", beat.sup.name, extra={"plugin": beat.sup.name})
                when = now + self.interval
            if when < nearest:
                nearest = when
        return nearest

    def _beat(self, beat: Beat, now: float, horizon: float) -> float:
        sup = beat.sup
        inc = sup._inc
        ping = beat.ping
        if ping is not None:
            if ping.answered or ping.failed or ping.inc is not inc:
                beat.ping = None  # a pong, or the child ended (its exit watcher handles that)
                beat.due = ping.sent + self.interval if ping.answered else now + self.interval
            elif now - ping.sent < self.timeout:
                return ping.sent + self.timeout
            else:
                beat.ping = None
                inc.pings.pop(ping.id, None)
                # A call still inside its deadline explains the silence (the runtime serves in
                # order), unless the kernel says the process is stopped: plugind/host/liveness.py.
                # So does a result or a pong heard since the ping: a call that ended just before the
                # timeout leaves the runtime its queued pings to answer, and a runtime that just
                # answered is not hung (a log line or a frame's first bytes prove nothing: any
                # thread may write them).
                busy = inc.heard > ping.sent or any(d > now for d in inc.deadlines.values())
                why = unresponsive(process_state(inc.pid) if inc.pid is not None else None, busy,
                                   self.timeout)
                if why is None:
                    beat.due = now  # excused: ping again at once, a stop mid-call is found soon
                else:
                    beat.due = now + self.interval
                    if sup.state == "running":
                        sup._found_hung(inc, why)
                    return beat.due
        if beat.due > horizon:
            return beat.due
        if sup.state != "running" or inc is None or inc.transport is None:
            beat.due = now + self.interval  # restarting or stopping: look again in an interval
            return beat.due
        ping_id = inc.next_id
        inc.next_id += 1
        beat.ping = _Ping(inc, ping_id, now)
        inc.pings[ping_id] = beat.ping  # type: ignore[assignment]  # answered like a future
        sup._send(inc, {"type": m.PING, "id": ping_id})
        return now + self.timeout


_sweeps: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[float, float], HeartbeatSweep]]
_sweeps = weakref.WeakKeyDictionary()


def join(sup: Supervisor) -> Beat:
    """Make `sup` a member of its loop's sweep for its settings; `Beat.cancel()` ends it."""
    loop = asyncio.get_running_loop()
    cfg = sup.settings.supervisor
    key = (float(cfg.heartbeat_interval_secs), float(cfg.heartbeat_timeout_secs))
    per_loop = _sweeps.setdefault(loop, {})
    sweep = per_loop.get(key)
    if sweep is None:
        sweep = per_loop[key] = HeartbeatSweep(loop, *key)
    return sweep.join(sup)


def beating(sup: Any) -> bool:
    """Whether `sup` is a member of a sweep on the running loop (it is being pinged)."""
    per_loop = _sweeps.get(asyncio.get_running_loop(), {})
    return any(sup in sweep.members for sweep in per_loop.values())


__all__ = ["Beat", "HeartbeatSweep", "beating", "join"]
