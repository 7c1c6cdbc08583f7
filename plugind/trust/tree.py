"""Is an extracted tree still byte-for-byte what was verified? Checked before every start.

`extract_bundle(..., record=...)` records every file's SHA-256 and mode as it writes it, from the
verified bytes. The record stays in the daemon's memory (a place nothing outside the process can
write); `tree_mismatch` walks the tree on disk without following links and says what differs.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

from plugind.fsio import FileIdentity, identity_of, settled

TreeRecord = dict[str, tuple[str, int]]  # relative path -> (sha256 hex, mode)
_CHUNK = 1 << 20


def tree_mismatch(
    tree: str | os.PathLike[str], record: TreeRecord, checked: dict[str, FileIdentity] | None = None,
    *, read: bool = True,
) -> str | None:
    """None when `tree` holds exactly the files of `record` (same bytes, same modes, no more, no
    links or special files), else a short reason naming the first difference.

    `checked`, when given, is the caller's memory of files found to match before, by their stat
    identity (`fsio.file_identity`'s fields, from lstat): a file whose identity is unchanged (same
    inode, size, mode, owner, mtime and ctime: any write, rename, chmod or `touch` changes the
    ctime) is not read again. A file read and found to match is added when it had settled
    (`fsio.settled`) before this check began; one that differs is dropped. Every directory is
    listed and every entry's type, mode and owner checked at every call (every directory plugind's
    and 0555, every file plugind's), so no file is added or swapped unseen; a file is hashed
    through the descriptor it was opened with, and counts as read only when that descriptor's
    identity is the one listed. With `read` False no file is read: one that `checked` does not
    vouch for is reported as not checked (a walk of directories and stats only, for a caller that
    must not wait on reads).
    """
    started = time.time_ns()
    owner = os.geteuid()
    root = Path(tree)
    try:
        st = os.lstat(root)
    except OSError as exc:
        return f"tree {root} is unreadable: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"tree {root} is not a directory"
    if (problem := _foreign_dir(st, owner)) is not None:
        return f".: {problem}"
    seen: set[str] = set()
    stack = [("", root)]
    while stack:
        prefix, directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError as exc:
            return f"{prefix or '.'}: unreadable directory: {exc.strerror}"
        for entry in entries:
            rel = prefix + entry.name
            try:
                est = entry.stat(follow_symlinks=False)
            except OSError as exc:
                return f"{rel}: {exc.strerror}"
            if stat.S_ISDIR(est.st_mode):
                if (problem := _foreign_dir(est, owner)) is not None:
                    return f"{rel}: {problem}"
                stack.append((rel + "/", Path(entry.path)))
                continue
            if not stat.S_ISREG(est.st_mode):
                return f"{rel}: not a regular file (link or special file)"
            expected = record.get(rel)
            if expected is None:
                return f"{rel}: file not in the verified bundle"
            if stat.S_IMODE(est.st_mode) != expected[1]:
                return f"{rel}: mode changed"
            if est.st_uid != owner:
                # Another user's file (a copy swapped in) may be open for writing, or mapped,
                # where writes change no time the identity holds: never plugind's to trust.
                return f"{rel}: owned by uid {est.st_uid}, not by plugind's ({owner})"
            seen.add(rel)
            identity = identity_of(est)
            if checked is not None and checked.get(rel) == identity:
                continue
            if not read:
                return f"{rel}: not checked since it changed"
            digest, read_identity = _sha256(entry.path)
            if digest != expected[0] or read_identity != identity:
                # (Another identity: the path led elsewhere by the time it was opened, e.g. a
                # directory on the way renamed: what was read is not what was stat'ed.)
                if checked is not None:
                    checked.pop(rel, None)
                if digest == expected[0]:
                    return f"{rel}: changed while it was checked"
                return f"{rel}: contents differ from the verified bundle"
            if checked is not None and settled(identity, started):
                checked[rel] = identity
    missing = sorted(set(record) - seen)
    if missing:
        return f"{missing[0]}: missing"
    return None


def _foreign_dir(st: os.stat_result, owner: int) -> str | None:
    # As extraction leaves every directory: plugind's, 0555. Anyone else's, or one others may
    # write, could have files added, renamed or swapped in it between two checks.
    if st.st_uid != owner:
        return f"directory owned by uid {st.st_uid}, not by plugind's ({owner})"
    if stat.S_IMODE(st.st_mode) != 0o555:
        return f"directory mode {stat.S_IMODE(st.st_mode):o}, not 555"
    return None


def _sha256(path: str) -> tuple[str | None, FileIdentity | None]:
    # The SHA-256 of the file at `path` and the identity of what was read (fstat of the descriptor
    # read), or (None, None) when it cannot be opened.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None, None
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        identity = identity_of(os.fstat(f.fileno()))
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest(), identity


__all__ = ["TreeRecord", "tree_mismatch"]
