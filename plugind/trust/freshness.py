"""Rollback and freeze protection for the trust list: the highest generation seen, and expiry.

Every write of the trust list bumps the generation in its authenticated header. A `TrustListGuard`
remembers the highest generation it has seen for each list, in memory (for as long as the daemon or
the command runs) and in `security.trust_state_file`, and refuses a list older than that: a copy put
back after `plugind trust remove` is a rollback, not a trust list. A list whose `valid_until` has
passed is refused too, so a captured list cannot be replayed forever.

The state file is JSON `{"version": 1, "lists": {"/abs/path/trust.list": 7}}`, written atomically.
An unreadable state file is an error (fail closed), never "nothing seen yet".
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from plugind.errors import TrustListError
from plugind.fsio import atomic_write, read_regular
from plugind.trust.trustlist import TrustList, format_time

if TYPE_CHECKING:
    from plugind.config import Settings

log = logging.getLogger("plugind.trust.freshness")

STATE_VERSION = 1
_MAX_STATE_BYTES = 1024 * 1024


class TrustListGuard:
    """The highest trust-list generation seen, per list; refuses older and expired lists."""

    def __init__(self, state_file: str | os.PathLike[str] | None) -> None:
        self.state_file = Path(state_file) if state_file is not None else None
        self._memory: dict[str, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> TrustListGuard:
        """A guard recording into `security.trust_state_file`."""
        return cls(settings.security.trust_state_file)

    @staticmethod
    def _key(path: str | os.PathLike[str]) -> str:
        return str(Path(path).absolute())

    def _read_file(self) -> dict[str, int]:
        if self.state_file is None:
            return {}
        try:
            raw = read_regular(self.state_file, _MAX_STATE_BYTES)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise TrustListError(
                f"{self.state_file}: cannot read the trust state file: {exc.strerror}",
                path=str(self.state_file),
            ) from None
        try:
            doc = json.loads(raw)
            lists = doc["lists"] if isinstance(doc, dict) and doc.get("version") == STATE_VERSION else None
            if not isinstance(lists, dict) or not all(
                isinstance(k, str) and type(v) is int and v >= 0 for k, v in lists.items()
            ):
                raise ValueError("expected {\"version\": 1, \"lists\": {PATH: GENERATION}}")
        except (ValueError, KeyError, TypeError) as exc:
            # Fail closed: a damaged record must not read as "no generation seen yet".
            raise TrustListError(
                f"{self.state_file}: the trust state file is unreadable ({exc}); it records the newest "
                "trust-list generation seen: restore it, or remove it only if the trust list in place "
                "is known to be the newest",
                path=str(self.state_file),
            ) from None
        return dict(lists)

    def highest(self, path: str | os.PathLike[str]) -> int:
        """The highest generation seen for the list at `path` (memory or state file). Raises
        TrustListError when the state file is unreadable."""
        key = self._key(path)
        with self._lock:
            return max(self._memory.get(key, 0), self._read_file().get(key, 0))

    def check(self, doc: TrustList, path: str | os.PathLike[str], *, allow_expired: bool = False,
              now: float | None = None) -> None:
        """Refuse `doc` read from `path` when it is older than a generation already seen, or expired
        (unless `allow_expired`); otherwise remember its generation. Raises TrustListError."""
        seen = self.highest(path)
        if doc.generation < seen:
            raise TrustListError(
                f"{path}: trust list generation {doc.generation} is older than generation {seen} already "
                f"seen (recorded in {self.state_file or 'memory'}): refusing a rolled-back copy; put the "
                "newest list back, or rebuild it with `plugind trust init --force` and `plugind trust add`",
                path=str(path),
            )
        if not allow_expired and doc.expired(now):
            assert doc.valid_until is not None
            raise TrustListError(
                f"{path}: trust list expired at {format_time(doc.valid_until)} (valid_until); renew it "
                "with `plugind trust renew --valid-for 30d`",
                path=str(path),
            )
        self.remember(path, doc.generation)

    def remember(self, path: str | os.PathLike[str], generation: int) -> None:
        """Record `generation` for `path` if it is the highest yet (memory always; the state file
        when it can be written, else a warning: memory still protects this process)."""
        key = self._key(path)
        with self._lock:
            if generation > self._memory.get(key, 0):
                self._memory[key] = generation
            if self.state_file is None:
                return
            try:
                lists = self._read_file()
            except TrustListError as exc:
                log.warning("not recording trust-list generation %d: %s", generation, exc)
                return
            if lists.get(key, 0) >= generation:
                return
            lists[key] = generation
            body = json.dumps({"version": STATE_VERSION, "lists": lists, "updated": int(time.time())},
                              indent=1, sort_keys=True)
            try:
                self.state_file.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(self.state_file, (body + "\n").encode("utf-8"), mode=0o600)
            except OSError as exc:
                log.warning("cannot record trust-list generation %d in %s: %s", generation,
                            self.state_file, exc.strerror or exc)


__all__ = ["STATE_VERSION", "TrustListGuard"]
