"""Logging set-up: JSON lines in production, readable text on a terminal, secrets redacted last.

`setup_logging(settings)` installs one handler on the root logger (stderr by default):
- format: `[logging] format = "json" | "text" | "auto"`; auto is text on a terminal, else JSON;
- level: `PLUGIND_LOG` (debug, info, warning, error) wins over `[logging] level`; it may also set
  levels per logger: `PLUGIND_LOG=info,plugind.host.supervisor=debug`;
- a JSON line holds `timestamp` (UTC, RFC 3339), `level`, `logger`, `message`, `plugin` when the
  call passed `extra={"plugin": name}`, every other extra, and `exc` for a traceback;
- `RedactSecrets`, on the handler so it sees records of every logger, replaces the value of
  `PLUGIN_TRUST_KEY`, the API token (`PLUGIND_API_TOKEN` or `[api] token_file`) and any run of
  64 hex digits that follows the words key/token/secret with `[REDACTED]`, in the message, the
  extras and the traceback. It is the last line of defence, not a licence to log secrets.
  `redact()` applies the same redaction to what leaves by other ways (the audit trail, API errors).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
from datetime import UTC, datetime
from typing import IO, Any

from plugind.config import Settings
from plugind.errors import ConfigError

REDACTED = "[REDACTED]"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_MIN_SECRET_LEN = 8  # shorter "secrets" would blank out ordinary words
_HEX_AFTER_WORD = re.compile(r"(?i)((?:key|token|secret)[^\n]{0,40}?)(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
# Attributes every LogRecord has; anything else on a record came from `extra=`.
# (uvicorn adds `color_message`, an ANSI-coloured copy of the message: noise in both formats.)
_STANDARD = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


class RedactSecrets(logging.Filter):
    """Rewrites each record so that no known secret, nor a 64-hex key/token value, survives."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: list[str] = []
        for secret in secrets or []:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Redact `secret` from now on (ignored when empty or too short to be a real secret)."""
        if not secret or len(secret.strip()) < _MIN_SECRET_LEN:
            return
        with self._lock:
            if secret.strip() not in self._secrets:
                # Longest first, so a secret containing another is replaced whole.
                self._secrets = sorted({*self._secrets, secret.strip()}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """`text` with every secret replaced."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _HEX_AFTER_WORD.sub(lambda m: m.group(1) + REDACTED, text)

    def redact_value(self, value: Any) -> Any:
        """`value` (plain data: str, bytes, dict, list, ...) with every string in it redacted."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, bytes):
            return self.redact(value.decode("utf-8", "replace"))
        if isinstance(value, dict):
            return {k: self.redact_value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set)):
            return [self.redact_value(v) for v in value]
        if value is None or isinstance(value, (bool, int, float)):
            return value
        return self.redact(str(value))

    _value = redact_value

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken %-format must not lose the record
            message = f"{record.msg!r} % {record.args!r}"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
            record.exc_info = None  # the formatter must use the redacted text, not re-render it
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD:
                setattr(record, key, self._value(value))
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    when = datetime.fromtimestamp(record.created, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, plugin, extras, exc."""

    def __init__(self, redactor: RedactSecrets | None = None) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        extras = _extras(record)
        if "plugin" in extras:
            out["plugin"] = extras.pop("plugin")
        for key, value in extras.items():
            out.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        line = json.dumps(out, default=str, ensure_ascii=False)
        return self.redactor.redact(line) if self.redactor else line


# C0 and C1 controls and DEL, as escapes: a message (a plugin's log line, an error a plugin wrote)
# holding a newline would forge a line of its own, attributed to anyone, and an ANSI escape rewrite
# the operator's terminal. (The JSON format escapes them already.)
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))} | {
    0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}


def escape_controls(text: str) -> str:
    """`text` with its control characters written as escapes (`\\n`, `\\x1b`): one line, inert."""
    return text.translate(_ESCAPES) if _CONTROLS.search(text) else text


class TextFormatter(logging.Formatter):
    """`15:33:32.123 WARNING plugind.monitor [hello] message key=value` for people at a terminal;
    control characters in the logger, the plugin, the message and the values escaped (one record,
    one line, before a traceback)."""

    def __init__(self, redactor: RedactSecrets | None = None) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
        extras = _extras(record)
        plugin = extras.pop("plugin", None)
        parts = [when, f"{record.levelname:<7}", record.name]
        if plugin is not None:
            parts.append(f"[{plugin}]")
        parts.append(record.getMessage())
        parts.extend(f"{k}={v}" for k, v in extras.items())
        line = escape_controls(" ".join(parts))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        return self.redactor.redact(line) if self.redactor else line


