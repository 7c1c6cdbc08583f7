"""The heartbeat's decision (plugind/host/liveness.py): a table, and the state of real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from plugind.host.liveness import process_state, unresponsive


@pytest.mark.parametrize(
    ("state", "busy", "verdict"),
    [
        pytest.param("T", True, "no pong within 2s: its process is stopped (state T)", id="stopped-mid-call"),
        pytest.param("T", False, "no pong within 2s: its process is stopped (state T)", id="stopped-idle"),
        pytest.param("t", True, "no pong within 2s: its process is stopped by a tracer (state t)",
                     id="traced"),
        pytest.param("R", True, None, id="spinning-in-a-call"),
        pytest.param("S", True, None, id="sleeping-in-a-call"),
        pytest.param("D", True, None, id="disk-wait-in-a-call"),
        pytest.param(None, True, None, id="unknown-state-in-a-call"),
        pytest.param("R", False, "no pong within 2s", id="spinning-without-a-call"),
        pytest.param("S", False, "no pong within 2s", id="sleeping-without-a-call"),
        pytest.param(None, False, "no pong within 2s", id="unknown-state-without-a-call"),
    ],
)
def test_a_missed_pong_is_excused_only_by_a_call_of_a_process_not_stopped(
    state: str | None, busy: bool, verdict: str | None
) -> None:
    assert unresponsive(state, busy, 2.0) == verdict


def _wait_state(pid: int, wanted: str) -> str | None:
    deadline = time.monotonic() + 10  # an upper bound against hanging, nothing timed
    while True:
        state = process_state(pid)
        if state == wanted or time.monotonic() > deadline:
            return state
        time.sleep(0.01)


def test_the_state_of_a_real_process_and_of_one_gone() -> None:
    # A name with ") " in it, as a plugin may set (prctl PR_SET_NAME): the state is still found.
    code = "import ctypes, sys; ctypes.CDLL(None).prctl(15, b'a) S (b', 0, 0, 0); sys.stdin.read()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    try:
        assert _wait_state(proc.pid, "S") == "S"
        os.kill(proc.pid, signal.SIGSTOP)
        assert _wait_state(proc.pid, "T") == "T"
        os.kill(proc.pid, signal.SIGCONT)
        assert _wait_state(proc.pid, "S") == "S"
    finally:
        proc.kill()
        proc.wait()
    assert process_state(proc.pid) is None
