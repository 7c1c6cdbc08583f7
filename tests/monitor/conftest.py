"""Fixtures for the monitor tests: real plugin-like child processes driven over stdin."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HOG = Path(__file__).with_name("hog.py")


class Hog:
    """A real child process (tests/monitor/hog.py) that grows memory, fds, threads on command."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HOG)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.pid = self.proc.pid

    def do(self, command: str) -> str:
        """Send one command and wait until the child says it took effect."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply.startswith("ok"), f"hog answered {reply!r} to {command!r}"
        return reply.strip()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def hog() -> Iterator[Callable[[], Hog]]:
    made: list[Hog] = []

    def make() -> Hog:
        h = Hog()
        made.append(h)
        h.do("threads 0")  # wait until the interpreter is up and serving commands
        return h

    yield make
    for h in made:
        h.kill()
