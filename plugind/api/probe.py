"""The probe listener (`[api] probe_listen`): GET /health and GET /ready on a port of their own.

A liveness or readiness probe must be answered while the API listener is saturated (every
connection slot taken by slow or numerous clients): this listener shares nothing with it but the
event loop. It is deliberately tiny and not an ASGI app: one request per connection, a head of at
most `MAX_HEAD` bytes that must arrive within `HEAD_TIMEOUT_S`, at most `MAX_CONNECTIONS` open
connections (more are closed unread), no keep-alive, no body read. It serves the same status codes
as the API's /health and /ready, and nothing else: no token, no mutation, and /ready's body without
the failed plugins' error messages (those are on the API's /ready).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

log = logging.getLogger("plugind.api")

MAX_CONNECTIONS = 64
MAX_HEAD = 4096
HEAD_TIMEOUT_S = 2.0

Answer = Callable[[], tuple[int, dict[str, Any]]]

_PHRASES = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def _response(code: int, body: dict[str, Any], *, head_only: bool = False) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {code} {_PHRASES.get(code, '')}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n"
    ).encode()
    return head if head_only else head + payload


def _error(message: str, error: str) -> dict[str, Any]:
    return {"success": False, "message": message, "error": error}


class ProbeServer:
    """The routes and the connection count of one probe listener."""

    def __init__(self, health: Answer, ready: Answer) -> None:
        self.routes: dict[str, Answer] = {"/health": health, "/ready": ready}
        self.open = 0

    def answer(self, head: bytes) -> bytes:
        """The whole response to a request head (everything up to the blank line)."""
        line = head.split(b"\n", 1)[0].rstrip(b"\r")
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return _response(400, _error("malformed request line", "bad_request"))
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        route = self.routes.get(target.decode("ascii", "replace"))
        if route is None:
            return _response(404, _error("the probe listener serves /health and /ready only", "not_found"))
        if method not in (b"GET", b"HEAD"):
            return _response(405, _error("GET or HEAD only", "method_not_allowed"))
        try:
            code, body = route()
        except Exception:  # a bug must not leave the prober hanging
            log.exception("probe listener: %s failed", target.decode("ascii", "replace"))
            return _response(500, _error("internal error (see the daemon log)", "internal"))
        return _response(code, body, head_only=method == b"HEAD")

    def protocol(self) -> _ProbeProtocol:
        return _ProbeProtocol(self)


class _ProbeProtocol(asyncio.Protocol):
    def __init__(self, server: ProbeServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.counted = False
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses; they have its methods)
        self.transport = transport = cast(asyncio.Transport, transport)
        if self.server.open >= MAX_CONNECTIONS:
            transport.abort()
            return
        self.server.open += 1
        self.counted = True
        self.deadline = asyncio.get_running_loop().call_later(HEAD_TIMEOUT_S, self._expired)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            end = self.buffer.find(b"\n\n")
        if end >= 0:
            self._finish(self.server.answer(bytes(self.buffer[:end])))
        elif len(self.buffer) > MAX_HEAD:
            self._finish(_response(431, _error("request head too large", "bad_request")))

    def _expired(self) -> None:
        self.deadline = None
        self._finish(_response(408, _error("request head not complete in time", "request_timeout")))

    def _finish(self, reply: bytes) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.counted:
            self.counted = False
            self.server.open -= 1


async def start_probe_listener(sock: socket.socket, health: Answer, ready: Answer) -> asyncio.Server:
    """Serve the probe routes on the listening socket `sock` until the returned server is closed."""
    probe = ProbeServer(health, ready)
    return await asyncio.get_running_loop().create_server(probe.protocol, sock=sock)


__all__ = ["HEAD_TIMEOUT_S", "MAX_CONNECTIONS", "MAX_HEAD", "ProbeServer", "start_probe_listener"]
