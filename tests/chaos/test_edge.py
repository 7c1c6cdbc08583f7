"""Issue 9, row 2: slow and numerous HTTP clients against a real daemon.

Each test opens a bounded number of raw TCP connections (a few hundred at most) that send a request
head or body very slowly, or nothing at all, and asserts what the daemon did with them (closed with
408, closed mid-body, refused with 503 over the cap), that /health kept answering on the
connection the HealthProbe opened before the attack and from fresh connections to the probe
listener, and that nothing leaked: the daemon's open connections and fds come back to where they
were. The edge's limits are lowered through PLUGIND_API__* so every scenario takes seconds.
"""

from __future__ import annotations

import contextlib
import re
import resource
import selectors
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest
from chaos_harness import TOKEN, HealthProbe, free_port, wait_for
from kit import plugin_source

UPPER_BOUND_S = 30.0  # only so that a broken daemon fails the test instead of hanging it


@pytest.fixture(params=["httptools", "h11"])
def http_parser(request: pytest.FixtureRequest) -> str:
    parser: str = request.param
    return parser


@pytest.fixture
def daemon_factory(http_parser: str, daemon_factory: Any) -> Any:
    """Every scenario with each HTTP parser (`api.http_parser`): httptools, the default where it is
    installed, and h11, the fallback."""

    def factory(ws: Any, **kw: Any) -> Any:
        kw["env"] = {"PLUGIND_API__HTTP_PARSER": http_parser, **(kw.get("env") or {})}
        return daemon_factory(ws, **kw)

    return factory


def metric(d: Any, name: str, labels: str = "", client: httpx.Client | None = None) -> float:
    """One sample of the daemon's /metrics (0 when it is not there yet); through `client`'s kept-alive
    connection if given (a fresh one is refused while the API is saturated)."""
    text = client.get("/metrics").text if client is not None else d.api("GET", "/metrics").text
    m = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def fresh_get(port: int, path: str) -> int:
    """GET `path` on a new connection (no pool, no keep-alive); the status code."""
    with httpx.Client(timeout=5.0) as c:
        return c.get(f"http://127.0.0.1:{port}{path}").status_code


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    return s


def read_all(s: socket.socket) -> bytes | None:
    """What the daemon sent before closing `s`; None while it is still open and silent."""
    got = b""
    while True:
        try:
            chunk = s.recv(65536)
        except BlockingIOError:
            return got or None
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk


def closed_by_daemon(socks: list[socket.socket], within: float) -> dict[socket.socket, bytes]:
    """The sockets of `socks` the daemon closed within `within` seconds, with what it sent first."""
    done: dict[socket.socket, bytes] = {}
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    buffers: dict[socket.socket, bytes] = {}
    deadline = time.monotonic() + within
    while len(done) < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                chunk = b""
            if chunk:
                buffers[s] = buffers.get(s, b"") + chunk
                continue
            done[s] = buffers.get(s, b"")
            sel.unregister(s)
    sel.close()
    return done


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    try:
        yield held
    finally:
        for s in held:
            s.close()


def daemon_fds(d: Any) -> int:
    return psutil.Process(d.proc.pid).num_fds()


def settle(d: Any, fds_before: int) -> None:
    """Nothing leaked: the daemon's API connections are back to the one asking, and its fds to
    what they were before the attack (a few more allowed for lazily opened files)."""
    wait_for(lambda: metric(d, "plugind_http_connections") <= 1, UPPER_BOUND_S, "connections released")
    wait_for(lambda: daemon_fds(d) <= fds_before + 8, UPPER_BOUND_S, "the daemon's fds back")


def test_slow_request_heads_get_408_and_are_closed(ws: Any, daemon_factory: Any) -> None:
    probe_port = free_port()
    d = daemon_factory(ws, env={
        "PLUGIND_API__HEADER_TIMEOUT_SECS": "1",
        "PLUGIND_API__PROBE_LISTEN": f"127.0.0.1:{probe_port}",
    })
    fds_before = daemon_fds(d)
    with HealthProbe(d.url) as probe, sockets() as held:
        silent = []
        for i in range(60):
            s = connect(d.port)
            held.append(s)
            if i % 3 == 0:
                silent.append(s)
                continue  # says nothing at all
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # a head that is never finished
        deadline = time.monotonic() + UPPER_BOUND_S
        # Keep dripping header bytes, as a slow-loris client does: that must not extend the deadline.
        # (Not into the silent ones: "XXX" is no request line, which httptools' parser refuses with
        # 400 at its first byte, h11 once the line ends.)
        closed: dict[socket.socket, bytes] = {}
        while len(closed) < len(held) and time.monotonic() < deadline:
            for s in held:
                if s not in closed and s not in silent:
                    with contextlib.suppress(OSError):
                        s.send(b"X")
            closed.update(closed_by_daemon([s for s in held if s not in closed], within=0.5))
            assert fresh_get(probe_port, "/health") == 200
        assert len(closed) == len(held), f"{len(held) - len(closed)} slow connections still open"
        for reply in closed.values():
            assert reply.startswith(b"HTTP/1.1 408 "), reply[:80]
    probe.check()
    assert metric(d, "plugind_http_connections_timed_out_total", '{reason="header_timeout"}') >= 60
    settle(d, fds_before)


