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
"""

from __future__ import annotations

import hashlib
import json
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


def read_state(path: Path) -> StateRead:
    """Read the state file at `path`. Never raises: a missing file gives `StateRead(None)`, any other
    problem `StateRead(None, problem)`."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return StateRead(None)
    except OSError as exc:
        return StateRead(None, f"state file {path} cannot be read: {exc.strerror}")
    try:
        names, versions = decode_state_full(raw)
        return StateRead(names, versions=versions)
    except StateUnreadable as exc:
        return StateRead(None, f"state file {path} is unreadable: {exc}")


def write_state(path: Path, names: list[str], versions: dict[str, str] | None = None) -> None:
    """Write `names` (and pinned `versions`) to the state file atomically (readers see the old file or
    the whole new one). Raises OSError (a full disk, a read-only file system, ...); the old file is
    then left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, encode_state(names, versions), mode=0o644)


def keep_aside(path: Path) -> Path | None:
    """Copy an unreadable state file to `<path>.unreadable` for the operator to look at, before
    anything overwrites it; the copy's path, or None if it could not be made."""
    aside = Path(f"{path}.unreadable")
    try:
        atomic_write(aside, Path(path).read_bytes(), mode=0o600)
    except OSError:
        return None
    return aside


__all__ = [
    "STATE_VERSION",
    "StateRead",
    "StateUnreadable",
    "decode_state",
    "decode_state_full",
    "encode_state",
    "keep_aside",
    "read_state",
    "write_state",
]
