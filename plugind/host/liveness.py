"""Whether a plugin that missed a heartbeat is unresponsive: the decision, and the kernel's word on
its process.

The runtime answers pings between calls (it is single-threaded on purpose: see
plugind/runtime/child.py), so a plugin busy in a long call is silent for as long as the call runs.
That silence is excused while a call is inside its deadline, but never for a process the kernel
reports as stopped (SIGSTOP, or a tracer holding it, state `T` or `t` in /proc/PID/stat): a stopped
process answers nothing and runs nothing, whatever calls wait on it. A thread in the runtime that
answered pings would not tell us more: a stopped process runs no thread, and a handler that holds
the GIL in a C loop blocks the thread too, while still being a process the kernel says runs. So a
busy plugin (running, sleeping on I/O, spinning) keeps its calls' deadlines, which
`[hooks] max_timeout_secs` caps; a stopped one is detected at the first missed pong. A result or
a pong heard from the plugin since the ping also excuses the silence (the supervisor passes it as
`call_in_deadline`): a call that ended just before the timeout leaves the runtime its queued pings to
answer, and that plugin is plainly running.
"""

from __future__ import annotations

# /proc/PID/stat states of a process that cannot run until someone else lets it.
STOPPED_STATES = frozenset({"T", "t"})


def process_state(pid: int) -> str | None:
    """The one-letter state of `pid` in /proc/PID/stat ("R", "S", "D", "T", ...), or None when the
    process is gone or its stat cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read(4096)
    except OSError:
        return None
    # Field 2 (comm) is in parentheses and may itself hold ") ": the state follows the last ")".
    end = data.rfind(b")")
    if end < 0 or end + 2 >= len(data):
        return None
    return chr(data[end + 2])


def unresponsive(state: str | None, call_in_deadline: bool, timeout_s: float) -> str | None:
    """Why a plugin whose pong did not come within `timeout_s` is unresponsive, or None when its
    silence is excused (a call is inside its deadline and the process is not stopped).

    `state` is its process state (`process_state`), None when unknown.
    """
    if state in STOPPED_STATES:
        how = "stopped" if state == "T" else "stopped by a tracer"
        return f"no pong within {timeout_s:g}s: its process is {how} (state {state})"
    if call_in_deadline:
        return None
    return f"no pong within {timeout_s:g}s"


__all__ = ["STOPPED_STATES", "process_state", "unresponsive"]
