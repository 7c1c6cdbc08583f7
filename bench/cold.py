"""Benchmark: `POST /api/plugins/load` -> first REST hook answer, for one plugin, with a breakdown.

    .venv/bin/python bench/cold.py [--loads 20] [--sandbox] [--strace FILE]

Starts `plugind serve` (the integration tests' workspace: a real signed and trusted echo bundle,
real verification, extraction, state file and audit log), then times `--loads` cycles of unload,
load, first hook call on one keep-alive connection (as bench/peers.py's cold-start rows do), and
prints the p50 of the load reply and of load -> first answer. With `--strace FILE`, one more load
runs under `strace -f -tt` (the daemon, its worker threads, the fork-server and the child): the
phases are read off the syscalls in that file (strace slows each traced call: read its gaps, not
its total).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from conftest import reap, start  # noqa: E402
from kit import Workspace, plugin_source  # noqa: E402

TRACED = ("read,write,openat,fsync,fdatasync,rename,renameat2,mkdir,clone,clone3,unshare,mount,"
          "pivot_root,umount2,seccomp,execve,sendmsg,recvmsg,sendto,recvfrom,accept4,exit_group,"
          "wait4,setns,connect")


def run(loads: int, sandbox: bool, trace: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="plugind-bench-cold-") as tmp:
        ws = Workspace(Path(tmp), sandboxing=sandbox, auto_load=False)
        parent = f"/plugind-bench-cold-{os.getpid()}"
        if sandbox:
            ws.extra_config = f'[sandboxing.cgroups]\nparent = "{parent}"\n'
        ws.add(plugin_source("echo", {"echo": (0, "return data")}))
        daemon = start(ws)
        threading.Thread(target=_drain, args=(daemon,), daemon=True).start()
        try:
            reply_t, first_t = [], []
            with daemon.client() as client:
                def cycle() -> tuple[float, float]:
                    t0 = time.perf_counter()
                    r = client.post("/api/plugins/load", json={"plugin_name": "echo"})
                    t1 = time.perf_counter()
                    assert r.status_code == 200, r.text
                    r = client.post("/api/hooks/echo/execute", json={"data": {"x": 1}})
                    t2 = time.perf_counter()
                    assert r.status_code == 200 and r.json()["success"], r.text
                    pid = int(client.get("/api/plugins/echo").json()["pid"])
                    daemon.seen_pids.add(pid)
                    r = client.post("/api/plugins/unload", json={"plugin_name": "echo"})
                    assert r.status_code == 200, r.text
                    return t1 - t0, t2 - t0

                cycle()  # the first load extracts the tree; the rest reuse it, as peers.py's do
                for _ in range(loads):
                    a, b = cycle()
                    reply_t.append(a)
                    first_t.append(b)
                label = "sandboxed" if sandbox else "unsandboxed"
                print(f"{label:<11} load reply p50 {statistics.median(reply_t) * 1e3:6.2f} ms | "
                      f"load -> first answer p50 {statistics.median(first_t) * 1e3:6.2f} ms "
                      f"min {min(first_t) * 1e3:6.2f} ms ({loads} loads)")
                if trace is not None:
                    st = subprocess.Popen(["strace", "-f", "-tt", "-qq", "--seccomp-bpf", "-e",
                                           f"trace={TRACED}", "-s", "48", "-o", str(trace),
                                           "-p", str(daemon.proc.pid)] +
                                          [x for p in _children(daemon.proc.pid) for x in ("-p", str(p))])
                    time.sleep(1.0)
                    a, b = cycle()
                    time.sleep(0.3)
                    st.terminate()
                    st.wait()
                    print(f"traced load: reply {a * 1e3:.2f} ms, first answer {b * 1e3:.2f} ms -> {trace}")
            assert daemon.stop() == 0
        finally:
            reap(daemon)
            if sandbox:
                from plugind.sandbox.cgroups import remove_tree

                remove_tree(parent)


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def _drain(daemon) -> None:  # type: ignore[no-untyped-def]
    daemon.notify.settimeout(None)
    with contextlib.suppress(OSError):
        while daemon.notify.recv(4096):
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--sandbox", action="store_true")
    parser.add_argument("--strace", type=Path, default=None)
    args = parser.parse_args()
    if args.strace is not None and shutil.which("strace") is None:
        parser.error("--strace needs strace installed")
    run(args.loads, args.sandbox, args.strace)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
