"""The hook-call fast path (plugind/api/fastpath.py) against the contract FastAPI serves.

Two real uvicorn servers with the daemon's edge protocol, over real sockets, share one registry with
real plugin children: one app as the daemon builds it (fast path in front), one with
`fast_hooks=False` (FastAPI alone, the reference). Every request goes to both; status, content type
and JSON body must be the same, and the test checks which requests the fast path answered itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from api_helpers import TOKEN, open_api
from integration.kit import Workspace, plugin_source

from plugind.api import edge
from plugind.api.app import create_app
from plugind.api.fastpath import HookFastPath, parse_request
from plugind.config import Settings
from plugind.wire.limits import MAX_DEPTH

SECRET = "token=" + "ab" * 32  # a 64-hex value after "token": redacted in every error message

AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"content-type": "application/json"}


class Counting:
    """Wraps what the fast path hands requests to, counting them (the fallback to FastAPI)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.calls += 1
        await self.app(scope, receive, send)


def fast_layer(app: Any) -> HookFastPath:
    layer = app.fast_path
    assert isinstance(layer, HookFastPath)
    return layer


@contextlib.asynccontextmanager
async def serve(app: Any, settings: Settings) -> AsyncIterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                            server_header=False, **edge.uvicorn_options(settings))
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()


def deep(n: int) -> Any:
    value: Any = 0
    for _ in range(n):
        value = [value]
    return value


# (name, path, raw body, extra headers, handled by the fast path?)
CASES: list[tuple[str, str, bytes, dict[str, str], bool]] = [
    ("chain", "/api/hooks/echo/execute", json.dumps({"data": {"a": [1, 2.5, "é", None]}}).encode(), {}, True),
    ("no data", "/api/hooks/echo/execute", b"{}", {}, True),
    ("until_error", "/api/hooks/on_request/execute",
     json.dumps({"data": {"seen": []}, "policy": "until_error"}).encode(), {}, True),
    ("all", "/api/hooks/on_request/execute",
     json.dumps({"data": {"seen": []}, "policy": "all", "timeout_s": 5}).encode(), {}, True),
    ("chain with failure, redacted", "/api/hooks/on_request/execute",
     json.dumps({"data": {"seen": []}}).encode(), {}, True),
    ("integer timeout", "/api/hooks/echo/execute", b'{"data": 1, "timeout_s": 2}', {}, True),
    ("timed out", "/api/hooks/slow/execute", b'{"data": 1, "timeout_s": 0.2}', {}, True),
    ("unknown hook", "/api/hooks/nobody/execute", b'{"data": 7}', {}, True),
    ("bytes and NaN out", "/api/hooks/odd/execute", b'{"data": null}', {}, True),
    ("charset", "/api/hooks/echo/execute", b'{"data": 3}',
     {"content-type": "application/json; charset=utf-8"}, True),
    # Everything below is FastAPI's to answer.
    ("no token", "/api/hooks/echo/execute", b'{"data": 1}', {"Authorization": ""}, False),
    ("wrong token", "/api/hooks/echo/execute", b'{"data": 1}', {"Authorization": "Bearer " + "x" * 27},
     False),
    ("wrong scheme", "/api/hooks/echo/execute", b'{"data": 1}', {"Authorization": f"Basic {TOKEN}"}, False),
    ("malformed JSON", "/api/hooks/echo/execute", b'{"data": ', {}, False),
    ("not an object", "/api/hooks/echo/execute", b"[1, 2]", {}, False),
    ("extra field", "/api/hooks/echo/execute", b'{"data": 1, "x": 2}', {}, False),
    ("bad policy", "/api/hooks/echo/execute", b'{"data": 1, "policy": "some"}', {}, False),
    ("policy not a string", "/api/hooks/echo/execute", b'{"policy": 1}', {}, False),
    ("negative timeout", "/api/hooks/echo/execute", b'{"timeout_s": -1}', {}, False),
    ("timeout past max_timeout_secs", "/api/hooks/echo/execute", b'{"data": 1, "timeout_s": 900}', {}, False),
    ("zero timeout", "/api/hooks/echo/execute", b'{"timeout_s": 0}', {}, False),
    ("huge timeout", "/api/hooks/echo/execute", b'{"timeout_s": 1e9}', {}, False),
    ("timeout as a string", "/api/hooks/echo/execute", b'{"timeout_s": "5"}', {}, False),
    ("timeout as a bool", "/api/hooks/echo/execute", b'{"timeout_s": true}', {}, False),
    ("NaN timeout", "/api/hooks/echo/execute", b'{"timeout_s": NaN}', {}, False),
    ("too deep", "/api/hooks/echo/execute", json.dumps({"data": deep(MAX_DEPTH + 5)}).encode(), {}, False),
    ("past json's recursion", "/api/hooks/echo/execute",
     b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}, False),
    ("lone surrogate", "/api/hooks/echo/execute", b'{"data": "\\ud800"}', {}, False),
    ("hook off the pattern", "/api/hooks/-bad/execute", b'{"data": 1}', {}, False),
    ("hook with a newline", "/api/hooks/echo%0A/execute", b'{"data": 1}', {}, False),
    ("hook with a slash", "/api/hooks/a%2Fb/execute", b'{"data": 1}', {}, False),
    ("text body", "/api/hooks/echo/execute", b'{"data": 1}', {"content-type": "text/plain"}, False),
    ("no content type", "/api/hooks/echo/execute", b'{"data": 1}', {"content-type": ""}, False),
    ("oversized", "/api/hooks/echo/execute", b'{"data": "' + b"x" * 1_100_000 + b'"}', {}, False),
]


