"""The benches' lean HTTP client: `http.client` on one persistent connection.

httpx costs the calling process ~0.5-0.8 ms of Python per request (bench/peers.py prints it), and on
a 2-CPU machine that CPU is taken from the daemon and the plugin being measured; a figure taken
through httpx is largely httpx's. This client builds the request once per call with the standard
library and reads the whole reply: the daemon does the same work for it as for any client.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

from conftest import TOKEN


class LeanClient:
    """Keep-alive JSON client for one daemon; a connection the daemon closed is opened again."""

    def __init__(self, port: int, token: str | None = TOKEN) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, decoded JSON body, or its text when it is not JSON) of one request."""
        payload = json.dumps(body).encode() if body is not None else None
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, payload, self.headers)
                reply = self.conn.getresponse()
                text = reply.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest):
                self.conn.close()
                if attempt:
                    raise
        try:
            return reply.status, json.loads(text) if text else None
        except ValueError:  # not JSON (a proxy's or a crash's page): the text, for the message
            return reply.status, text.decode(errors="replace")

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return self.request("POST", path, body)

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def close(self) -> None:
        self.conn.close()
