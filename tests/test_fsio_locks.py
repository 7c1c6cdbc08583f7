"""The exclusive locks that keep a second daemon off what one holds (plugind.fsio.hold_lock)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from plugind.fsio import LockHeld, NotARegularFile, hold_lock, lock_holder

HOLD = """
import sys, time
from plugind.fsio import hold_lock
hold_lock(sys.argv[1], directory=sys.argv[2] == "dir")
print("held", flush=True)
time.sleep(60)
"""


def _holder(path: Path, kind: str = "file") -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), kind], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_held_lock_is_refused_naming_its_holder_and_free_once_it_exits(tmp_path: Path, kind: str) -> None:
    path = tmp_path / ("state.lock" if kind == "file" else "parent")
    if kind == "dir":
        path.mkdir()
    proc = _holder(path, kind)
    try:
        with pytest.raises(LockHeld) as caught:
            hold_lock(path, directory=kind == "dir")
        assert caught.value.holder == proc.pid
    finally:
        proc.kill()
        proc.wait()
    fd = hold_lock(path, directory=kind == "dir")  # released with its holder, however it ended
    try:
        assert lock_holder(fd) == os.getpid()
    finally:
        os.close(fd)


def test_the_lock_file_is_made_private_with_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "data" / "loaded.json.lock"
    fd = hold_lock(path)
    os.close(fd)
    assert path.is_file() and path.stat().st_mode & 0o777 == 0o600


def test_never_through_a_symlink_nor_into_a_fifo(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious")
    link = tmp_path / "state.lock"
    link.symlink_to(target)
    with pytest.raises(OSError):
        hold_lock(link)
    assert target.read_text() == "precious"
    fifo = tmp_path / "fifo.lock"
    os.mkfifo(fifo)
    with pytest.raises(NotARegularFile):
        hold_lock(fifo)


def test_no_holder_is_named_from_a_garbled_or_missing_table(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    fd = hold_lock(path)
    try:
        st = os.fstat(fd)
        dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        table = tmp_path / "locks"
        table.write_text(f"1: -> FLOCK  ADVISORY  WRITE 77 {dev} 0 EOF\n"
                         f"2: POSIX  ADVISORY  WRITE 78 {dev} 0 EOF\n")
        assert lock_holder(fd, str(table)) is None  # a waiter, and a POSIX lock, hold no flock
        table.write_text(f"1: FLOCK  ADVISORY  WRITE 79 {dev} 0 EOF\n")
        assert lock_holder(fd, str(table)) == 79
        assert lock_holder(fd, str(tmp_path / "missing")) is None
    finally:
        os.close(fd)
