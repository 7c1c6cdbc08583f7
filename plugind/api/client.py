"""A small synchronous client of the plugind REST API (used by `plugind ctl` and by integrators).

    with PlugindClient("http://127.0.0.1:7070", token=TOKEN) as api:
        api.load("header-tagger")
        reply = api.call("on_request", {"headers": {}}, policy="chain")

Errors: every non-2xx reply raises `ApiError` with the status code, the server's message and its
machine label; a connection failure raises `ApiError` with status 0.
"""

from __future__ import annotations

from typing import Any

import httpx

from plugind.api import is_loopback_host
from plugind.errors import PluginError


class ApiError(PluginError):
    """The daemon answered with an error status, or could not be reached (status 0)."""

    code = "api_error"

    def __init__(self, message: str, *, status: int, error: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


def is_local_url(url: str) -> bool:
    """Whether `url` names this machine (localhost or a loopback address)."""
    return is_loopback_host(httpx.URL(url).host)


class PlugindClient:
    """Talks to one daemon over TCP (`url`) or a Unix socket (`unix_socket`)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:7070",
        *,
        token: str | None = None,
        unix_socket: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._token = token
        transport = httpx.HTTPTransport(uds=unix_socket) if unix_socket else None
        base = "http://plugind" if unix_socket else url.rstrip("/")
        # A daemon on this machine is never reached through a proxy of the environment's
        # (http_proxy), which would see the token; a remote one may need it.
        local = unix_socket is not None or is_local_url(base)
        self._http = httpx.Client(base_url=base, headers=headers, timeout=timeout, transport=transport,
                                  trust_env=not local)
        self.where = unix_socket or base
        # The token would cross the network unencrypted: said, not refused (an operator's tunnel or
        # private network may make it fine).
        self.cleartext_token = bool(token) and not local and httpx.URL(base).scheme == "http"

    def __enter__(self) -> PlugindClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            reply = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            why = str(exc)
            if self._token:  # an error about the request may quote its headers
                why = why.replace(self._token, "[REDACTED]")
            raise ApiError(f"cannot reach plugind at {self.where}: {why}", status=0) from None
        try:
            body = reply.json()
        except ValueError:
            body = None
        if reply.status_code >= 400:
            message = body.get("message") if isinstance(body, dict) else None
            label = body.get("error") if isinstance(body, dict) else None
            raise ApiError(
                f"{reply.status_code}: {message or reply.reason_phrase}",
                status=reply.status_code,
                error=label,
            )
        return body

    def health(self) -> dict[str, Any]:
        """`GET /health`. Raises ApiError."""
        result: dict[str, Any] = self._request("GET", "/health")
        return result

    def ready(self) -> bool:
        """True when `GET /ready` answers 200; False on 503. Raises ApiError otherwise."""
        try:
            self._request("GET", "/ready")
        except ApiError as exc:
            if exc.status == 503:
                return False
            raise
        return True

    def plugins(self) -> list[dict[str, Any]]:
        """`GET /api/plugins`. Raises ApiError."""
        result: list[dict[str, Any]] = self._request("GET", "/api/plugins")
        return result

    def plugin(self, name: str) -> dict[str, Any]:
        """`GET /api/plugins/{name}`. Raises ApiError (404 unknown, 422 bad name)."""
        result: dict[str, Any] = self._request("GET", f"/api/plugins/{httpx.URL(name)}")
        return result

    def load(self, name: str) -> dict[str, Any]:
        """`POST /api/plugins/load`. Raises ApiError (404, 403, 409, 422, 500)."""
        result: dict[str, Any] = self._request("POST", "/api/plugins/load", json={"plugin_name": name})
        return result

    def unload(self, name: str) -> dict[str, Any]:
        """`POST /api/plugins/unload`. Raises ApiError (409 not loaded, 422)."""
        result: dict[str, Any] = self._request(
            "POST", "/api/plugins/unload", json={"plugin_name": name}
        )
        return result

    def upgrade(self, name: str, version: str | None = None) -> dict[str, Any]:
        """`POST /api/plugins/upgrade`: swap `name` to `version` (default the highest admitted
        version above the running one) without dropping a call. Raises ApiError (404 no such
        version, 403 not admitted, 409 not loaded / up to date / busy, 500 the new version failed)."""
        body: dict[str, Any] = {"plugin_name": name}
        if version is not None:
            body["version"] = version
        upgraded: dict[str, Any] = self._request("POST", "/api/plugins/upgrade", json=body)
        return upgraded

    def unmount_behavior(
        self, name: str, *, auto_unmount: bool | None = None, log_violations: bool | None = None
    ) -> dict[str, Any]:
        """The monitor's reaction to `name`'s violations; sets what is given first (`PUT`, after a
        `GET` for what is not). Raises ApiError (404 unknown, 422 bad name)."""
        path = f"/api/plugins/{httpx.URL(name)}/unmount-behavior"
        current: dict[str, Any] = self._request("GET", path)
        if auto_unmount is None and log_violations is None:
            return current
        body = {
            "auto_unmount": current["auto_unmount"] if auto_unmount is None else auto_unmount,
            "log_violations": current["log_violations"] if log_violations is None else log_violations,
        }
        result: dict[str, Any] = self._request("PUT", path, json=body)
        return result

    def check(self, name: str) -> dict[str, Any]:
        """`POST /api/plugins/{name}/check`: `{plugin, violations, metrics}` of a sample taken now.
        Raises ApiError (404 unknown, 409 not loaded, 422 bad name)."""
        result: dict[str, Any] = self._request("POST", f"/api/plugins/{httpx.URL(name)}/check")
        return result

    def rescan(self) -> dict[str, Any]:
        """`POST /api/plugins/rescan`. Raises ApiError."""
        result: dict[str, Any] = self._request("POST", "/api/plugins/rescan")
        return result

    def call(
        self, hook: str, data: Any = None, *, policy: str = "chain", timeout_s: float | None = None
    ) -> dict[str, Any]:
        """`POST /api/hooks/{hook}/execute`; the reply lists each plugin's outcome. Raises ApiError."""
        body: dict[str, Any] = {"data": data, "policy": policy}
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        result: dict[str, Any] = self._request("POST", f"/api/hooks/{hook}/execute", json=body)
        return result

    def get_context(self, key: str) -> Any:
        """The value of a host context key. Raises ApiError (404 when absent)."""
        return self._request("GET", f"/api/context/{key}")["value"]

    def set_context(self, key: str, value: Any) -> None:
        """Set a host context key. Raises ApiError."""
        self._request("PUT", f"/api/context/{key}", json={"value": value})

    def delete_context(self, key: str) -> None:
        """Delete a host context key. Raises ApiError (404 when absent)."""
        self._request("DELETE", f"/api/context/{key}")

    def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        """The last `limit` audit entries. Raises ApiError."""
        result: list[dict[str, Any]] = self._request("GET", "/api/audit", params={"limit": limit})[
            "entries"
        ]
        return result


__all__ = ["ApiError", "PlugindClient"]
