"""plugind.api.client: where the token may go (real HTTP servers on loopback)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from plugind.api.client import PlugindClient

TOKEN = "client-test-token-0123456789"


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]]

    def do_GET(self) -> None:  # (the name http.server calls)
        self.seen.append((self.path, self.headers.get("Authorization")))
        body = json.dumps({"status": "ok"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Any]:
    """Two servers: (the daemon's URL, what it saw, what the proxy saw, the proxy's URL)."""
    made = []
    for _ in range(2):
        seen: list[tuple[str, str | None]] = []
        handler = type("H", (_Recorder,), {"seen": seen})
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        made.append((srv, seen))
    (daemon, daemon_seen), (proxy, proxy_seen) = made
    try:
        yield (f"http://127.0.0.1:{daemon.server_port}", daemon_seen, proxy_seen,
               f"http://127.0.0.1:{proxy.server_port}")
    finally:
        for srv, _ in made:
            srv.shutdown()
            srv.server_close()


def test_a_local_daemon_is_never_reached_through_the_environments_proxy(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, daemon_seen, proxy_seen, proxy_url = server
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, proxy_url)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with PlugindClient(url, token=TOKEN) as api:
        assert api.health() == {"status": "ok"}
        assert not api.cleartext_token
    assert daemon_seen == [("/health", f"Bearer {TOKEN}")]
    assert proxy_seen == []  # the proxy never saw the token


@pytest.mark.parametrize(
    ("url", "token", "cleartext"),
    [("http://192.0.2.10:7070", TOKEN, True), ("https://192.0.2.10:7070", TOKEN, False),
     ("http://192.0.2.10:7070", None, False), ("http://localhost:7070", TOKEN, False),
     ("http://[::1]:7070", TOKEN, False)],
)
def test_a_token_sent_unencrypted_across_the_network_is_flagged(url: str, token: str | None,
                                                                 cleartext: bool) -> None:
    with PlugindClient(url, token=token) as api:
        assert api.cleartext_token is cleartext
