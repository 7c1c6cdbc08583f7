"""Benchmark: load requests to ready through the real daemon, sandboxed and not, for N plugins.

    .venv/bin/python bench/load.py [--plugins 100] [--no-sandbox]

Starts `plugind serve` (the integration tests' workspace: real signed and trusted bundles, real
verification and extraction) with `auto_load = false`, then times `POST /api/plugins/load` for each
plugin, one after the other: the whole request, from the operator's point of view, to a plugin that
has said hello. Next to it, in the same run: `python -c pass` (what a fresh interpreter per plugin
would cost at the very least). Targets (issue 4): the full sandbox adds under 10 ms per plugin; 100
sandboxed plugins load in under 5 s in total. The sandboxed run needs root.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # cgroup_host, which the integration conftest imports
sys.path.insert(0, str(REPO / "tests" / "integration"))  # first: its conftest, not the tests' own

from conftest import reap, start  # noqa: E402
from kit import Workspace  # noqa: E402
from scenarios import echo  # noqa: E402


def load_all(n: int, sandbox: bool) -> tuple[list[float], float]:
    """Per-request load latencies and the total wall time for `n` plugins."""
    with tempfile.TemporaryDirectory(prefix="plugind-bench-load-") as tmp:
        ws = Workspace(Path(tmp), sandboxing=sandbox, auto_load=False)
        parent = f"/plugind-bench-load-{os.getpid()}"
        if sandbox:
            ws.extra_config = f'[sandboxing.cgroups]\nparent = "{parent}"\n'
        names = [f"p{i:03d}" for i in range(n)]
        for name in names:
            ws.add(echo(name))
        daemon = start(ws)
        try:
            latencies = []
            # One keep-alive client, as an operator's tool would use: a new httpx client per
            # request costs more than the load itself (it builds a TLS context).
            with daemon.client() as client:
                t_all = time.perf_counter()
                for name in names:
                    t0 = time.perf_counter()
                    reply = client.post("/api/plugins/load", json={"plugin_name": name})
                    latencies.append(time.perf_counter() - t0)
                    assert reply.status_code == 200, reply.text
                total = time.perf_counter() - t_all
            assert daemon.api("GET", "/health").json()["plugins_loaded"] == n
            assert daemon.stop() == 0, "the daemon did not stop cleanly"
        finally:
            reap(daemon)
            if sandbox:
                from plugind.sandbox.cgroups import remove_tree

                remove_tree(parent)
    return latencies, total


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--plugins", type=int, default=100)
    parser.add_argument("--no-sandbox", action="store_true", help="only the unsandboxed run")
    args = parser.parse_args()

    fresh = []
    for _ in range(10):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        fresh.append(time.perf_counter() - t0)
    floor = statistics.median(fresh)
    print(f"python -c pass              p50 {floor * 1e3:7.2f} ms")

    modes = [False] if args.no_sandbox else [False, True]
    medians = {}
    for sandbox in modes:
        lat, total = load_all(args.plugins, sandbox)
        p50 = statistics.median(lat)
        medians[sandbox] = p50
        p99 = sorted(lat)[min(len(lat) - 1, int(len(lat) * 0.99))]
        label = "sandboxed" if sandbox else "unsandboxed"
        print(f"load request to ready, {label:<11} p50 {p50 * 1e3:7.2f} ms  p99 {p99 * 1e3:7.2f} ms  "
              f"({p50 / floor:4.2f}x python -c pass) | {args.plugins} plugins in {total:5.2f} s")
    if len(medians) == 2:
        print(f"sandbox adds {(medians[True] - medians[False]) * 1e3:6.2f} ms per plugin at p50 "
              f"(target < 10 ms); 100-plugin target: < 5 s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
