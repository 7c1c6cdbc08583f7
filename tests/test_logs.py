"""plugind.logs: JSON and text output, level selection, secret redaction."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import secrets
from collections.abc import Iterator

import pytest

from plugind.config import Settings
from plugind.errors import ConfigError
from plugind.logs import REDACTED, RedactSecrets, parse_log_spec, resolve_level, setup_logging

TRUST_KEY = secrets.token_hex(32)
API_TOKEN = secrets.token_urlsafe(32)


def make_settings(**logging_section: str) -> Settings:
    return Settings.model_validate({"logging": logging_section, "api": {"token_file": None}})


@pytest.fixture(autouse=True)
def clean_root(monkeypatch) -> Iterator[None]:
    monkeypatch.delenv("PLUGIND_LOG", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.getLogger("plugind").setLevel(logging.NOTSET)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_plugin_and_extras():
    out = io.StringIO()
    setup_logging(make_settings(format="json"), stream=out)
    logging.getLogger("plugind.host.supervisor").warning(
        "plugin %s crashed", "hello", extra={"plugin": "hello", "exit_code": 3, "hooks": ["a", "b"]}
    )
    (entry,) = lines(out)
    assert entry["level"] == "warning"
    assert entry["logger"] == "plugind.host.supervisor"
    assert entry["message"] == "plugin hello crashed"
    assert entry["plugin"] == "hello"
    assert entry["exit_code"] == 3 and entry["hooks"] == ["a", "b"]
    assert entry["timestamp"].endswith("Z") and "T" in entry["timestamp"]


def test_auto_is_json_when_not_a_terminal_and_text_on_a_terminal():
    out = io.StringIO()
    setup_logging(make_settings(format="auto"), stream=out)
    logging.getLogger("plugind.x").info("hi", extra={"plugin": "p"})
    assert json.loads(out.getvalue())["message"] == "hi"

    leader, follower = pty.openpty()
    try:
        with open(follower, "w", closefd=False) as tty:
            setup_logging(make_settings(format="auto"), stream=tty)
            logging.getLogger("plugind.x").info("hello there", extra={"plugin": "p", "n": 2})
            tty.flush()
        text = os.read(leader, 4096).decode()
    finally:
        os.close(leader)
        os.close(follower)
    assert "INFO    plugind.x [p] hello there n=2" in text
    assert not text.lstrip().startswith("{")


def test_uvicorn_color_message_is_not_repeated():
    out = io.StringIO()
    setup_logging(make_settings(format="json"), stream=out)
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 7,
                                            extra={"color_message": "Started \x1b[36m%d\x1b[0m"})
    (entry,) = lines(out)
    assert entry["message"] == "Started server process [7]" and "color_message" not in entry


def test_exception_is_included():
    out = io.StringIO()
    setup_logging(make_settings(format="json"), stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("plugind.x").exception("failed")
    (entry,) = lines(out)
    assert "RuntimeError: boom" in entry["exc"]


@pytest.mark.parametrize(
    ("env", "config", "expected"),
    [(None, "info", logging.INFO), ("debug", "info", logging.DEBUG), ("WARNING", "debug", logging.WARNING),
     (None, "error", logging.ERROR)],
    ids=["config", "env-wins", "env-case", "config-error"],
)
def test_level_from_env_or_config(monkeypatch, env, config, expected):
    if env is not None:
        monkeypatch.setenv("PLUGIND_LOG", env)
    assert resolve_level(make_settings(level=config)) == expected


def test_level_filters_records(monkeypatch):
    monkeypatch.setenv("PLUGIND_LOG", "warning")
    out = io.StringIO()
    setup_logging(make_settings(format="json", level="debug"), stream=out)
    logging.getLogger("plugind.x").info("quiet")
    logging.getLogger("plugind.x").warning("loud")
    assert [e["message"] for e in lines(out)] == ["loud"]


def test_unknown_env_level(monkeypatch):
    monkeypatch.setenv("PLUGIND_LOG", "chatty")
    message = "PLUGIND_LOG='chatty' is not a log level; use one of debug, info"
    with pytest.raises(ConfigError, match=message) as info:
        setup_logging(make_settings())
    assert info.value.key == "PLUGIND_LOG"


def test_setup_twice_keeps_one_handler():
    out1, out2 = io.StringIO(), io.StringIO()
    setup_logging(make_settings(format="json"), stream=out1)
    setup_logging(make_settings(format="json"), stream=out2)
    logging.getLogger("plugind.x").warning("once")
    assert out1.getvalue() == ""
    assert len(lines(out2)) == 1


def test_secrets_are_redacted_everywhere(monkeypatch, tmp_path):
    token_file = tmp_path / "token"
    file_token = secrets.token_urlsafe(24)
    token_file.write_text(file_token + "\n")
    monkeypatch.setenv("PLUGIN_TRUST_KEY", TRUST_KEY)
    monkeypatch.setenv("PLUGIND_API_TOKEN", API_TOKEN)
    settings = Settings.model_validate(
        {"logging": {"format": "json"}, "api": {"token_file": str(token_file)}}
    )
    out = io.StringIO()
    redactor = setup_logging(settings, stream=out)
    late = secrets.token_hex(20)
    redactor.add(late)
    other_hex = secrets.token_hex(32)
    log = logging.getLogger("plugind.leaky")
    log.warning("key is %s", TRUST_KEY)
    log.warning("Authorization: Bearer " + API_TOKEN, extra={"plugin": "p", "headers": {"auth": API_TOKEN}})
    log.warning("file token %s and generated %s", file_token, late)
    log.warning("some token=%s", other_hex)  # an unknown 64-hex value after "token"
    try:
        raise ValueError(f"bad key {TRUST_KEY}")
    except ValueError:
        log.exception("failed with secret in traceback")
    text = out.getvalue()
    for secret in (TRUST_KEY, API_TOKEN, file_token, late, other_hex):
        assert secret not in text
    entries = lines(out)
    assert entries[0]["message"] == f"key is {REDACTED}"
    assert entries[1]["headers"] == {"auth": REDACTED}
    assert entries[3]["message"] == f"some token={REDACTED}"
    assert REDACTED in entries[4]["exc"]


def test_hashes_and_short_words_are_left_alone():
    r = RedactSecrets(["abc"])  # too short to be a secret: ignored
    digest = secrets.token_hex(64)  # a SHA3-512 digest is 128 hex digits: not a key
    assert r.redact(f"abc key digest {digest}") == f"abc key digest {digest}"
    bare = secrets.token_hex(32)
    assert r.redact(f"hash {bare}") == f"hash {bare}"  # 64 hex without key/token nearby
    assert r.redact(f"TRUST_KEY={bare}") == f"TRUST_KEY={REDACTED}"


@pytest.mark.parametrize(
    ("spec", "default", "modules"),
    [
        ("info", logging.INFO, {}),
        ("info,plugind.host.supervisor=debug", logging.INFO, {"plugind.host.supervisor": logging.DEBUG}),
        (" plugind.api = WARNING , error ", logging.ERROR, {"plugind.api": logging.WARNING}),
        ("uvicorn=error", None, {"uvicorn": logging.ERROR}),
        ("", None, {}),
    ],
    ids=["default-only", "default-and-module", "spaces-and-case", "module-only", "empty"],
)
def test_log_spec_table(spec, default, modules):
    assert parse_log_spec(spec) == (default, modules)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("info,plugind.host=chatty", "PLUGIND_LOG='chatty' is not a log level"),
        ("info,debug", "more than one default level"),
        ("info,../x=debug", "is not a logger name like plugind.host.supervisor"),
        ("info,=debug", "is not a logger name"),
    ],
    ids=["bad-level", "two-defaults", "path-as-module", "empty-module"],
)
def test_bad_log_specs_name_the_variable(monkeypatch, spec, message):
    monkeypatch.setenv("PLUGIND_LOG", spec)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        setup_logging(make_settings())
    assert info.value.key == "PLUGIND_LOG"


def test_per_module_levels(monkeypatch):
    monkeypatch.setenv("PLUGIND_LOG", "info,plugind.host.supervisor=debug,plugind.api=error")
    out = io.StringIO()
    setup_logging(make_settings(format="json", level="warning"), stream=out)
    logging.getLogger("plugind.host.supervisor").debug("supervisor detail")
    logging.getLogger("plugind.host.supervisor.sub").debug("child inherits")
    logging.getLogger("plugind.host.registry").debug("registry detail")
    logging.getLogger("plugind.host.registry").info("registry info")
    logging.getLogger("plugind.api").warning("api warning")
    logging.getLogger("plugind.api").error("api error")
    assert [e["message"] for e in lines(out)] == [
        "supervisor detail", "child inherits", "registry info", "api error"
    ]
    # A later set-up without them gives those loggers back to their parents' level.
    monkeypatch.setenv("PLUGIND_LOG", "info")
    out2 = io.StringIO()
    setup_logging(make_settings(format="json"), stream=out2)
    logging.getLogger("plugind.host.supervisor").debug("quiet again")
    logging.getLogger("plugind.api").warning("heard again")
    assert [e["message"] for e in lines(out2)] == ["heard again"]


def test_text_lines_hold_no_control_character_a_plugin_sent():
    # A plugin's log line (or error message) with a newline would forge a line of its own, and an
    # ANSI escape rewrite the operator's terminal: one record is one line, escapes written out.
    out = io.StringIO()
    setup_logging(make_settings(format="text"), stream=out)
    forged = "ok\n12:00:00.000 WARNING plugind.host.supervisor [victim] violated the protocol\x1b[2J\x9b"
    logging.getLogger("plugind.plugin.evil").info(forged, extra={"plugin": "evil\r", "said": "a\tb"})
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", text)
    assert "ok\\n12:00:00.000 WARNING" in text and "\\x1b[2J\\x9b" in text
    assert "[evil\\r]" in text and "said=a\\tb" in text