_HANDLER_NAME = "plugind"
# The redactor of the installed handler, for what leaves the process by other ways than the log
# (the audit trail, API error messages): one set of secrets for all of them.
_current: RedactSecrets | None = None


def current_redactor() -> RedactSecrets:
    """The redactor `setup_logging` installed; before that, one that knows the secrets in the
    environment (PLUGIN_TRUST_KEY, PLUGIND_API_TOKEN) and the 64-hex pattern."""
    global _current
    if _current is None:
        env = [os.environ.get("PLUGIN_TRUST_KEY", ""), os.environ.get("PLUGIND_API_TOKEN", "")]
        _current = RedactSecrets(env)
    return _current


def redact(text: str) -> str:
    """`text` as the daemon log would write it: every known secret and key/token/secret 64-hex value
    replaced by [REDACTED]."""
    return current_redactor().redact(text)


def known_secrets(settings: Settings) -> list[str]:
    """The secret values the redactor must know: trust key and API token (env or token file)."""
    found = [os.environ.get("PLUGIN_TRUST_KEY", ""), os.environ.get("PLUGIND_API_TOKEN", "")]
    token_file = settings.api.token_file
    if token_file is not None:
        # Not created yet: the daemon adds the token to the redactor when it makes one.
        with contextlib.suppress(OSError, UnicodeDecodeError):
            found.append(token_file.read_text(encoding="utf-8").strip())
    return [s for s in found if s]



_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_module_levels: set[str] = set()  # loggers the last setup_logging gave a level of their own


def parse_log_spec(text: str) -> tuple[int | None, dict[str, int]]:
    """`PLUGIND_LOG`: `info`, or `info,plugind.host.supervisor=debug,uvicorn=warning`.

    Returns (the default level or None, {logger: level}). Raises ConfigError naming PLUGIND_LOG.
    """
    default: int | None = None
    modules: dict[str, int] = {}
    names = ", ".join(LEVELS)
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        module, sep, level = item.rpartition("=")
        level = level.strip().lower()
        if level not in LEVELS:
            raise ConfigError(
                f"PLUGIND_LOG={level[:40]!r} is not a log level; use one of {names}, as in "
                "PLUGIND_LOG=info,plugind.host.supervisor=debug",
                key="PLUGIND_LOG",
            )
        if not sep:
            if default is not None:
                raise ConfigError("PLUGIND_LOG: more than one default level", key="PLUGIND_LOG")
            default = LEVELS[level]
            continue
        module = module.strip()
        if not _MODULE_RE.match(module):
            raise ConfigError(
                f"PLUGIND_LOG: {module[:80]!r} is not a logger name like plugind.host.supervisor",
                key="PLUGIND_LOG",
            )
        modules[module] = LEVELS[level]
    return default, modules


def resolve_level(settings: Settings) -> int:
    """The default level of `PLUGIND_LOG` if it gives one, else `[logging] level`.

    Raises ConfigError naming PLUGIND_LOG when it holds something else.
    """
    default, _ = parse_log_spec(os.environ.get("PLUGIND_LOG", ""))
    return default if default is not None else LEVELS[settings.logging.level]


def setup_logging(settings: Settings, stream: IO[str] | None = None) -> RedactSecrets:
    """Install plugind's handler on the root logger (replacing an earlier one); returns its redactor.

    The daemon calls `redactor.add(token)` for a secret it learns later (a generated API token).
    Raises ConfigError for an unknown PLUGIND_LOG level.
    """
    level = resolve_level(settings)
    _, modules = parse_log_spec(os.environ.get("PLUGIND_LOG", ""))
    stream = stream if stream is not None else sys.stderr
    fmt = settings.logging.format
    if fmt == "auto":
        fmt = "text" if hasattr(stream, "isatty") and stream.isatty() else "json"
    global _current
    redactor = _current = RedactSecrets(known_secrets(settings))
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(redactor)
    handler.setFormatter(JsonFormatter(redactor) if fmt == "json" else TextFormatter(redactor))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("plugind").setLevel(level)
    for name in _module_levels - set(modules):
        logging.getLogger(name).setLevel(logging.NOTSET)  # set by an earlier call: inherit again
    for name, module_level in modules.items():
        logging.getLogger(name).setLevel(module_level)
    _module_levels.clear()
    _module_levels.update(modules)
    return redactor


__all__ = [
    "REDACTED",
    "JsonFormatter",
    "RedactSecrets",
    "TextFormatter",
    "current_redactor",
    "known_secrets",
    "parse_log_spec",
    "redact",
    "resolve_level",
    "setup_logging",
]