def add_plugins(ws: Workspace) -> None:
    ws.add(plugin_source("echo", {"echo": (0, "return data")}))
    ws.add(plugin_source("first", {"on_request": (20, "data['seen'].append('first')\nreturn data")}))
    ws.add(plugin_source("failing", {"on_request": (15, f"raise ValueError('no thanks, {SECRET}')")}))
    ws.add(plugin_source("second", {"on_request": (10, "data['seen'].append('second')\nreturn data")}))
    ws.add(plugin_source("slow", {"slow": (0, "time.sleep(2)\nreturn data")}))
    odd = "return {'b': b'\\x00\\xff', 'n': float('nan'), 1: -float('inf')}"
    ws.add(plugin_source("odd", {"odd": (0, odd)}))


def comparable(reply: httpx.Response) -> tuple[int, str, Any]:
    # Measurements are not part of the contract: durations, and the one a timeout's message quotes.
    body = json.loads(re.sub(r"within [0-9.]+s", "within Ns", reply.text))
    for holder in (body, *(body.get("results") or ())) if isinstance(body, dict) else ():
        holder.pop("duration_s", None)
    return reply.status_code, reply.headers.get("content-type", ""), body


def test_fast_path_answers_as_fastapi_does(ws: Workspace) -> None:
    add_plugins(ws)

    async def main() -> None:
        async with open_api(ws) as api:
            settings = api.settings
            fast_app = create_app(api.registry, settings, token=TOKEN)
            slow_app = create_app(api.registry, settings, token=TOKEN, fast_hooks=False)
            async with serve(fast_app, settings) as fast_url, serve(slow_app, settings) as slow_url, \
                    httpx.AsyncClient(base_url=fast_url, timeout=30) as fast, \
                    httpx.AsyncClient(base_url=slow_url, timeout=30) as slow:
                fallback = Counting(fast_layer(fast_app).app)
                fast_layer(fast_app).app = fallback
                for name, path, body, extra, handled in CASES:
                    headers = {**AUTH, **JSON, **extra}
                    headers = {k: v for k, v in headers.items() if v}
                    before = fallback.calls
                    a = await fast.post(path, content=body, headers=headers)
                    b = await slow.post(path, content=body, headers=headers)
                    assert comparable(a) == comparable(b), name
                    assert (fallback.calls == before) is handled, name
                    if a.status_code == 401:
                        assert a.headers["www-authenticate"] == "Bearer", name
                # Other routes are untouched, and the schema still lists the route.
                spec = (await fast.get("/openapi.json")).json()
                assert "post" in spec["paths"]["/api/hooks/{hook}/execute"]
                assert (await fast.get("/api/hooks/echo/execute", headers=AUTH)).status_code == 405

    asyncio.run(main())


