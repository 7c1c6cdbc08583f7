"""Token loading, the loopback rule and the exposure check (pure functions, real files)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from plugind.api.auth import is_loopback, load_token
from plugind.config import Settings
from plugind.daemon import check_exposure
from plugind.errors import ConfigError

GOOD = "a-token-of-enough-length"


def settings(token_file: Path | None, listen: str = "127.0.0.1:7070") -> Settings:
    return Settings.model_validate({"api": {"token_file": token_file, "listen": listen}})


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_env_wins_over_file(tmp_path: Path) -> None:
    f = write(tmp_path / "t", "file-token-file-token\n")
    assert load_token(settings(f), {"PLUGIND_API_TOKEN": GOOD}) == GOOD
    assert load_token(settings(f), {}) == "file-token-file-token"


def test_missing_file_or_no_file_means_no_token(tmp_path: Path) -> None:
    assert load_token(settings(tmp_path / "absent"), {}) is None
    assert load_token(settings(None), {}) is None
    assert load_token(settings(write(tmp_path / "empty", "\n")), {}) is None


def test_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    f = write(tmp_path / "t", GOOD, mode=0o644)
    message = f"api.token_file {f} is readable by other users: chmod 600 it"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_token(settings(f), {})


@pytest.mark.parametrize("source", ["env", "file"])
def test_short_token_is_refused(tmp_path: Path, source: str) -> None:
    f = write(tmp_path / "t", "short")
    env = {"PLUGIND_API_TOKEN": "short"} if source == "env" else {}
    where = "PLUGIND_API_TOKEN" if source == "env" else f"api.token_file {f}"
    message = f"the API token from {where} is shorter than 16 characters"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_token(settings(f), env)


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:7070", True),
        ("127.8.9.10:1", True),
        ("localhost:7070", True),
        ("[::1]:7070", True),
        ("0.0.0.0:7070", False),
        ("[::]:7070", False),
        ("10.0.0.5:7070", False),
        ("example.com:80", False),
    ],
)
def test_is_loopback(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def test_exposure_needs_a_token() -> None:
    check_exposure(settings(None, "0.0.0.0:7070"), GOOD)
    check_exposure(settings(None), GOOD)
    # Loopback is no authentication: without a token the daemon does not start at all.
    with pytest.raises(ConfigError, match="no API token is set: set PLUGIND_API_TOKEN") as info:
        check_exposure(settings(None), None)
    assert info.value.key == "api.token_file"
    message = "api.listen = 0.0.0.0:7070 is not a loopback address"
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        check_exposure(settings(None, "0.0.0.0:7070"), None)
    assert info.value.key == "api.listen"


def test_the_token_is_the_first_line_of_its_file(tmp_path: Path) -> None:
    # A second line made the whole file the token: every `Bearer <first line>` got 401.
    f = write(tmp_path / "t", GOOD + "\nsecond line\n")
    assert load_token(settings(f), {}) == GOOD


@pytest.mark.parametrize(
    ("source", "value"),
    [("env", "tok\u00e9n-of-enough-length"), ("env", "token with spaces inside"),
     ("file", "tok\u00e9n-of-enough-length")],
)
def test_a_token_that_is_not_printable_ascii_is_refused_without_being_quoted(
    tmp_path: Path, source: str, value: str
) -> None:
    # (A non-ASCII token passed the daemon, then crashed `ctl` with a traceback; a non-UTF-8 file
    # gave `serve` one.) The message names where the token came from, never the token.
    f = tmp_path / "t"
    f.write_bytes(value.encode("latin-1"))
    os.chmod(f, 0o600)
    env = {"PLUGIND_API_TOKEN": value} if source == "env" else {}
    with pytest.raises(ConfigError) as info:
        load_token(settings(f), env)
    assert ("PLUGIND_API_TOKEN" if source == "env" else str(f)) in str(info.value)
    assert value not in str(info.value) and value.encode("latin-1").decode("latin-1") not in str(info.value)
