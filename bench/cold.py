"""Benchmark: `POST /api/plugins/load` -> first REST hook answer, for one plugin, with a breakdown.

    .venv/bin/python bench/cold.py [--loads 20] [--sandbox] [--strace FILE] [--against CHECKOUT] [--gap S]
                                   [--client lean|httpx]

Starts `plugind serve` (the integration tests' workspace: a real signed and trusted echo bundle,
real verification, extraction, state file and audit log), then times `--loads` cycles of unload,
load, first hook call on one keep-alive connection (as bench/peers.py's cold-start rows do), and
prints the p50 of the load reply and of load -> first answer. With `--strace FILE`, one more load
runs under `strace -f -tt` (the daemon, its worker threads, the fork-server and the child): the
phases are read off the syscalls in that file (strace slows each traced call: read its gaps, not
its total). With `--against CHECKOUT` (another checkout of plugind, e.g. `git archive BASE | tar -x
-C DIR`), a second daemon runs that code and the loads alternate between the two, one by one: an A/B
that a shared machine's noise hits alike. `--gap S` waits S seconds before each load (an operator's
loads come one at a time, not back to back). `--client` picks the measuring client: `lean`
(default; `http.client` on one keep-alive connection, bench/lean.py, as bench/peers.py's REST rows)
or `httpx` (the tests' client, whose own Python costs ~0.5-0.8 ms per request on the machine's CPUs
and ~1.5-2 ms of every figure here).
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
from lean import LeanClient  # noqa: E402

from plugind.fsio import SETTLE_S  # noqa: E402

TRACED = ("read,write,openat,fsync,fdatasync,rename,renameat2,mkdir,clone,clone3,unshare,mount,"
          "pivot_root,umount2,seccomp,execve,sendmsg,recvmsg,sendto,recvfrom,accept4,exit_group,"
          "wait4,setns,connect")


class Rig:
    """One daemon (the code at `checkout`, this one by default) with an echo plugin."""

    def __init__(self, tmp: Path, sandbox: bool, checkout: Path | None = None,
                 client: str = "lean") -> None:
        self.ws = Workspace(tmp, sandboxing=sandbox, auto_load=False)
        self.parent = f"/plugind-bench-cold-{os.getpid()}-{tmp.name}"
        self.sandbox = sandbox
        if sandbox:
            self.ws.extra_config = f'[sandboxing.cgroups]\nparent = "{self.parent}"\n'
        self.ws.add(plugin_source("echo", {"echo": (0, "return data")}))
        self.daemon = start(self.ws, env={"PYTHONPATH": str(checkout)} if checkout else None)
        threading.Thread(target=_drain, args=(self.daemon,), daemon=True).start()
        self.client = self.daemon.client()
        self.lean = LeanClient(self.daemon.port) if client == "lean" else None
        self.reply: list[float] = []
        self.first: list[float] = []

    def cycle(self, keep: bool = True) -> tuple[float, float]:
        t0 = time.perf_counter()
        if self.lean is not None:
            status, body = self.lean.post("/api/plugins/load", {"plugin_name": "echo"})
            t1 = time.perf_counter()
            assert status == 200, body
            status, body = self.lean.post("/api/hooks/echo/execute", {"data": {"x": 1}})
            t2 = time.perf_counter()
            assert status == 200 and body["success"], body
        else:
            r = self.client.post("/api/plugins/load", json={"plugin_name": "echo"})
            t1 = time.perf_counter()
            assert r.status_code == 200, r.text
            r = self.client.post("/api/hooks/echo/execute", json={"data": {"x": 1}})
            t2 = time.perf_counter()
            assert r.status_code == 200 and r.json()["success"], r.text
        client = self.client
        pid = int(client.get("/api/plugins/echo").json()["pid"])
        self.daemon.seen_pids.add(pid)
        r = client.post("/api/plugins/unload", json={"plugin_name": "echo"})
        assert r.status_code == 200, r.text
        if keep:
            self.reply.append(t1 - t0)
            self.first.append(t2 - t0)
        return t1 - t0, t2 - t0

    def line(self, label: str) -> str:
        return (f"{label:<24} load reply p50 {statistics.median(self.reply) * 1e3:6.2f} ms | "
                f"load -> first answer p50 {statistics.median(self.first) * 1e3:6.2f} ms "
                f"min {min(self.first) * 1e3:6.2f} ms ({len(self.first)} loads)")

    def close(self) -> None:
        self.client.close()
        if self.lean is not None:
            self.lean.close()
        try:
            assert self.daemon.stop() == 0
        finally:
            reap(self.daemon)
            if self.sandbox:
                from plugind.sandbox.cgroups import remove_tree

                remove_tree(self.parent)


def run(loads: int, sandbox: bool, trace: Path | None, against: Path | None,
        gap: float = 0.0, client: str = "lean") -> None:
    label = f"{'sandboxed' if sandbox else 'unsandboxed'} ({client} client)"
    with tempfile.TemporaryDirectory(prefix="plugind-bench-cold-") as tmp:
        rigs = []
        try:
            (Path(tmp) / "this").mkdir()
            rigs.append(Rig(Path(tmp) / "this", sandbox, client=client))
            if against is not None:
                (Path(tmp) / "other").mkdir()
                rigs.append(Rig(Path(tmp) / "other", sandbox, against, client=client))
            for rig in rigs:
                rig.cycle(keep=False)  # the first load extracts the tree; the rest reuse it
            # As an operator's load finds them: the trust list, the bundle and its tree unchanged for
            # a while. Files changed less than SETTLE_S ago are read and checked again at each load.
            time.sleep(SETTLE_S + 0.5)
            for _ in range(loads):
                for rig in rigs:
                    time.sleep(gap)
                    rig.cycle()
            print(rigs[0].line(f"{label}, this code"))
            if against is not None:
                print(rigs[1].line(f"{label}, {against.name}"))
                ratio = statistics.median(rigs[0].first) / statistics.median(rigs[1].first)
                print(f"{label}: load -> first answer p50 ratio this/{against.name} {ratio:.2f}")
            if trace is not None:
                daemon = rigs[0].daemon
                st = subprocess.Popen(["strace", "-f", "-tt", "-qq", "-e", f"trace={TRACED}", "-s", "48",
                                       "-o", str(trace), "-p", str(daemon.proc.pid)] +
                                      [x for p in _children(daemon.proc.pid) for x in ("-p", str(p))])
                time.sleep(1.0)
                a, b = rigs[0].cycle(keep=False)
                time.sleep(0.3)
                st.terminate()
                st.wait()
                print(f"traced load: reply {a * 1e3:.2f} ms, first answer {b * 1e3:.2f} ms -> {trace}")
        finally:
            for rig in rigs:
                rig.close()


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
    parser.add_argument("--gap", type=float, default=0.0, help="seconds to wait before each load")
    parser.add_argument("--against", type=Path, default=None, help="another checkout to A/B against")
    parser.add_argument("--client", choices=("lean", "httpx"), default="lean",
                        help="the measuring client (default lean: http.client, keep-alive)")
    args = parser.parse_args()
    if args.strace is not None and shutil.which("strace") is None:
        parser.error("--strace needs strace installed")
    run(args.loads, args.sandbox, args.strace, args.against, args.gap, args.client)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