def test_slow_request_bodies_are_cut_off(ws: Any, daemon_factory: Any) -> None:
    ws.add(plugin_source("echo", {"echo": (0, "return data")}))
    d = daemon_factory(ws, env={"PLUGIND_API__BODY_TIMEOUT_SECS": "1"})
    fds_before = daemon_fds(d)
    head = (
        "POST /api/hooks/echo/execute HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    with HealthProbe(d.url) as probe, sockets() as held:
        for _ in range(40):
            s = connect(d.port)
            s.sendall(head + b'{"data": "')
            held.append(s)
        closed: dict[socket.socket, bytes] = {}
        deadline = time.monotonic() + UPPER_BOUND_S
        while len(closed) < len(held) and time.monotonic() < deadline:
            for s in held:
                if s not in closed:
                    with contextlib.suppress(OSError):
                        s.send(b"a")  # a byte at a time: never done
            closed.update(closed_by_daemon([s for s in held if s not in closed], within=0.5))
        assert len(closed) == len(held), f"{len(held) - len(closed)} slow bodies still being read"
        # And an honest client on the API is served meanwhile.
        assert d.call("echo", {"x": 1})["results"][0]["output"] == {"x": 1}
    probe.check()
    assert metric(d, "plugind_http_connections_timed_out_total", '{reason="body_timeout"}') >= 40
    settle(d, fds_before)


def test_a_connection_flood_is_refused_over_the_cap_and_probes_keep_answering(
    ws: Any, daemon_factory: Any
) -> None:
    cap, flood = 50, 200
    probe_port = free_port()
    d = daemon_factory(ws, env={
        "PLUGIND_API__MAX_CONNECTIONS": str(cap),
        "PLUGIND_API__MAX_CONNECTIONS_PER_CLIENT": "0",
        "PLUGIND_API__HEADER_TIMEOUT_SECS": "120",  # the flood is held open for the whole test
        "PLUGIND_API__PROBE_LISTEN": f"127.0.0.1:{probe_port}",
    })
    fds_before = daemon_fds(d)
    with HealthProbe(d.url) as probe, sockets() as held:  # the probe's connection is one of `cap`
        for _ in range(flood):
            s = connect(d.port)
            s.sendall(b"GET /health HTTP/1.1\r\n")
            held.append(s)
        refused = wait_for(
            lambda: (lambda c: c if len(c) >= flood - (cap - 1) else None)(closed_by_daemon(held, 0.5)),
            UPPER_BOUND_S, "the connections over the cap refused",
        )
        # Exactly the ones over the cap: the admitted ones stay open.
        time.sleep(0.5)  # not a timing assertion: a late extra close would still be counted below
        refused.update(closed_by_daemon([s for s in held if s not in refused], 0.5))
        assert len(refused) == flood - (cap - 1)
        for reply in refused.values():
            assert reply == b"" or reply.startswith(b"HTTP/1.1 503 "), reply[:80]
        # The API is saturated: fresh connections to it are refused too, but the probe listener answers.
        assert fresh_get(d.port, "/health") == 503
        for _ in range(20):
            assert fresh_get(probe_port, "/health") == 200
            assert fresh_get(probe_port, "/ready") == 200
    probe.check()
    settle(d, fds_before)
    assert metric(d, "plugind_http_connections_refused_total", '{reason="max_connections"}') >= flood - cap


def test_one_client_address_cannot_take_every_connection(ws: Any, daemon_factory: Any) -> None:
    per_client = 20
    d = daemon_factory(ws, env={
        "PLUGIND_API__MAX_CONNECTIONS_PER_CLIENT": str(per_client),
        "PLUGIND_API__HEADER_TIMEOUT_SECS": "120",
    })
    fds_before = daemon_fds(d)
    with HealthProbe(d.url) as probe, sockets() as held:
        for _ in range(3 * per_client):
            s = connect(d.port, source="127.0.0.2")
            s.sendall(b"GET /health HTTP/1.1\r\n")
            held.append(s)
        refused = wait_for(
            lambda: (lambda c: c if len(c) >= 2 * per_client else None)(closed_by_daemon(held, 0.5)),
            UPPER_BOUND_S, "the connections over the per-client cap refused",
        )
        assert len(refused) == 2 * per_client
        # Another address is served as usual.
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3"), timeout=5) as c:
            assert c.get(f"{d.url}/health").status_code == 200
    probe.check()
    settle(d, fds_before)
    assert metric(d, "plugind_http_connections_refused_total", '{reason="max_connections_per_client"}') >= 40


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def test_the_monitor_keeps_sampling_when_clients_flood_to_the_fd_limit(
    ws: Any, daemon_factory: Any
) -> None:
    ws.add(plugin_source("echo", {"echo": (0, "return data")}))
    probe_port = free_port()
    d = daemon_factory(ws, preexec_fn=_low_nofile, env={
        "PLUGIND_API__MAX_CONNECTIONS": "100000",  # lowered by the daemon to fit its 256 fds
        "PLUGIND_API__MAX_CONNECTIONS_PER_CLIENT": "0",
        "PLUGIND_API__HEADER_TIMEOUT_SECS": "120",
        "PLUGIND_API__PROBE_LISTEN": f"127.0.0.1:{probe_port}",
        "PLUGIND_MONITORING__CHECK_INTERVAL_SECS": "0.2",
    })
    assert d.plugin("echo")["state"] == "running"
    fds_before = daemon_fds(d)
    errors_before = metric(d, "plugind_monitor_sample_errors_total")
    flood = 400  # more than the daemon's fd limit
    with HealthProbe(d.url) as probe, sockets() as held, d.client() as kept:
        kept.get("/metrics")  # connected before the flood: one of the admitted connections
        for _ in range(flood):
            try:
                s = connect(d.port)
            except OSError:
                break  # the backlog is full: the daemon accepts no more
            with contextlib.suppress(OSError):
                s.sendall(b"GET /health HTTP/1.1\r\n")
            held.append(s)
        wait_for(lambda: daemon_fds(d) >= fds_before + 50, UPPER_BOUND_S, "the flood to be accepted")
        # While the API is saturated, the probe listener answers from fresh connections and the
        # monitor keeps sweeping, without a failed sample.
        sweeps_then = metric(d, "plugind_monitor_sweeps_total", client=kept)
        for _ in range(30):
            assert fresh_get(probe_port, "/health") == 200
        wait_for(lambda: metric(d, "plugind_monitor_sweeps_total", client=kept) >= sweeps_then + 3,
                 UPPER_BOUND_S, "three monitor sweeps during the flood")
        assert metric(d, "plugind_monitor_sample_errors_total", client=kept) == errors_before
        assert fresh_get(probe_port, "/ready") == 200
        assert daemon_fds(d) < 256 - 32  # the cap kept a reserve of fds free
    probe.check()
    settle(d, fds_before)
    assert metric(d, "plugind_monitor_sample_errors_total") == errors_before
    assert "sampling failed" not in d.log()
    assert d.call("echo", {"x": 2})["results"][0]["output"] == {"x": 2}


def test_a_kept_alive_connection_serves_a_bounded_number_of_requests(ws: Any, daemon_factory: Any) -> None:
    d = daemon_factory(ws, env={"PLUGIND_API__MAX_REQUESTS_PER_CONNECTION": "3"})
    fds_before = daemon_fds(d)
    with HealthProbe(d.url) as probe, sockets() as held:
        s = connect(d.port)
        held.append(s)
        s.setblocking(True)
        s.settimeout(UPPER_BOUND_S)
        replies = []
        for _ in range(3):
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(1)
            length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
            body = b""
            while len(body) < length:
                body += s.recv(length - len(body))
            replies.append(head.lower())
        assert all(r.startswith(b"http/1.1 200 ") for r in replies)
        assert b"connection: close" not in replies[0] and b"connection: close" not in replies[1]
        assert b"connection: close" in replies[2]
        assert s.recv(1) == b""  # and the daemon closed it
    probe.check()
    settle(d, fds_before)


def test_a_request_head_over_max_header_bytes_gets_400(
    ws: Any, daemon_factory: Any, http_parser: str
) -> None:
    d = daemon_factory(ws, env={"PLUGIND_API__MAX_HEADER_BYTES": "4096"})
    fds_before = daemon_fds(d)
    whole = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n"
    with HealthProbe(d.url) as probe, sockets() as held:
        if http_parser == "httptools":
            # h11 bounds only what it holds of an unfinished head: a whole head arriving in one
            # read passes it, whatever its size.
            at_once = connect(d.port)
            held.append(at_once)
            at_once.sendall(whole)
        dripped = connect(d.port)  # a header line that never ends, in pieces
        held.append(dripped)
        dripped.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        closed: dict[socket.socket, bytes] = {}
        deadline = time.monotonic() + UPPER_BOUND_S
        sent = 0
        while len(closed) < len(held) and time.monotonic() < deadline:
            if sent < 6000:  # past the limit, then no more (bytes sent after the close reset it)
                dripped.sendall(b"a" * 1000)
                sent += 1000
            closed.update(closed_by_daemon([s for s in held if s not in closed], within=0.2))
        assert len(closed) == len(held)
        for reply in closed.values():
            assert reply.startswith(b"HTTP/1.1 400 "), reply[:80]
        # A head within the limit is served.
        assert fresh_get(d.port, "/health") == 200
    probe.check()
    settle(d, fds_before)
