"""The state file (`plugins.state_file`, loaded.json): the operator's intent, the plugins that should
be loaded, encoded with a version and a checksum and read back strictly.

Format 2: `{"version": 2, "loaded": [names], "sha256": hex}`, the checksum over the canonical JSON of
the list (sorted keys, no spaces). After an upgrade it also pins versions, `"versions": {name:
version}`; the checksum then covers both (the canonical JSON of `{"loaded": ..., "versions": ...}`),
so a pin cannot be added, changed or dropped without the file reading as altered.
A file that cannot be read, parsed or checked, or names anything
but valid plugin names, is *unreadable*: the caller must then load nothing on its behalf (never fall
back to "load every admitted bundle", which would bring back what the operator unloaded) and say so.
Format 1 (no checksum), written by older versions, is still read.

A change costs one appended record, not a rewrite of every name: the file is a *base* (the format
above, written atomically) and a *journal* next to it (`<state_file>.journal`, StateWriter), one
JSON record per line, each `{"op": "set"|"del", "name": ..., ["version": ...,] "sha256": ...}`
with a checksum chained over the one before it, after a header naming the SHA-256 of the base it
extends. An append is one write(2) and one fdatasync; every `max(64, N)` records the base is
rewritten with everything (atomically) and the journal starts again (atomically), so N loads cost
O(N) bytes and fsyncs in all, not O(N^2). Read strictly too: a journal that is empty or holds a
record that does not parse, breaks the chain, names an invalid plugin or version or removes a
plugin it does not list, makes the whole state unreadable (load nothing, as for a bad base). The
one exception is what a crash in the middle of an append leaves: an unterminated last record after
whole ones. Its change was never acknowledged (the load or unload answers only after the
fdatasync), so it is dropped and the state read as before it (`StateRead.note` says so, the daemon
logs it, and the next write rewrites both files); any whole record that fails a check still makes
the state unreadable. A journal whose header names another base is stale (a
compaction was cut short after its new base was written; everything in it is in that base) and is
ignored, as it is when there is no base at all. A clean shutdown folds the journal into the base.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plugind.config import PLUGIN_NAME_RE
from plugind.fsio import atomic_write

STATE_VERSION = 2


class StateUnreadable(ValueError):
    """The state file exists but does not hold a valid intent; the message says why."""


@dataclass(frozen=True)
class StateRead:
    """What reading the state file found: `names` (None when there is no file at all: a first
    start), or `problem` (why an existing file could not be used; then `names` is None too)."""

    names: list[str] | None
    problem: str | None = None
    versions: dict[str, str] = field(default_factory=dict)  # pinned by an upgrade: name -> version
    note: str | None = None  # something the reader dropped but the state is sound without (log it)


# A version as it appears in a bundle's file name (NAME-VERSION.plugin); nothing path-like.
_VERSION_RE = re.compile(r"^\d[0-9A-Za-z.+-]{0,63}$")


def _checksum(names: list[str], versions: dict[str, str] | None = None) -> str:
    doc: object = {"loaded": names, "versions": versions} if versions else names
    return hashlib.sha256(json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")).hexdigest()


def encode_state(names: list[str], versions: dict[str, str] | None = None) -> bytes:
    """The bytes of a state file listing `names` (format 2), with the versions pinned by upgrades."""
    pins = {n: v for n, v in (versions or {}).items() if n in names}
    body: dict[str, object] = {"version": STATE_VERSION, "loaded": list(names)}
    if pins:
        body["versions"] = pins
    body["sha256"] = _checksum(list(names), pins)
    return (json.dumps(body, indent=1) + "\n").encode("utf-8")


def decode_state(raw: bytes) -> list[str]:
    """The names a state file lists, in order. Raises StateUnreadable saying what is wrong."""
    return decode_state_full(raw)[0]


def decode_state_full(raw: bytes) -> tuple[list[str], dict[str, str]]:
    """The names a state file lists, in order, and the versions it pins. Raises StateUnreadable."""
    try:
        doc: Any = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        what = "empty" if not raw.strip() else f"not JSON ({exc})"
        raise StateUnreadable(f"{what}; truncated or overwritten?") from None
    if not isinstance(doc, dict):
        raise StateUnreadable("not a JSON object")
    version, names = doc.get("version"), doc.get("loaded")
    if version not in (1, STATE_VERSION):
        raise StateUnreadable(f"unknown format version {version!r} (this plugind writes {STATE_VERSION})")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise StateUnreadable("no 'loaded' list of names")
    pins = doc.get("versions", {}) if version == STATE_VERSION else {}
    if not isinstance(pins, dict) or not all(isinstance(v, str) for v in pins.values()):
        raise StateUnreadable("'versions' is not a map of names to versions")
    if version == STATE_VERSION and doc.get("sha256") != _checksum(names, pins):
        raise StateUnreadable("checksum mismatch: the file was altered or partly written")
    bad = [n for n in [*names, *pins] if not PLUGIN_NAME_RE.match(n)]
    if bad:
        raise StateUnreadable(f"invalid plugin name {bad[0][:80]!r}")
    odd = [v for v in pins.values() if not _VERSION_RE.match(v)]
    if odd:
        raise StateUnreadable(f"invalid pinned version {odd[0][:80]!r}")
    names = list(dict.fromkeys(names))
    return names, {n: v for n, v in pins.items() if n in names}


JOURNAL_VERSION = 1
# Records a journal may hold before the next change folds it into the base: max(this, N names).
COMPACT_MIN = 64


def journal_path(path: Path) -> Path:
    """Where the journal of the state file `path` lives."""
    return Path(f"{path}.journal")


def _canonical(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _link(prev: str, record: dict[str, object]) -> str:
    # The chained checksum of `record` (without its own "sha256"), after the one before it.
    return hashlib.sha256(prev.encode("ascii") + b"\n" + _canonical(record)).hexdigest()


def _header(base_sha: str) -> tuple[bytes, str]:
    head: dict[str, object] = {"journal": JOURNAL_VERSION, "base": base_sha}
    chain = _link("", head)
    return _canonical({**head, "sha256": chain}) + b"\n", chain


def _records(chain: str, changes: list[dict[str, object]]) -> tuple[bytes, str]:
    out = []
    for change in changes:
        chain = _link(chain, change)
        out.append(_canonical({**change, "sha256": chain}) + b"\n")
    return b"".join(out), chain


def apply_journal(raw: bytes, base_raw: bytes, names: list[str], pins: dict[str, str]
                  ) -> tuple[list[str], dict[str, str], int, int] | None:
    """The names and pins after the journal `raw` on top of the base `base_raw` (which lists `names`
    and `pins`), how many records it held, and how many bytes of an unterminated last record (an
    append a crash cut short: never acknowledged) it dropped; None when the journal is stale (it
    extends another base). Raises StateUnreadable saying what is wrong."""
    if not raw:
        raise StateUnreadable("empty; truncated or overwritten?")
    torn = len(raw) - (raw.rfind(b"\n") + 1)
    if torn == len(raw):
        raise StateUnreadable("no whole header (it is written whole); truncated?")
    raw = raw[:len(raw) - torn]
    lines = raw[:-1].split(b"\n")
    try:
        head: Any = json.loads(lines[0])
    except (UnicodeDecodeError, ValueError):
        raise StateUnreadable("the header is not JSON") from None
    if not isinstance(head, dict) or head.get("journal") != JOURNAL_VERSION or set(head) != {
            "journal", "base", "sha256"} or not isinstance(head["base"], str):
        raise StateUnreadable("no journal header")
    chain = _link("", {"journal": JOURNAL_VERSION, "base": head["base"]})
    if head["sha256"] != chain:
        raise StateUnreadable("checksum mismatch in the header")
    if head["base"] != hashlib.sha256(base_raw).hexdigest():
        return None
    order: dict[str, None] = dict.fromkeys(names)
    pinned = dict(pins)
    for number, line in enumerate(lines[1:], 1):
        try:
            rec: Any = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            raise StateUnreadable(f"record {number} is not JSON") from None
        if not isinstance(rec, dict):
            raise StateUnreadable(f"record {number} is not a JSON object")
        body = {k: v for k, v in rec.items() if k != "sha256"}
        op, name, version = body.get("op"), body.get("name"), body.get("version")
        if not ((op == "set" and set(body) == {"op", "name", "version"})
                or (op == "del" and set(body) == {"op", "name"})):
            raise StateUnreadable(f"record {number} is not a change")
        chain = _link(chain, body)
        if rec.get("sha256") != chain:
            raise StateUnreadable(f"checksum mismatch at record {number}: altered or partly written")
        if not isinstance(name, str) or not PLUGIN_NAME_RE.match(name):
            raise StateUnreadable(f"invalid plugin name {str(name)[:80]!r} at record {number}")
        if op == "del":
            if name not in order:
                raise StateUnreadable(f"record {number} removes {name!r}, which is not listed")
            del order[name]
            pinned.pop(name, None)
            continue
        if version is not None and not (isinstance(version, str) and _VERSION_RE.match(version)):
            raise StateUnreadable(f"invalid pinned version {str(version)[:80]!r} at record {number}")
        order.setdefault(name, None)
        if version is None:
            pinned.pop(name, None)
        else:
            pinned[name] = version
    return list(order), pinned, len(lines) - 1, torn


def read_state(path: Path) -> StateRead:
    """Read the state file at `path` (its base and its journal). Never raises: a missing file gives
    `StateRead(None)`, any other problem `StateRead(None, problem)`."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return StateRead(None)
    except OSError as exc:
        return StateRead(None, f"state file {path} cannot be read: {exc.strerror}")
    try:
        names, versions = decode_state_full(raw)
    except StateUnreadable as exc:
        return StateRead(None, f"state file {path} is unreadable: {exc}")
    journal = journal_path(path)
    try:
        logged = journal.read_bytes()
    except FileNotFoundError:
        return StateRead(names, versions=versions)
    except OSError as exc:
        return StateRead(None, f"state file {path} cannot be read: its journal {journal}: {exc.strerror}")
    try:
        applied = apply_journal(logged, raw, names, versions)
    except StateUnreadable as exc:
        return StateRead(None, f"state file {path} is unreadable: its journal {journal}: {exc}")
    if applied is None:
        return StateRead(names, versions=versions)
    note = None
    if applied[3]:
        note = (f"state file {path}: its journal {journal} ends in a part-written record ({applied[3]} "
                "bytes, an append a crash cut short; that change was never acknowledged): dropped")
    return StateRead(applied[0], versions=applied[1], note=note)


