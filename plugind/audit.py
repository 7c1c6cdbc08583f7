"""The audit trail: one JSON line per security-relevant event, fsync'd before `append` returns.

Events: load, unload, refused, violation, auto_unload, crash, restart, upgrade, upgrade_failed, state.
Each line holds `time` (RFC 3339, UTC), `event`, `plugin` (or null) and the event's fields. The
file is created with mode 0600 (its parent directory with 0700) and only ever appended to; its
fields are redacted as the daemon log is (`plugind.logs.redact`); `tail` reads it back for
`GET /api/audit`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from plugind.logs import current_redactor

log = logging.getLogger("plugind.audit")

EVENTS = frozenset({
    "load", "unload", "refused", "violation", "auto_unload", "crash", "restart", "upgrade", "upgrade_failed",
    "state",
})
MAX_TAIL = 10_000
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
        redactor = current_redactor()
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "event": event,
            # The same redaction as the daemon log: an error message quoting a secret must not
            # reach the trail (or GET /api/audit) verbatim; nor a name an API caller made of one.
            "plugin": redactor.redact(plugin) if isinstance(plugin, str) else plugin,
            **redactor.redact_value(fields),
        }
        line = json.dumps(entry, default=str, separators=(",", ":"), ensure_ascii=False)
        if len(line) > _MAX_LINE:
            entry = {k: entry[k] for k in ("time", "event", "plugin")} | {"truncated": True}
            line = json.dumps(entry, separators=(",", ":"))
        data = (line + "\n").encode("utf-8")
        with self._lock:
            self._ensure_dir()
            # O_APPEND: each line lands at the end in one write even with other writers.
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)  # an existing file made by hand may be wider
                # A line cut short before (a full disk, a crash mid-write) is ended first: glued to
                # it, this entry would be unreadable too, and lost from every reader.
                end = os.lseek(fd, 0, os.SEEK_END)
                if end and os.pread(fd, 1, end - 1) != b"\n":
                    data = b"\n" + data
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

        Reads the file backwards, so the cost follows `limit`, not the size of the trail. A missing
        file is an empty trail; a corrupt line (a crash mid-write) is skipped and logged.
        Raises ValueError for a limit outside 1..10000 or an unknown event.
        """
        if not 1 <= limit <= MAX_TAIL:
            raise ValueError(f"limit must be between 1 and {MAX_TAIL}, got {limit}")
        if event is not None and event not in EVENTS:
            raise ValueError(f"unknown audit event {event!r}; expected one of {sorted(EVENTS)}")
        newest_first: list[dict[str, Any]] = []
        try:
            lines = _lines_backwards(self.path)
            for line in lines:
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    log.warning("audit log %s: a line is not JSON, skipped", self.path)
                    continue
                if not isinstance(entry, dict):
                    continue
                if event is not None and entry.get("event") != event:
                    continue
                if plugin is not None and entry.get("plugin") != plugin:
                    continue
                # Again on the way out: lines written before redaction reached the trail.
                newest_first.append(current_redactor().redact_value(entry))
                if len(newest_first) == limit:
                    break
        except FileNotFoundError:
            return []
        newest_first.reverse()
        return newest_first


def _lines_backwards(path: Path, block: int = 64 * 1024) -> Iterator[bytes]:
    """The lines of `path`, last first. Raises FileNotFoundError."""
    with open(path, "rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        tail = b""
        while end > 0:
            start = max(0, end - block)
            fh.seek(start)
            chunk = fh.read(end - start) + tail
            end = start
            parts = chunk.split(b"\n")
            tail = parts[0]  # maybe the end of a line that started in an earlier block
            yield from reversed(parts[1:])
        if tail:
            yield tail


__all__ = ["EVENTS", "AuditLog"]
