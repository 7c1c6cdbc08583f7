"""Atomic file writes (temp file in the same directory, fsync, rename or link, fsync the directory),
bounded reads of files that must be regular, and the stat identity that tells whether a file read
before may have changed since."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

TEMP_PREFIX = ".plugind-tmp-"

# A file whose status changed less than this long before it was read may change again without any
# stat field moving (two writes within one tick of the kernel's coarse clock, as git's "racily
# clean" index entries): what was read from it is not reused (`settled`).
SETTLE_S = 2.0

FileIdentity = tuple[int, int, int, int, int, int, int]


class NotARegularFile(OSError):
    """A path that should name a regular file names a FIFO, a device, a socket or a directory."""


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """At most `limit` + 1 bytes of the regular file at `path` (a caller refuses more than `limit`).

    Opened without waiting (O_NONBLOCK) and checked before it is read, so a FIFO planted where a
    file belongs is refused at once instead of hanging its reader. Raises FileNotFoundError,
    NotARegularFile (its `strerror` says "not a regular file"), OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        raise NotARegularFile(errno.EINVAL, "not a regular file", str(path))
    with os.fdopen(fd, "rb") as f:
        return f.read(limit + 1)


def file_identity(path: str | os.PathLike[str]) -> FileIdentity | None:
    """(device, inode, size, mtime_ns, ctime_ns, mode, owner) of `path` (symlinks followed), or None
    when it cannot be stat'ed. Any write, rename, `touch`, `cp -p`, chmod or chown changes the
    ctime, which no user can set: an unchanged identity means an unchanged file, unless it changed
    within one clock tick of the last change (see `settled`)."""
    try:
        return identity_of(os.stat(path))
    except OSError:
        return None


def identity_of(st: os.stat_result) -> FileIdentity:
    """The `file_identity` fields of a stat (or lstat) result."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid)


def settled(identity: FileIdentity | None, read_at_ns: int) -> bool:
    """True when the file of `identity` had last changed at least SETTLE_S before `read_at_ns`
    (time.time_ns() taken before it was read): what was read may be reused while its identity stays
    the same. A change stamped in the future (a clock set back) is never settled."""
    if identity is None:
        return False
    return max(identity[3], identity[4]) <= read_at_ns - int(SETTLE_S * 1e9)


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry change (a rename) to disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, overwrite: bool = True,
                 durable: bool = True) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one.

    With overwrite=False the final step is link(2), which fails atomically when `path` exists.
    durable=False skips both fsyncs (for a file a crash may lose: still atomic, not durable).
    Raises FileExistsError (overwrite=False and the file exists) or OSError.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=directory)
    try:
        # mkstemp creates 0600; widen only after the content is complete.
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if durable:
                os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
        if durable:
            fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def stale_temp_files(path: Path) -> list[Path]:
    """Temp files left next to `path` by a writer that died mid-write."""
    path = Path(path)
    return sorted(path.parent.glob(f"{TEMP_PREFIX}{path.name}.*"))
