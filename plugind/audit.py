"""The audit trail: one JSON line per security-relevant event, fsync'd before `append` returns.

Events: load, unload, refused, violation, auto_unload, crash, restart. Each line holds `time`
(RFC 3339, UTC), `event`, `plugin` (or null) and the event's fields. The file is created with
mode 0600 (its parent directory with 0700) and only ever appended to; `tail` reads it back for
`GET /api/audit`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("plugind.audit")

EVENTS = frozenset({"load", "unload", "refused", "violation", "auto_unload", "crash", "restart"})
MAX_TAIL = 1000
_MAX_LINE = 64 * 1024  # a runaway field must not make one line unbounded


class AuditLog:
    """Append-only JSON-lines audit log at `path`. Thread-safe; every append is fsync'd."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, event: str, /, plugin: str | None = None, **fields: Any) -> dict[str, Any]:
        """Write one entry and fsync it; returns the entry as written.

        Raises ValueError for an unknown event or a field named like a reserved key, OSError when
        the file cannot be written (the caller decides whether that stops the operation).
        """
        if event not in EVENTS:
            raise ValueError(f"unknown audit event {event!r}; expected one of {sorted(EVENTS)}")
        reserved = {"time", "event", "plugin"} & fields.keys()
        if reserved:
            raise ValueError(f"audit fields may not be named {sorted(reserved)}")
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "event": event,
            "plugin": plugin,
            **fields,
        }
        line = json.dumps(entry, default=str, separators=(",", ":"), ensure_ascii=False)
        if len(line) > _MAX_LINE:
            entry = {k: entry[k] for k in ("time", "event", "plugin")} | {"truncated": True}
            line = json.dumps(entry, separators=(",", ":"))
        data = (line + "\n").encode("utf-8")
        with self._lock:
            self._ensure_dir()
            # O_APPEND: each line lands at the end in one write even with other writers.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)  # an existing file made by hand may be wider
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        return entry

    def _ensure_dir(self) -> None:
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            dfd = os.open(parent.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)  # the new directory entry survives a crash too
            finally:
                os.close(dfd)

    def tail(
        self, limit: int = 100, event: str | None = None, plugin: str | None = None
    ) -> list[dict[str, Any]]:
        """The last `limit` entries (oldest first), optionally only of one event and/or plugin.

        A missing file is an empty trail; a corrupt line (a crash mid-write) is skipped and logged.
        Raises ValueError for a limit outside 1..1000 or an unknown event.
        """
        if not 1 <= limit <= MAX_TAIL:
            raise ValueError(f"limit must be between 1 and {MAX_TAIL}, got {limit}")
        if event is not None and event not in EVENTS:
            raise ValueError(f"unknown audit event {event!r}; expected one of {sorted(EVENTS)}")
        out: deque[dict[str, Any]] = deque(maxlen=limit)
        try:
            fh = open(self.path, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return []
        with fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("audit log %s: line %d is not JSON, skipped", self.path, number)
                    continue
                if not isinstance(entry, dict):
                    continue
                if event is not None and entry.get("event") != event:
                    continue
                if plugin is not None and entry.get("plugin") != plugin:
                    continue
                out.append(entry)
        return list(out)


__all__ = ["EVENTS", "AuditLog"]
