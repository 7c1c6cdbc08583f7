"""Test plugins by scenario name (as go-plugin's tests do): well-behaved ones and misbehaving ones."""

from __future__ import annotations

from kit import plugin_source

# Appends the plugin's name to data["seen"].
ECHO = "data.setdefault('seen', []).append({name!r})\nreturn data"

# Writes raw bytes on the wire socket (the only socket the child holds), bypassing the runtime.
_RAW_WRITE = """
import stat as _stat
def _wire_write(payload):
    for fd in os.listdir('/proc/self/fd'):
        try:
            if _stat.S_ISSOCK(os.fstat(int(fd)).st_mode):
                os.write(int(fd), payload)
        except OSError:
            pass
"""


def echo(name: str, priority: int = 0, hook: str = "on_request") -> dict[str, str]:
    return plugin_source(name, {hook: (priority, ECHO.format(name=name))})


def sleeper(name: str, seconds: float) -> dict[str, str]:
    body = f"time.sleep({seconds})\n" + ECHO.format(name=name)
    return plugin_source(name, {"on_request": (0, body)})


SCENARIOS: dict[str, dict[str, str]] = {
    "raiser": plugin_source("raiser", {"on_request": (0, "raise KeyError('boom')")}),
    "hanger": plugin_source("hanger", {"on_request": (0, "time.sleep(60)\nreturn data")}),
    "exiter": plugin_source("exiter", {"on_request": (0, "os._exit(7)")}),
    "victim": echo("victim"),
    "garbage": plugin_source(
        "garbage",
        {"on_request": (0, "_wire_write(b'\\x00\\x00\\x00\\x07garbage')\ntime.sleep(5)\nreturn data")},
        header=_RAW_WRITE,
    ),
    "huge": plugin_source(
        "huge",
        {"on_request": (0, "_wire_write((2**31).to_bytes(4, 'big') + b'x')\ntime.sleep(5)\nreturn data")},
        header=_RAW_WRITE,
    ),
    "mute": plugin_source("mute", {"on_request": (0, "return data")}, header="time.sleep(3600)"),
}
