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
    listed and every entry's type and mode checked at every call, so no file is added or swapped
    unseen. With `read` False no file is read: one that `checked` does not vouch for is reported
    as not checked (a walk of directories and stats only, for a caller that must not wait on reads).
    """
    started = time.time_ns()
    root = Path(tree)
    try:
        st = os.lstat(root)
    except OSError as exc:
        return f"tree {root} is unreadable: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"tree {root} is not a directory"
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
                stack.append((rel + "/", Path(entry.path)))
                continue
            if not stat.S_ISREG(est.st_mode):
                return f"{rel}: not a regular file (link or special file)"
            expected = record.get(rel)
            if expected is None:
                return f"{rel}: file not in the verified bundle"
            if stat.S_IMODE(est.st_mode) != expected[1]:
                return f"{rel}: mode changed"
            seen.add(rel)
            identity = identity_of(est)
            if checked is not None and checked.get(rel) == identity:
                continue
            if not read:
                return f"{rel}: not checked since it changed"
            if _sha256(entry.path) != expected[0]:
                if checked is not None:
                    checked.pop(rel, None)
                return f"{rel}: contents differ from the verified bundle"
            if checked is not None and settled(identity, started):
                checked[rel] = identity
    missing = sorted(set(record) - seen)
    if missing:
        return f"{missing[0]}: missing"
    return None


def _sha256(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


__all__ = ["TreeRecord", "tree_mismatch"]
