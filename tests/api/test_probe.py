"""The probe listener (`[api] probe_listen`) on a real socket: /health and /ready only, GET or HEAD,
one request per connection, a bounded head that must arrive in time."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from plugind.api import probe as probe_mod
from plugind.api.probe import start_probe_listener


def _health() -> tuple[int, dict[str, Any]]:
    return 200, {"status": "ok"}


def _ready() -> tuple[int, dict[str, Any]]:
    return 503, {"ready": False, "status": "starting"}


async def _exchange(port: int, data: bytes, *, then_wait: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 30) if then_wait else b""
    writer.close()
    return reply


def _run(requests: list[bytes]) -> list[bytes]:
    async def main() -> list[bytes]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        server = await start_probe_listener(sock, _health, _ready)
        try:
            return [await _exchange(port, r) for r in requests]
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def _status_and_body(reply: bytes) -> tuple[int, Any]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body) if body else None


def test_health_and_ready_answer_with_their_codes_and_close() -> None:
    health, ready, head = _run([
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /ready?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n",
    ])
    assert _status_and_body(health) == (200, {"status": "ok"})
    assert _status_and_body(ready) == (503, {"ready": False, "status": "starting"})
    assert b"connection: close" in health.lower()
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")  # no body for HEAD


def test_anything_else_is_refused_without_echoing_it() -> None:
    replies = _run([
        b"GET /api/plugins HTTP/1.1\r\n\r\n",
        b"POST /ready HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"GET /health\r\n\r\n",
        b"GET /" + b"a" * 5000,  # no end of head within the size limit
    ])
    assert [_status_and_body(r)[0] for r in replies] == [404, 405, 400, 431]
    assert all(b"/api/plugins" not in r and b"aaaa" not in r for r in replies)


def test_a_head_not_finished_in_time_gets_408(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe_mod, "HEAD_TIMEOUT_S", 0.2)
    (reply,) = _run([b"GET /health HTTP/1.1\r\n"])
    assert _status_and_body(reply)[0] == 408
