"""The hook-call fast path (plugind/api/fastpath.py) against the contract FastAPI serves.

Two real uvicorn servers with the daemon's edge protocol, over real sockets, share one registry with
real plugin children: one app as the daemon builds it (fast path in front), one with
`fast_hooks=False` (FastAPI alone, the reference). Every request goes to both; status, content type
and JSON body must be the same, and the test checks which requests the fast path answered itself:
with httptools, in the edge protocol (the request never becomes an ASGI task), with h11 in the ASGI
layer in front of FastAPI. Raw exchanges (pipelined requests, `Connection: close`, HTTP/1.0, chunked
bodies, `Expect: 100-continue`, max_requests_per_connection) compare the bytes on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from api_helpers import TOKEN, open_api
from integration.kit import Workspace, plugin_source

from plugind.api import edge
from plugind.api.app import create_app
from plugind.api.fastpath import HookFastPath, encode_reply, encode_result, parse_name, parse_request
from plugind.api.routes.hooks import reply_of
from plugind.config import Settings
from plugind.errors import PluginError
from plugind.host.hooks import HookOutcome, HookResult
from plugind.host.poll import poller_for
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


class Entry:
    """The app as uvicorn runs it, counting the requests that reach it as ASGI requests (a hook call
    the edge protocol answers itself never does); it carries the app's fast path, which the edge
    protocol looks for on the app it serves."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.fast_path = getattr(app, "fast_path", None)
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.calls += 1
        await self.app(scope, receive, send)


class Served:
    def __init__(self, url: str, entry: Entry, server: uvicorn.Server) -> None:
        self.url = url
        self.entry = entry
        self.server = server
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)


@contextlib.asynccontextmanager
async def serve(app: Any, settings: Settings) -> AsyncIterator[Served]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    entry = Entry(app)
    config = uvicorn.Config(entry, log_config=None, access_log=False, lifespan="off",
                            server_header=False, **edge.uvicorn_options(settings))
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        yield Served(f"http://127.0.0.1:{port}", entry, server)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()


@contextlib.asynccontextmanager
async def serve_both(ws: Workspace, parser: str) -> AsyncIterator[tuple[Any, Served, Served]]:
    """One registry (`open_api`) served twice with `parser`: the app as the daemon builds it, fast
    path in front, and FastAPI alone (the reference). Yields (fast app, its server, reference)."""
    async with open_api(ws) as api:
        settings = api.settings
        settings.api.http_parser = parser
        fast_app = create_app(api.registry, settings, token=TOKEN)
        slow_app = create_app(api.registry, settings, token=TOKEN, fast_hooks=False)
        async with serve(fast_app, settings) as fast_srv, serve(slow_app, settings) as slow_srv:
            yield fast_app, fast_srv, slow_srv


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
    ("keys that are not strings out", "/api/hooks/keys/execute", b'{"data": null}', {}, True),
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
    ("a surrogate's raw bytes", "/api/hooks/echo/execute", b'{"data": "\xed\xa0\x80"}', {}, False),
    ("UTF-16, a lone surrogate", "/api/hooks/echo/execute",
     '{"data": "\ud800"}'.encode("utf-16-le", "surrogatepass"), {}, False),
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
    keys = "return {True: 1, None: {False: 2}, 3: 'null', 'null': [4.5, 'true\\\":'], 1.5: 'x'}"
    ws.add(plugin_source("keys", {"keys": (0, keys)}))


