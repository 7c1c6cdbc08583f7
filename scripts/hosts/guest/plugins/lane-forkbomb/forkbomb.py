"""Host lane plugin: hook `lane.forkbomb` forks sleeping children until fork fails, then kills them."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from typing import Any

from plugind.sdk import Plugin

plugin = Plugin()


@plugin.hook("lane.forkbomb")
def forkbomb(data: Any, ctx: Any) -> Any:
    children: list[int] = []
    failure = None
    for _ in range(int(data.get("max", 10000))):
        try:
            pid = os.fork()
        except OSError as exc:
            failure = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            break
        if pid == 0:  # the child waits to be killed, holding its pid
            signal.pause()
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    for pid in children:
        with contextlib.suppress(ChildProcessError):  # the runtime (PID 1) may have reaped it
            os.waitpid(pid, 0)
    return {"forked": len(children), "errno": failure}
