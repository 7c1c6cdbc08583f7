"""Atomic file writes (temp file in the same directory, fsync, rename or link, fsync the directory),
bounded reads of files that must be regular, the stat identity that tells whether a file read
before may have changed since, and the exclusive locks that keep a second daemon off what one holds."""

from __future__ import annotations

import contextlib
import errno
import fcntl
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


class LockHeld(OSError):
    """Another process holds the exclusive lock on `path`; `holder` is its pid when /proc/locks
    says it (None in another pid namespace, or when it cannot be read)."""

    def __init__(self, path: str | os.PathLike[str], holder: int | None) -> None:
        super().__init__(errno.EWOULDBLOCK, "locked by another process", str(path))
        self.holder = holder


def hold_lock(path: str | os.PathLike[str], *, directory: bool = False) -> int:
    """Take the exclusive flock on `path` without waiting and return its fd: held until the fd is
    closed or this process exits (however it exits; a child it forks or execs never gets the fd).

    A file is made (mode 0600, its directory too) if missing, and never through a symlink, nor a
    FIFO or a device; with `directory`, `path` must be an existing directory. Raises LockHeld when
    another process holds it, NotARegularFile or OSError when it cannot be opened."""
    if directory:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    try:
        if not directory and not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotARegularFile(errno.EINVAL, "not a regular file", str(path))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(path, lock_holder(fd)) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_holder(fd: int, locks: str = "/proc/locks") -> int | None:
    """The pid /proc/locks names as holding an flock on the file open at `fd`, if any."""
    st = os.fstat(fd)
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open(locks, encoding="ascii", errors="replace") as f:
            lines = f.read(1 << 20).splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:1b:5678 0 EOF"; a waiter's line has "->" after "1:"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted and fields[4].isdigit():
            return int(fields[4]) or None
    return None


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