def comparable(reply: httpx.Response) -> tuple[int, str, Any]:
    # Measurements are not part of the contract: durations, and the one a timeout's message quotes.
    body = json.loads(re.sub(r"within [0-9.]+s", "within Ns", reply.text))
    for holder in (body, *(body.get("results") or ())) if isinstance(body, dict) else ():
        holder.pop("duration_s", None)
    return reply.status_code, reply.headers.get("content-type", ""), body


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_fast_path_answers_as_fastapi_does(ws: Workspace, parser: str) -> None:
    add_plugins(ws)

    async def main() -> None:
        async with serve_both(ws, parser) as (fast_app, fast_srv, slow_srv), \
                httpx.AsyncClient(base_url=fast_srv.url, timeout=30) as fast, \
                httpx.AsyncClient(base_url=slow_srv.url, timeout=30) as slow:
            fallback = Counting(fast_layer(fast_app).app)
            fast_layer(fast_app).app = fallback
            for name, path, body, extra, handled in CASES:
                headers = {**AUTH, **JSON, **extra}
                headers = {k: v for k, v in headers.items() if v}
                before, asgi_before = fallback.calls, fast_srv.entry.calls
                a = await fast.post(path, content=body, headers=headers)
                b = await slow.post(path, content=body, headers=headers)
                assert comparable(a) == comparable(b), name
                assert (fallback.calls == before) is handled, name
                # httptools: the edge protocol answers the hook call, no ASGI request is made.
                in_protocol = handled and parser == "httptools"
                assert (fast_srv.entry.calls == asgi_before) is in_protocol, name
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
            async with serve(app, api.settings) as srv, \
                    httpx.AsyncClient(base_url=srv.url, timeout=30, headers=AUTH) as client:
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


@pytest.mark.parametrize(
    "value",
    [{"a": [1, 2.5, "é", None, True]}, {True: 1}, {None: {False: 2}}, {1: 3, "k": (1, 2)}, {"null": 1},
     {"x": 'true":'}, b"\x00", float("nan"), [float("-inf")], {1.5: 2}, {b"k": 1}, {(1, 2): 3}, 10**30,
     "\u2028", {1: "a", "1": "b"}, {"-2.5": [1], -2.5: {"1": 0, 1: 2}}, {"x": ',"1":'}, {"2024": 1}],
)
def test_the_short_encoding_is_the_long_one(value: Any) -> None:
    """encode_result (no walk of the values when JSON takes them as they are) gives the bytes of
    encode_reply(reply_of(...)), the long way, whatever the plugins answered."""
    failed = HookOutcome("b", "error", None, PluginError(f"no, {SECRET}"), 0.5)
    for result in (HookResult("h", "chain", value, [HookOutcome("a", "ok", value, None, 1e-05)], 2e-05),
                   HookResult("h", "all", None, [HookOutcome("a", "ok", value, None, 0), failed], 1)):
        assert encode_result(result) == encode_reply(reply_of(result))


def test_a_client_that_waits_for_100_continue_is_answered(ws: Workspace) -> None:
    """The edge holds a response head back until its body (one send); the interim `100 Continue`
    must still go out at once, or a client that waits for it before sending its body hangs."""
    ws.add(plugin_source("echo", {"echo": (0, "return data")}))

    async def main() -> None:
        async with open_api(ws) as api:
            app = create_app(api.registry, api.settings, token=TOKEN)
            async with serve(app, api.settings) as srv:
                host, port = srv.host, srv.port

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


# ----------------------------------------------------------------------------- on the wire
def request(path: str, body: bytes, *, headers: dict[str, str] | None = None, version: str = "1.1",
            method: str = "POST", chunks: list[bytes] | None = None) -> bytes:
    """One raw request; `chunks` sends the body chunked (Transfer-Encoding) instead of `body`."""
    fields = {"Host": "x", **AUTH, **JSON, **(headers or {})}
    if chunks is not None:
        fields["Transfer-Encoding"] = "chunked"
        body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    elif method == "POST":
        fields.setdefault("Content-Length", str(len(body)))  # one given in `headers` wins
    head = f"{method} {path} HTTP/{version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v)
    return head.encode() + b"\r\n" + body


