"""Bearer-token authentication of `/api/*`: the token from PLUGIND_API_TOKEN or `api.token_file`.

Tokens are compared with `hmac.compare_digest` (constant time); no token ever appears in a log.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from fastapi import HTTPException, Request, status

from plugind.api import is_loopback_host
from plugind.config import Settings
from plugind.errors import ConfigError

ENV_TOKEN = "PLUGIND_API_TOKEN"  # noqa: S105 (the variable name, not a secret)
MIN_TOKEN_CHARS = 16


def load_token(settings: Settings, environ: dict[str, str] | None = None) -> str | None:
    """The API token: $PLUGIND_API_TOKEN, else the first line of `api.token_file`, else None.

    Raises ConfigError when the token is too short or the token file is unreadable or readable by
    other users.
    """
    env = os.environ if environ is None else environ
    token = env.get(ENV_TOKEN, "").strip()
    source = ENV_TOKEN
    if not token and settings.api.token_file is not None:
        path = Path(settings.api.token_file)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"api.token_file {path}: {exc.strerror}", key="api.token_file") from exc
        if st.st_mode & 0o077:
            raise ConfigError(
                f"api.token_file {path} is readable by other users: chmod 600 it",
                key="api.token_file",
            )
        token = read_token_file(path)
        source = f"api.token_file {path}"
    if not token:
        return None
    check_token(token, source)
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"the API token from {source} is shorter than {MIN_TOKEN_CHARS} characters",
            key="api.token_file",
        )
    return token


def read_token_file(path: Path) -> str:
    """The token in `path`: its first line, stripped (the rest is ignored; "" when empty). Raises
    ConfigError (never quoting the file) when it is not ASCII, OSError when it cannot be read."""
    raw = path.read_bytes()
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"token file {path}: not ASCII text (a token is printable ASCII)",
                          key="api.token_file") from None
    lines = text.splitlines()
    return lines[0].strip() if lines else ""


def check_token(token: str, source: str) -> None:
    """Raise ConfigError (naming `source`, never quoting the token) unless `token` is one word of
    printable ASCII, as an HTTP header value carries it."""
    if not all("!" <= c <= "~" for c in token):
        raise ConfigError(f"the API token from {source} must be printable ASCII without spaces",
                          key="api.token_file")


def is_loopback(listen: str) -> bool:
    """True when `listen` (HOST:PORT) only accepts local connections."""
    return is_loopback_host(listen.rpartition(":")[0].strip("[]"))


class BearerAuth:
    """A FastAPI dependency: 401 unless the request carries `Authorization: Bearer <token>`."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    def accepts(self, header: str) -> bool:
        """Whether `header` (the first Authorization header, "" if none) lets a request in: always
        when no token is set, else `Bearer <token>` compared in constant time."""
        if self._token is None:
            return True
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)

    # async, though it never awaits: FastAPI runs a plain-def dependency in its thread pool, a
    # thread hand-off per request that cost more than the whole hook call (bench/peers.py, REST).
    async def __call__(self, request: Request) -> None:
        if not self.accepts(request.headers.get("authorization", "")):
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="missing or wrong bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )


__all__ = ["ENV_TOKEN", "BearerAuth", "is_loopback", "load_token"]
