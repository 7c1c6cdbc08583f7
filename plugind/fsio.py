"""Atomic file writes: temp file in the same directory, fsync, rename (or link), fsync the directory."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

TEMP_PREFIX = ".plugind-tmp-"


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