class StateWriter:
    """Writes the intent to the state file at `path` as changes appended to its journal, folding
    them into the base every `max(COMPACT_MIN, N)` records (the first write, after a start, always
    does: the files are then known). Not thread-safe: one write at a time (the registry's lock).

    `write` raises OSError when the change is not on disk; the files then still read as before it
    (a part-written record is cut off again; if even that fails, the next write rewrites both)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.journal = journal_path(self.path)
        # What the files say: names in order and pins; None when unknown (the next write rewrites).
        self._names: list[str] | None = None
        self._pins: dict[str, str] = {}
        self._chain = ""
        self._size = 0
        self.records = 0  # in the journal now

    def write(self, names: list[str], versions: dict[str, str] | None = None) -> None:
        """Put `names` (with the versions pinned by upgrades) on disk."""
        order = dict.fromkeys(names)
        names = list(order)
        pins = {n: v for n, v in (versions or {}).items() if n in order}
        changes = None if self._names is None else _diff(self._names, self._pins, names, pins)
        if changes is None or self.records + len(changes) > max(COMPACT_MIN, len(names)):
            self.compact(names, pins)
        elif changes:
            self._append(changes, names, pins)

    def fold(self) -> bool:
        """Fold the journal into the base if it holds any record (a clean stop: the base alone then
        says everything). True if it did. Raises OSError."""
        if self._names is None or self.records == 0:
            return False
        self.compact(self._names, self._pins)
        return True

    def compact(self, names: list[str], pins: dict[str, str]) -> None:
        """Rewrite the base with everything, then start an empty journal on it (both atomically)."""
        self._names = None
        base = encode_state(names, pins)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, base, mode=0o644)
        # A crash here leaves the old journal, which names the old base: stale, ignored.
        head, chain = _header(hashlib.sha256(base).hexdigest())
        atomic_write(self.journal, head, mode=0o644)
        self._names, self._pins = list(names), dict(pins)
        self._chain, self._size, self.records = chain, len(head), 0

    def _append(self, changes: list[dict[str, object]], names: list[str], pins: dict[str, str]) -> None:
        data, chain = _records(self._chain, changes)
        try:
            fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError:
            self._names = None  # the next write rewrites both files
            raise
        try:
            if os.fstat(fd).st_size != self._size:
                raise OSError(errno.ESTALE, f"{self.journal} was changed behind plugind's back")
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                os.fdatasync(fd)
            except OSError:
                # Cut off what part of the records got in: the journal must end whole.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._size)
                    os.fdatasync(fd)
                raise
        except OSError:
            self._names = None
            raise
        finally:
            os.close(fd)
        self._names, self._pins = names, pins
        self._chain, self._size = chain, self._size + len(data)
        self.records += len(changes)


def _diff(old: list[str], old_pins: dict[str, str], new: list[str], new_pins: dict[str, str]
          ) -> list[dict[str, object]]:
    """The journal records that turn `old` into `new`. A "set" appends a name not listed (and only
    pins one that is), so names kept whose order changed (loads started together that finish in
    another order) are removed from the first that moved on and set again in their new order."""
    if new[:len(old)] == old:  # the common case, loads only: one comparison in C
        kept, removed = old, []
    else:
        present = set(new)
        kept = [n for n in old if n in present]
        removed = [n for n in old if n not in present]
        if new[:len(kept)] != kept:
            same = 0  # the longest prefix the order keeps; from there on, all go and come back
            while new[same] == kept[same]:
                same += 1
            removed += kept[same:]
            kept = kept[:same]
    changes: list[dict[str, object]] = [{"op": "del", "name": n} for n in removed]
    if new_pins != old_pins:
        changes += [{"op": "set", "name": n, "version": new_pins.get(n)} for n in kept
                    if new_pins.get(n) != old_pins.get(n)]
    changes += [{"op": "set", "name": n, "version": new_pins.get(n)} for n in new[len(kept):]]
    return changes


def write_state(path: Path, names: list[str], versions: dict[str, str] | None = None) -> None:
    """Write `names` (and pinned `versions`) to the state file atomically (readers see the old file or
    the whole new one), with an empty journal. Raises OSError (a full disk, a read-only file system,
    ...); the old file is then left as it was."""
    StateWriter(path).compact(list(dict.fromkeys(names)),
                              {n: v for n, v in (versions or {}).items() if n in names})


def keep_aside(path: Path) -> Path | None:
    """Copy an unreadable state file to `<path>.unreadable` (and its journal, if any, to
    `<path>.journal.unreadable`) for the operator to look at, before anything overwrites it; the
    copy's path, or None if it could not be made."""
    aside = Path(f"{path}.unreadable")
    try:
        atomic_write(aside, Path(path).read_bytes(), mode=0o600)
    except OSError:
        return None
    journal = journal_path(path)
    with contextlib.suppress(OSError):
        atomic_write(Path(f"{journal}.unreadable"), journal.read_bytes(), mode=0o600)
    return aside


__all__ = [
    "COMPACT_MIN",
    "STATE_VERSION",
    "StateRead",
    "StateUnreadable",
    "StateWriter",
    "apply_journal",
    "decode_state",
    "decode_state_full",
    "encode_state",
    "journal_path",
    "keep_aside",
    "read_state",
    "write_state",
]
