"""Run by tests/sandbox/test_capabilities.py in a process whose bounding set lacks a capability:
spawn one sandboxed child with the default settings (JSON overrides in argv[1]) and print what
happened as JSON. argv[2] is the action: "spawn" (the steps, or the failed step), "fds" (read the
child's /proc/PID/fd as the monitor does), "kmsg" (open /dev/kmsg as the seccomp audit does) or
"check" (the daemon's start-up check of its capabilities).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

from plugind.config import Settings
from plugind.errors import SandboxError
from plugind.sandbox import cgroups
from plugind.sandbox.contain import cleanup, spawn_contained
from plugind.sandbox.plan import build_plan


def settings(overrides: dict[str, Any]) -> Settings:
    s = Settings()
    s.sandboxing.cgroups.parent = f"plugind-captest-{os.getpid()}"  # ours alone: removed at the end
    for key, value in overrides.items():
        obj: Any = s.sandboxing
        *path, last = key.split(".")
        for part in path:
            obj = getattr(obj, part)
        setattr(obj, last, value)
    return s


def main() -> dict[str, Any]:
    overrides, action = json.loads(sys.argv[1]), sys.argv[2]
    if action == "kmsg":
        try:
            os.close(os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK))
        except OSError as exc:
            return {"error": exc.strerror}
        return {"ok": True}
    s = settings(overrides)
    if action == "check":
        from plugind.daemon import check_capabilities

        return {"problems": check_capabilities(s)}
    tree = tempfile.mkdtemp(prefix="captest-", dir="/var/tmp")
    plan = build_plan(s, "probe", tree)
    up_r, up_w = os.pipe()
    down_r, down_w = os.pipe()

    def child(hooks: Any) -> Any:
        hooks.before_plugin_import()
        os.write(up_w, b"k")
        os.read(down_r, 1)  # until the parent is done looking at us
        os._exit(0)

    try:
        try:
            spawned = spawn_contained(plan, child, [up_w, down_r])
        except SandboxError as exc:
            return {"step": exc.step, "missing_caps": exc.missing_caps, "message": str(exc)}
        try:
            assert os.read(up_r, 1) == b"k"
            out: dict[str, Any] = {"steps": spawned.steps}
            if action == "fds":
                try:
                    out["fd0"] = os.readlink(f"/proc/{spawned.pid}/fd/0")
                except OSError as exc:
                    out["error"] = exc.strerror
            return out
        finally:
            os.write(down_w, b"x")
            os.waitpid(spawned.pid, 0)
    finally:
        cleanup(plan)
        cgroups.remove_tree(s.sandboxing.cgroups.parent)
        os.rmdir(tree)


if __name__ == "__main__":
    print(json.dumps(main()))