def read_reply(sock: socket.socket, buf: bytearray) -> bytes | None:
    """The next response's bytes (head and body) from `sock` (leftovers kept in `buf`), or None when
    the server closed the connection first."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            assert not buf, bytes(buf)
            return None
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    length = int(re.search(rb"\r\ncontent-length: (\d+)\r\n", bytes(buf[:end])).group(1))  # type: ignore[union-attr]
    while len(buf) < end + length:
        chunk = sock.recv(65536)
        assert chunk, bytes(buf)
        buf += chunk
    reply = bytes(buf[: end + length])
    del buf[: end + length]
    return reply


def normal(reply: bytes) -> bytes:
    """`reply` without what differs from one run to the next: the date, measured durations (and the
    content length they change)."""
    head, _, body = reply.partition(b"\r\n\r\n")
    body = re.sub(rb'"duration_s":[0-9.e+-]+', b'"duration_s":0', body)
    body = re.sub(rb"within [0-9.]+s", b"within Ns", body)
    lines = [line for line in head.split(b"\r\n") if not line.startswith((b"date: ", b"content-length: "))]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def exchange(srv: Served, raw: bytes, count: int, *, then: bytes = b"") -> tuple[list[bytes], bool]:
    """Send `raw` at once (pipelined), read `count` replies (an interim `100 Continue` first when it
    comes, then `then` is sent), and whether the server then closed the connection."""
    with socket.create_connection((srv.host, srv.port), timeout=10) as s:
        s.sendall(raw)
        buf = bytearray()
        replies = []
        if then:
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            interim, _, rest = bytes(buf).partition(b"\r\n\r\n")
            replies.append(interim + b"\r\n\r\n")
            buf = bytearray(rest)
            s.sendall(then)
        while len(replies) < count + bool(then):
            reply = read_reply(s, buf)
            if reply is None:
                break
            replies.append(reply)
        # Closed or not, told by a probe rather than by waiting for a close that may never come: a
        # connection kept open answers one more request (PROBE, 400); a closed one answers nothing.
        try:
            s.sendall(PROBE)
            closed = not buf and s.recv(65536) == b""
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        return [normal(r) for r in replies], closed


# No request at all: the HTTP parser answers it 400 itself (and closes), so no probe ever reaches the
# app, its routes or its counters.
PROBE = b"\x00\r\n\r\n"


ECHO = "/api/hooks/echo/execute"
CLOSE = {"Connection": "close"}
BIG = b'{"data": "' + b"x" * 1_100_000 + b'"}'
# (name, raw bytes, replies expected, bytes sent after the `100 Continue`)
WIRE: list[tuple[str, bytes, int, bytes]] = [
    ("pipelined, fast and not", b"".join([
        request("/api/hooks/slow/execute", b'{"data": 1, "timeout_s": 0.3}'),
        request(ECHO, b'{"data": 1}'),
        request(ECHO, b'{"data": 2}', headers={"Authorization": ""}),
        request("/api/hooks/on_request/execute", b'{"data": {"seen": []}}'),
        request("/health", b"", method="GET"),
        request(ECHO, b'{"data": '),
        request(ECHO, b'{"data": 3}'),
    ]), 7, b""),
    ("pipelined, the last says close", b"".join([
        request(ECHO, b'{"data": 1}'),
        request(ECHO, b'{"data": 2}', headers={"Connection": "close"}),
        request(ECHO, b'{"data": 3}'),
    ]), 2, b""),
    ("Connection: close", request(ECHO, b'{"data": 1}', headers={"Connection": "close"}), 1, b""),
    ("HTTP/1.0", request(ECHO, b'{"data": 1}', version="1.0"), 1, b""),
    ("HTTP/1.0 keep-alive", request(ECHO, b'{"data": 1}', version="1.0",
                                    headers={"Connection": "keep-alive"}), 1, b""),
    ("chunked", request(ECHO, b"", chunks=[b'{"data": ', b'{"x": [1, 2]}', b"}"]) + request(ECHO, b"{}"), 2,
     b""),
    ("chunked, not JSON", request(ECHO, b"", chunks=[b'{"data": ', b"x}"]), 1, b""),
    ("chunked, too large", request(ECHO, b"", chunks=[BIG[i : i + 65536] for i in range(0, len(BIG), 65536)]),
     1, b""),
    # A header given twice is FastAPI's to read: the first Authorization (empty: 401), the first
    # Content-Type (not JSON: 422), for a hook call and for a load.
    # (Connection: close: the exchange ends with the reply, not after a second of waiting.)
    ("Authorization twice", request(ECHO, b'{"data": 1}', headers=CLOSE).replace(
        b"\r\nAuthorization:", b"\r\nAuthorization: \r\nAuthorization:"), 1, b""),
    ("Content-Type twice", request(ECHO, b'{"data": 1}', headers=CLOSE).replace(
        b"\r\ncontent-type:", b"\r\nContent-Type: text/plain\r\ncontent-type:"), 1, b""),
    ("load, Authorization twice", request("/api/plugins/load", b'{"plugin_name": "echo"}', headers=CLOSE)
     .replace(b"\r\nAuthorization:", b"\r\nAuthorization: \r\nAuthorization:"), 1, b""),
    ("100-continue", request(ECHO, b"", headers={"Expect": "100-continue", "Content-Length": "11"}), 1,
     b'{"data": 1}'),
    ("100-continue, no token", request(ECHO, b"", headers={"Expect": "100-continue", "Content-Length": "11",
                                                           "Authorization": ""}), 1, b'{"data": 1}'),
]


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_the_wire_is_as_fastapi_writes_it(ws: Workspace, parser: str) -> None:
    """Pipelined requests (answered in order, one at a time), `Connection: close`, HTTP/1.0, chunked
    bodies and `Expect: 100-continue`: byte for byte what the server with FastAPI alone sends, and
    the connection closed when (and only when) it is."""
    add_plugins(ws)

    async def main() -> None:
        async with serve_both(ws, parser) as (_, fast, slow):
            for name, raw, count, then in WIRE:
                a = await asyncio.to_thread(exchange, fast, raw, count, then=then)
                b = await asyncio.to_thread(exchange, slow, raw, count, then=then)
                assert a == b, name
                assert len(a[0]) == count + bool(then), (name, a)
                assert a[0][-1].startswith(b"HTTP/1.1 "), name
            # What the replies say, beyond being the same.
            replies, closed = await asyncio.to_thread(exchange, fast, WIRE[0][1], 7)
            assert [r.split(b" ", 2)[1] for r in replies] == [b"200", b"200", b"401", b"200", b"200",
                                                               b"422", b"200"]
            assert b'"outcome":"timeout"' in replies[0] and not closed
            replies, closed = await asyncio.to_thread(exchange, fast, WIRE[1][1], 3)
            assert len(replies) == 2 and b"connection: close" in replies[1].lower() and closed
            replies, closed = await asyncio.to_thread(exchange, fast, WIRE[3][1], 1)
            assert b"connection: close" in replies[0].lower() and closed
            replies, _ = await asyncio.to_thread(exchange, fast, WIRE[5][1], 2)
            assert b'"data":{"x":[1,2]}' in replies[0]
            twice = {name: raw for name, raw, _, _ in WIRE if "twice" in name}
            for name, status in (("Authorization twice", b"401"), ("Content-Type twice", b"422"),
                                 ("load, Authorization twice", b"401")):
                replies, _ = await asyncio.to_thread(exchange, fast, twice[name], 1)
                assert replies[0].split(b" ", 2)[1] == status, name

    asyncio.run(main())


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_a_head_that_begins_behind_a_large_body_is_not_taken_for_a_large_head(ws: Workspace,
                                                                              parser: str) -> None:
    """A request pipelined behind one whose body is larger than `max_header_bytes`, its head split
    between the segment that ends that body and the next: both are answered (the bytes of the
    body before the head are not the head's)."""
    ws.add(plugin_source("echo", {"echo": (0, "return data")}))
    first = request(ECHO, b'{"data": "' + b"x" * 20_000 + b'"}')
    second = request(ECHO, b'{"data": 2}')

    def split(srv: Served) -> list[bytes]:
        with socket.create_connection((srv.host, srv.port), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(first + second[:20])
            # Apart, so the server reads them apart (what the assertion checks holds either way).
            time.sleep(0.3)
            s.sendall(second[20:])
            buf = bytearray()
            replies = [read_reply(s, buf), read_reply(s, buf)]
            return [r.split(b" ", 2)[1] if r else b"closed" for r in replies]

    async def main() -> None:
        async with serve_both(ws, parser) as (_, fast, slow):
            assert Settings().api.max_header_bytes < len(first)  # the default, which the servers keep
            for srv in (fast, slow):
                assert await asyncio.to_thread(split, srv) == [b"200", b"200"]

    asyncio.run(main())


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_a_100_continue_goes_out_after_the_previous_reply(ws: Workspace, parser: str) -> None:
    """A reply to HEAD (no body to send its head with: held to the loop's next turn) and, pipelined
    behind it, a hook call that waits for `100 Continue`: the reply first, then the interim one."""
    ws.add(plugin_source("echo", {"echo": (0, "return data")}))
    head = b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n"
    call = request(ECHO, b"x" * 11, headers={"Expect": "100-continue"})[:-11]  # its body: later

    def heads(srv: Served) -> list[bytes]:
        with socket.create_connection((srv.host, srv.port), timeout=10) as s:
            s.sendall(head + call)
            buf = b""
            while buf.count(b"\r\n\r\n") < 2:  # the HEAD reply has no body, whatever its length says
                chunk = s.recv(65536)
                assert chunk, buf
                buf += chunk
            first, interim = buf.split(b"\r\n\r\n")[:2]
            s.sendall(b'{"data": 1}')
            rest = bytearray(buf.split(b"\r\n\r\n", 2)[2])
            reply = read_reply(s, rest)
            assert reply is not None
            return [first.split(b"\r\n")[0], interim, reply.split(b"\r\n")[0]]

    async def main() -> None:
        async with serve_both(ws, parser) as (_, fast, slow):
            expected = await asyncio.to_thread(heads, slow)
            assert expected[1:] == [b"HTTP/1.1 100 Continue", b"HTTP/1.1 200 OK"]
            assert await asyncio.to_thread(heads, fast) == expected

    asyncio.run(main())


def test_the_last_request_of_a_connection_is_answered_then_closed(ws: Workspace) -> None:
    """api.max_requests_per_connection: its last reply says `Connection: close`, then the connection
    closes; pipelined requests past it are not answered (as FastAPI's replies do)."""
    add_plugins(ws)

    async def main() -> None:
        async with open_api(ws, configure=lambda s: setattr(s.api, "max_requests_per_connection", 3)) as api:
            fast_app = create_app(api.registry, api.settings, token=TOKEN)
            slow_app = create_app(api.registry, api.settings, token=TOKEN, fast_hooks=False)
            raw = b"".join(request(ECHO, b'{"data": %d}' % i) for i in range(5))
            async with serve(fast_app, api.settings) as fast, serve(slow_app, api.settings) as slow:
                a = await asyncio.to_thread(exchange, fast, raw, 5)
                b = await asyncio.to_thread(exchange, slow, raw, 5)
                assert a == b
                replies, closed = a
                assert len(replies) == 3 and closed
                assert [b"connection: close" in r for r in replies] == [False, False, True]
                assert fast.entry.calls == 0  # all three answered in the edge protocol

    asyncio.run(main())


def hook_calls(outcome: str) -> float:
    from plugind.monitor import metrics

    value = metrics.REGISTRY.get_sample_value(
        "plugind_hook_calls_total", {"hook": "slow", "plugin": "slow", "outcome": outcome})
    return value or 0.0


def test_a_client_gone_mid_call_or_mid_body(ws: Workspace, caplog: pytest.LogCaptureFixture) -> None:
    """A client that disconnects while its hook call runs: the call runs to its end (and is counted),
    nothing is written or logged, no task is left; one gone before its body is complete: no call. The
    server answers the next client as ever."""
    add_plugins(ws)

    async def main() -> None:
        async with open_api(ws) as api:
            app = create_app(api.registry, api.settings, token=TOKEN)
            async with serve(app, api.settings) as srv:
                before = hook_calls("timeout")

                def gone(raw: bytes) -> None:
                    with socket.create_connection((srv.host, srv.port), timeout=10) as s:
                        s.sendall(raw)

                await asyncio.to_thread(gone, request("/api/hooks/slow/execute", b'{"timeout_s": 0.5}'))
                for _ in range(100):
                    await asyncio.sleep(0.05)
                    if not srv.server.server_state.tasks and hook_calls("timeout") > before:
                        break
                assert hook_calls("timeout") == before + 1
                assert not srv.server.server_state.tasks
                half = request("/api/hooks/slow/execute", b'{"timeout_s": 0.5}')[:-5]
                await asyncio.to_thread(gone, half)
                await asyncio.sleep(0.8)
                assert hook_calls("timeout") == before + 1 and not srv.server.server_state.tasks
                replies, closed = await asyncio.to_thread(exchange, srv, request(ECHO, b'{"data": 1}'), 1)
                assert replies[0].startswith(b"HTTP/1.1 200 ") and not closed
                assert srv.entry.calls == 0
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage() for r in errors]

    asyncio.run(main())


@pytest.mark.parametrize(("parser", "fast"), [("httptools", True), ("h11", True), ("httptools", False)],
                         ids=["edge-protocol", "asgi-fast-path", "fastapi-route"])
def test_a_rest_call_does_not_make_the_loop_poll(ws: Workspace, parser: str, fast: bool,
                                                 two_cpus: tuple[int, int]) -> None:
    """The event loop polls for a library call's answer (a plugin on another CPU, a window to poll
    in), never for a REST request's, whichever of the three routes answers it."""
    add_plugins(ws)
    window = 200e-6  # as if grown over a burst (tests/host/test_poll.py)

    async def main() -> None:
        async with open_api(ws) as api:
            api.settings.api.http_parser = parser
            app = create_app(api.registry, api.settings, token=TOKEN, fast_hooks=fast)
            loaded = api.registry.get_plugin("echo")
            assert loaded is not None
            sup: Any = loaded.supervisor
            os.sched_setaffinity(sup.pid, {two_cpus[1]})
            assert (await api.registry.hooks.run("echo", 0, "chain", None)).data == 0  # where it runs now
            poller = poller_for(asyncio.get_running_loop())
            asked: list[float] = []
            begin = poller.begin
            poller.begin = lambda w: (asked.append(w), begin(w))[1]  # type: ignore[method-assign]
            async with serve(app, api.settings) as srv, \
                    httpx.AsyncClient(base_url=srv.url, timeout=30, headers=AUTH) as client:
                for i in range(1, 11):
                    sup._host_poll.window = window
                    reply = await client.post("/api/hooks/echo/execute", json={"data": i})
                    assert reply.status_code == 200 and reply.json()["data"] == i
                assert asked == []
                assert srv.entry.calls == (0 if fast and parser == "httptools" else 10)
                sup._host_poll.window = window
                assert (await api.registry.hooks.run("echo", 11, "chain", None)).data == 11
                assert asked == [window]  # the same plugin, called as a library: polled for

    asyncio.run(main())


LOAD, UNLOAD = "/api/plugins/load", "/api/plugins/unload"
# (name, path, raw body, extra headers, handled by the fast path?, echo loaded before?)
ACTION_CASES: list[tuple[str, str, bytes, dict[str, str], bool, bool]] = [
    ("load", LOAD, b'{"plugin_name": "echo"}', {}, True, False),
    ("load, already loaded", LOAD, b'{"plugin_name": "echo"}', {}, True, True),
    ("load, unknown plugin", LOAD, b'{"plugin_name": "nobody"}', {}, True, False),
    ("load, charset", LOAD, b'{"plugin_name":"echo"}', {"content-type": "application/json; charset=utf-8"},
     True, False),
    ("load, a name given twice", LOAD, b'{"plugin_name": "x", "plugin_name": "echo"}', {}, True, False),
    ("unload", UNLOAD, b'{"plugin_name": "echo"}', {}, True, True),
    ("unload, not loaded", UNLOAD, b'{"plugin_name": "echo"}', {}, True, False),
    ("unload, unknown plugin", UNLOAD, b'{"plugin_name": "nobody"}', {}, True, False),
    # Everything below is FastAPI's to answer.
    ("load, no token", LOAD, b'{"plugin_name": "echo"}', {"Authorization": ""}, False, False),
    ("unload, wrong token", UNLOAD, b'{"plugin_name": "echo"}', {"Authorization": "Bearer " + "x" * 27},
     False, True),
    ("load, extra field", LOAD, b'{"plugin_name": "echo", "x": 1}', {}, False, False),
    ("load, no name", LOAD, b"{}", {}, False, False),
    ("load, a path for a name", LOAD, b'{"plugin_name": "../echo"}', {}, False, False),
    ("load, a newline after the name", LOAD, b'{"plugin_name": "echo\\n"}', {}, False, False),
    ("load, a name too long", LOAD, json.dumps({"plugin_name": "e" * 64}).encode(), {}, False, False),
    ("load, a name that is not a string", LOAD, b'{"plugin_name": 5}', {}, False, False),
    ("unload, null", UNLOAD, b"null", {}, False, True),
    ("unload, a list", UNLOAD, b'["echo"]', {}, False, True),
    ("load, malformed JSON", LOAD, b'{"plugin_name": ', {}, False, False),
    ("load, UTF-16", LOAD, '{"plugin_name": "echo"}'.encode("utf-16"), {}, False, False),
    ("load, empty body", LOAD, b"", {}, False, False),
    ("load, text body", LOAD, b'{"plugin_name": "echo"}', {"content-type": "text/plain"}, False, False),
    ("load, oversized", LOAD, b'{"plugin_name": "' + b"e" * 1_100_000 + b'"}', {}, False, False),
]


def comparable_action(reply: httpx.Response) -> tuple[int, str, str, Any]:
    # A load's message quotes the pid of the plugin it started: not the same twice.
    return (reply.status_code, reply.headers.get("content-type", ""),
            reply.headers.get("content-length", ""), json.loads(re.sub(r"pid \d+", "pid N", reply.text)))


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_loads_and_unloads_answered_as_fastapi_does(ws: Workspace, parser: str) -> None:
    """POST /api/plugins/load and /unload through the fast path and through FastAPI alone, from the
    same state each time: the same status, headers and body (the pid in a load's message aside), and
    the same state after; the fast path answers exactly the requests with nothing to refuse."""
    ws.add(plugin_source("echo", {"echo": (0, "return data")}))

    async def main() -> None:
        async with serve_both(ws, parser) as (fast_app, fast_srv, slow_srv), \
                httpx.AsyncClient(base_url=fast_srv.url, timeout=30) as fast, \
                httpx.AsyncClient(base_url=slow_srv.url, timeout=30) as slow:
            registry = fast_layer(fast_app).registry
            fallback = Counting(fast_layer(fast_app).app)
            fast_layer(fast_app).app = fallback

            async def put(loaded: bool) -> None:
                if loaded and registry.get_plugin("echo") is None:
                    await registry.load_plugin("echo")
                elif not loaded and registry.get_plugin("echo") is not None:
                    await registry.unload_plugin("echo")

            for name, path, body, extra, handled, before in ACTION_CASES:
                headers = {k: v for k, v in {**AUTH, **JSON, **extra}.items() if v}
                replies, after = [], []
                for client in (fast, slow):
                    await put(before)
                    calls = fallback.calls
                    replies.append(await client.post(path, content=body, headers=headers))
                    after.append(registry.get_plugin("echo") is not None)
                    if client is fast:
                        assert (fallback.calls == calls) is handled, name
                a, b = replies
                assert comparable_action(a) == comparable_action(b), name
                assert after[0] == after[1], name
                if handled:
                    assert a.json()["success"] is (a.status_code == 200), name
            await put(False)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"plugin_name": "echo"}', "echo"),
        (b' {"plugin_name":"a-b_9"} ', "a-b_9"),
        (b'{"plugin_name": "Echo"}', None),
        (b'{"plugin_name": "echo", "version": "1"}', None),
        (b'{"plugin_name": null}', None),
        (b'{"plugin_name": "\\u0065cho"}', "echo"),
        (b'{"plugin_name": "ech\\u00f6"}', None),
        (b"\xff", None),
        (b"[]", None),
    ],
)
def test_what_the_fast_path_takes_as_a_plugin_name(body: bytes, expected: str | None) -> None:
    assert parse_name(body) == expected