def test_what_the_fast_path_answers(ws: Workspace) -> None:
    """The contract itself, through the fast path: results, redaction, the limits on `timeout_s`."""
    add_plugins(ws)

    async def main() -> None:
        async with open_api(ws) as api:
            app = create_app(api.registry, api.settings, token=TOKEN)
            async with serve(app, api.settings) as url, \
                    httpx.AsyncClient(base_url=url, timeout=30, headers=AUTH) as client:
                ok = await client.post("/api/hooks/echo/execute", json={"data": {"x": "é"}})
                assert ok.status_code == 200
                assert ok.json() == {**ok.json(), "hook": "echo", "policy": "chain", "success": True,
                                     "data": {"x": "é"}, "error": None}
                chain = (await client.post("/api/hooks/on_request/execute",
                                           json={"data": {"seen": []}})).json()
                assert [r["outcome"] for r in chain["results"]] == ["ok", "error", "ok"]
                assert "no thanks" in chain["error"]["message"] and SECRET not in json.dumps(chain)
                assert "[REDACTED]" in chain["results"][1]["error"]["message"]
                odd = (await client.post("/api/hooks/odd/execute", json={})).json()
                assert odd["data"] == {"b": {"$bytes": "AP8="}, "n": "NaN", "1": "-Infinity"}
                late = await client.post("/api/hooks/slow/execute", json={"data": 1, "timeout_s": 0.2})
                assert late.json()["results"][0]["outcome"] == "timeout"
                for bad in (0, -1, 3601, 300.5, "x"):
                    reply = await client.post("/api/hooks/echo/execute", json={"timeout_s": bad})
                    assert reply.status_code == 422, bad
                    assert reply.json()["error"] == "invalid_input" and "timeout_s" in reply.json()["message"]
                nope = await client.post("/api/hooks/echo/execute", json={"data": 1},
                                         headers={"Authorization": "Bearer nope"})
                assert nope.status_code == 401 and nope.json()["error"] == "unauthorized"
                big = await client.post("/api/hooks/echo/execute",
                                        json={"data": "x" * (api.settings.api.max_body_bytes + 1)})
                assert big.status_code == 413 and big.json()["error"] == "body_too_large"

    asyncio.run(main())


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"data": 1}', (1, "chain", None)),
        (b'{"policy": "all", "timeout_s": 3}', (None, "all", 3.0)),
        (b'{"data": 1, "timeout_s": 3600}', (1, "chain", 3600.0)),
        (b'{"timeout_s": 3600.5}', None),
        (b'{"timeout_s": null}', (None, "chain", None)),
        (b'{"policy": null}', None),
        (b"null", None),
        (b"\xff", None),
    ],
)
def test_what_the_fast_path_takes_as_it_is(body: bytes, expected: Any) -> None:
    assert parse_request(body) == expected


def test_a_client_that_waits_for_100_continue_is_answered(ws: Workspace) -> None:
    """The edge holds a response head back until its body (one send); the interim `100 Continue`
    must still go out at once, or a client that waits for it before sending its body hangs."""
    ws.add(plugin_source("echo", {"echo": (0, "return data")}))

    async def main() -> None:
        async with open_api(ws) as api:
            app = create_app(api.registry, api.settings, token=TOKEN)
            async with serve(app, api.settings) as url:
                host, port = url.removeprefix("http://").split(":")

                def exchange() -> tuple[bytes, bytes]:
                    body = b'{"data": {"x": 1}}'
                    with socket.create_connection((host, int(port)), timeout=10) as s:
                        s.sendall(
                            b"POST /api/hooks/echo/execute HTTP/1.1\r\nHost: x\r\n"
                            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                            b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                            b"Content-Length: %d\r\n\r\n" % len(body)
                        )
                        interim = s.recv(65536)
                        s.sendall(body)
                        reply = b""
                        while b"}" not in reply.partition(b"\r\n\r\n")[2][-2:]:
                            chunk = s.recv(65536)
                            assert chunk, reply
                            reply += chunk
                        return interim, reply

                interim, reply = await asyncio.to_thread(exchange)
                assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
                head, _, body = reply.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 ")
                assert json.loads(body)["data"] == {"x": 1}

    asyncio.run(main())
