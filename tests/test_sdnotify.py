"""plugind.sdnotify against a real datagram socket bound by the test."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import struct
import uuid
from collections.abc import Iterator

import pytest

from plugind import sdnotify


@pytest.fixture
def receiver(tmp_path, monkeypatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_ready_and_stopping_reach_the_socket(receiver):
    assert sdnotify.notify("READY=1") is True
    assert receiver.recv(4096) == b"READY=1"
    assert sdnotify.notify("STOPPING=1\nSTATUS=shutting down") is True
    assert receiver.recv(4096) == b"STOPPING=1\nSTATUS=shutting down"


def test_abstract_socket(monkeypatch):
    name = f"plugind-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1") is True
        assert sock.recv(4096) == b"READY=1"


def test_no_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


def test_unreachable_socket_logs_and_returns_false(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    with caplog.at_level("WARNING", logger="plugind.sdnotify"):
        assert sdnotify.notify("READY=1") is False
    assert "cannot notify systemd (READY=1)" in caplog.text


def test_relative_socket_is_refused(monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    with caplog.at_level("WARNING", logger="plugind.sdnotify"):
        assert sdnotify.notify("READY=1") is False
    assert "neither a path nor an abstract @name" in caplog.text


@pytest.mark.parametrize("state", ["", "READY=1\0"], ids=["empty", "nul"])
def test_bad_state(state):
    with pytest.raises(ValueError, match="a notify state must be non-empty text without NUL bytes"):
        sdnotify.notify(state)


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [(None, None, None), ("30000000", None, 30.0), ("2000000", "self", 2.0), ("2000000", "1", None),
     ("soon", None, None), ("0", None, None)],
    ids=["unset", "set", "our-pid", "other-pid", "malformed", "zero"],
)
def test_watchdog_interval(monkeypatch, usec, pid, expected):
    for var, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, str(os.getpid()) if value == "self" else value)
    assert sdnotify.watchdog_interval() == expected


SO_TIMESTAMPNS = 35  # <asm-generic/socket.h> (x86, arm); Python's socket module does not name it


def _stamped(sock: socket.socket) -> tuple[bytes, float]:
    """One datagram and the time the kernel queued it, i.e. when it was sent (SO_TIMESTAMPNS)."""
    data, ancillary, _flags, _addr = sock.recvmsg(64, socket.CMSG_SPACE(16))
    (stamp,) = [d for level, kind, d in ancillary if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMPNS)]
    sec, nsec = struct.unpack("qq", stamp)
    return data, sec + nsec * 1e-9


def test_watchdog_pings_at_half_the_interval(receiver, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: pings every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    receiver.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    async def scenario() -> list[tuple[bytes, float]]:
        task = sdnotify.start_watchdog()
        assert task is not None
        try:  # read in a thread (5 s socket timeout against a hang) while the loop runs the watchdog
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, lambda: [_stamped(receiver) for _ in range(4)])
        finally:
            task.cancel()

    got = asyncio.run(scenario())
    assert [data for data, _ in got] == [b"WATCHDOG=1"] * 4
    # Stamped when sent, so a late reader cannot shorten a gap, and a loaded machine only lengthens
    # them: never sooner than half the interval (a little under, for the clocks' granularity).
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(got)]
    assert min(gaps) > 0.09, gaps


def test_watchdog_waits_half_the_interval_between_pings(receiver, monkeypatch):
    """The cadence itself, without a wall clock: what run_watchdog asks asyncio.sleep for."""
    naps: list[float] = []
    real_sleep = asyncio.sleep

    async def nap(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 3:
            raise asyncio.CancelledError
        await real_sleep(0)

    monkeypatch.setattr(sdnotify.asyncio, "sleep", nap)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(sdnotify.run_watchdog(0.2))
    assert naps == [0.1, 0.1, 0.1]
    assert [receiver.recv(64) for _ in range(3)] == [b"WATCHDOG=1"] * 3  # one ping before each wait


def test_no_watchdog_without_request(receiver, monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)

    async def scenario() -> None:
        assert sdnotify.start_watchdog() is None

    asyncio.run(scenario())


def test_a_receiver_that_does_not_read_never_blocks_the_sender(receiver, caplog):
    # The daemon notifies from its event loop: once the receiver's queue is full, a notification is
    # dropped (False, logged), never waited for. A blocking send would hang here (pytest's timeout).
    sent = 0
    while sdnotify.notify(f"STATUS=loaded {sent} plugins"):
        sent += 1
        assert sent < 100_000, "the receiver's queue never filled"
    assert sent > 0
    assert "cannot notify systemd (STATUS=loaded" in caplog.text
