"""`on_error`: the hook the host fires when a hook handler fails, times out or crashes, or a plugin crashes.

    {"hook": "on_request" | None, "plugin": NAME, "outcome": "error" | "timeout" | "crashed",
     "error": "<message, redacted as the logs are>"}

Fire-and-forget and bounded: `report` only puts the event on a queue of `QUEUE_SIZE` (a full queue
drops it, counted and logged once per burst); one worker task delivers the events one at a time
with the `all` policy (collect-all) under a short deadline (`[hooks.timeouts] on_error`, else
`DEFAULT_DEADLINE_S`). Never recursive: a failure of an `on_error` handler is not reported, nor the
crash of a plugin while it handles `on_error` (else one broken reporter would feed itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from plugind.config import Settings
from plugind.host.hooks import HookRegistry
from plugind.logs import redact
from plugind.sdk.hooknames import ON_ERROR

log = logging.getLogger("plugind.host.error_hooks")

QUEUE_SIZE = 64
DEFAULT_DEADLINE_S = 2.0
_MAX_ERROR_CHARS = 2000
# Supervisor events that mean a plugin's process died or was killed.
CRASH_EVENTS = frozenset({"crashed", "oom_killed", "protocol_violation", "hung"})


class ErrorHooks:
    """Delivers `on_error` events to the plugins that handle that hook. See the module docstring."""

    def __init__(self, hooks: HookRegistry, settings: Settings, *, queue_size: int = QUEUE_SIZE) -> None:
        self._hooks = hooks
        self._settings = settings
        self._queue: asyncio.Queue[dict[str, Any]] | None = None
        self._queue_size = queue_size
        self._worker: asyncio.Task[None] | None = None
        self._delivering: frozenset[str] = frozenset()
        self._closed = False
        self._dropping = False
        self.dropped = 0
        self.delivered = 0

    @property
    def deadline_s(self) -> float:
        return self._settings.hooks.timeouts.get(ON_ERROR, DEFAULT_DEADLINE_S)

    def report(self, hook: str | None, plugin: str, outcome: str, error: str) -> None:
        """Queue an `on_error` event (never blocks, never raises); dropped when nobody handles
        `on_error`, the queue is full, there is no running event loop or the host is shutting down."""
        try:
            if self._closed or hook == ON_ERROR or not self._hooks.handlers(ON_ERROR):
                return
            if hook is None and plugin in self._delivering:
                return  # it crashed handling on_error: reporting that would feed the loop
            queue = self._ensure_worker()
            if queue is None:
                return
            text = redact(error)
            if len(text) > _MAX_ERROR_CHARS:
                text = text[: _MAX_ERROR_CHARS - 3] + "..."
            try:
                queue.put_nowait({"hook": hook, "plugin": plugin, "outcome": outcome, "error": text})
                self._dropping = False
            except asyncio.QueueFull:
                self.dropped += 1
                if not self._dropping:
                    self._dropping = True
                    log.warning("on_error queue full (%d events): dropping events", self._queue_size)
        except Exception:  # reporting an error must never become one for the caller
            log.exception("could not queue an on_error event")

    def on_plugin_event(self, name: str, kind: str, detail: Any = None) -> None:
        """A supervisor event (through the registry): a crash outside or inside a call is reported
        with `hook` None and outcome "crashed"."""
        if kind not in CRASH_EVENTS:
            return
        why = (detail.get("reason") or detail.get("detail")) if isinstance(detail, dict) else detail
        self.report(None, name, "crashed", f"{kind}: {why}" if why else kind)

    def _ensure_worker(self) -> asyncio.Queue[dict[str, Any]] | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        if self._queue is None:
            self._queue = asyncio.Queue(self._queue_size)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(self._queue), name="plugind-on-error")
        return self._queue

    async def _run(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            event = await queue.get()
            self._delivering = frozenset(p for p, _ in self._hooks.handlers(ON_ERROR))
            try:
                await self._hooks.execute_all(ON_ERROR, event, timeout_s=self.deadline_s)
                self.delivered += 1
            except Exception:  # one bad delivery must not end the worker
                log.exception("delivering on_error failed")
            finally:
                self._delivering = frozenset()
                queue.task_done()

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait (up to `timeout_s`) until every queued event was delivered. For tests and shutdown."""
        if self._queue is not None and self._worker is not None and not self._worker.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._queue.join()

    async def close(self) -> None:
        """Stop delivering: later reports are dropped; the delivery in progress is cancelled."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None


__all__ = ["CRASH_EVENTS", "DEFAULT_DEADLINE_S", "QUEUE_SIZE", "ErrorHooks"]
