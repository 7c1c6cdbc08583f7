"""`plugind ctl call --data` refuses what the daemon would, in one clear line, before connecting."""

from __future__ import annotations

import subprocess
import sys

import pytest

from plugind.wire.limits import MAX_DEPTH


@pytest.mark.parametrize(("data", "says"), [
    ('{"s": "\\ud800"}', "--data holds a string with a lone surrogate"),
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), f"--data is nested deeper than {MAX_DEPTH} levels"),
], ids=["lone-surrogate", "too-deep"])
def test_ctl_call_refuses_what_the_daemon_would(data: str, says: str) -> None:
    # Port 1 on loopback: nothing listens there, so reaching the network would say so instead.
    out = subprocess.run([sys.executable, "-m", "plugind", "ctl", "--url", "http://127.0.0.1:1",
                          "--token-file", "/dev/null", "call", "x", "--data", data],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"plugind: error: {says}"), out.stderr
