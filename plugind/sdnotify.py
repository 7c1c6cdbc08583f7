"""systemd's notify protocol: READY=1, STOPPING=1, STATUS=..., WATCHDOG=1 to `$NOTIFY_SOCKET`.

Without `NOTIFY_SOCKET` (not started by systemd with Type=notify) every call is a no-op. The socket
is a datagram Unix socket given as a path (`/run/systemd/notify`) or an abstract name (`@...`).

    notify("READY=1")                      # after the start-up scan and auto-load
    task = start_watchdog()                # WATCHDOG=1 every half WatchdogSec, if systemd asked
    notify("STOPPING=1")                   # first thing on SIGTERM
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger("plugind.sdnotify")


def _address() -> str | None:
    raw = os.environ.get("NOTIFY_SOCKET", "")
    if not raw:
        return None
    if raw.startswith("@"):
        return "\0" + raw[1:]  # abstract namespace
    if raw.startswith("/"):
        return raw
    log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract @name; not notifying", raw)
    return None


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1", or several "K=V" lines) to systemd; True when it was sent.

    A missing NOTIFY_SOCKET is a no-op (False). A send error is logged and gives False rather than
    raising: a failed notification must not take the daemon down (systemd's timeout will tell).
    It never blocks: the daemon calls it on its event loop, and a receiver that does not read (its
    queue full) must not stall the loop; that notification is dropped and logged instead.
    Raises ValueError for an empty state or one with a NUL byte.
    """
    if not state or "\0" in state:
        raise ValueError("a notify state must be non-empty text without NUL bytes, e.g. 'READY=1'")
    address = _address()
    if address is None:
        return False
    try:
        kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        with socket.socket(socket.AF_UNIX, kind) as sock:
            sock.connect(address)
            sock.send(state.encode("utf-8"), socket.MSG_DONTWAIT)
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", state.split("\n", 1)[0], exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds within which systemd expects WATCHDOG=1 (`WatchdogSec`), or None when not asked.

    None also when `WATCHDOG_PID` names another process (the setting is not meant for us) or the
    values are malformed.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not an integer; watchdog off", usec)
        return None
    return value / 1_000_000 if value > 0 else None


async def run_watchdog(interval: float) -> None:
    """Send WATCHDOG=1 every `interval` / 2 seconds until cancelled.

    It runs on the event loop on purpose: if the loop stalls, the pings stop and systemd restarts us.
    """
    period = interval / 2
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(period)


def start_watchdog() -> asyncio.Task[None] | None:
    """Start `run_watchdog` on the running loop if systemd asked for a watchdog; else None."""
    interval = watchdog_interval()
    if interval is None or _address() is None:
        return None
    return asyncio.get_running_loop().create_task(run_watchdog(interval), name="plugind-watchdog")


__all__ = ["notify", "run_watchdog", "start_watchdog", "watchdog_interval"]
