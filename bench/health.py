"""Benchmark: /health latency of the real daemon while 8 plugins are busy with CPU-bound hooks,
and while a big bundle is verified and extracted.

    .venv/bin/python bench/health.py [--plugins 8] [--seconds 6] [--bundle-mb 48] [--sandbox]

Starts `plugind serve` (the integration tests' workspace: real signed and trusted bundles), loads
8 plugins whose `burn` hook spins the CPU, and probes /health at 50 Hz on one keep-alive connection:
first with the plugins idle (the floor, measured in the same run), then while all 8 burn at once.
Then it loads a plugin whose bundle holds `--bundle-mb` MiB of text to hash and unpack, probing
/health at 200 Hz meanwhile: hashing and extraction run off the event loop, so /health should stay
near the floor (the integration tests only check that it keeps answering). Prints p50/p99/max of
each and the ratios to idle. `--sandbox` runs the plugins sandboxed (root:
namespaces, and cgroups whose cpu quota caps each plugin). Timings on a shared machine are noisy:
run it 2-3 times and take the median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # cgroup_host, which the integration conftest imports
sys.path.insert(0, str(REPO / "tests" / "integration"))  # first: its conftest, not the tests' own

import httpx  # noqa: E402
from conftest import reap, start  # noqa: E402
from kit import Workspace, plugin_source  # noqa: E402

BURN = """
end = time.monotonic() + float(data["seconds"])  # wall clock: busy for that long, whatever its share
n = 0
while time.monotonic() < end:
    n += 1
return {"spins": n}
"""


def probe(url: str, seconds: float, interval: float = 0.02) -> list[float]:
    """/health latencies (seconds) over `seconds`, one keep-alive connection, one probe per interval."""
    out: list[float] = []
    with httpx.Client(base_url=url, timeout=10.0) as client:
        client.get("/health")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            reply = client.get("/health")
            out.append(time.perf_counter() - t0)
            assert reply.status_code == 200, reply.text
            time.sleep(interval)
    return out


def probe_during(url: str, action: Callable[[], None], interval: float = 0.005) -> list[float]:
    """/health latencies (seconds) while `action` runs in this thread, probed from another."""
    out: list[float] = []
    done = threading.Event()

    def run() -> None:
        with httpx.Client(base_url=url, timeout=10.0) as client:
            client.get("/health")
            while not done.is_set():
                t0 = time.perf_counter()
                reply = client.get("/health")
                out.append(time.perf_counter() - t0)
                assert reply.status_code == 200, reply.text
                done.wait(interval)

    prober = threading.Thread(target=run)
    prober.start()
    try:
        time.sleep(0.1)  # the prober is warm before the action starts
        action()
    finally:
        done.set()
        prober.join()
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--plugins", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--bundle-mb", type=int, default=48, help="MiB of text in the big bundle (0: skip)")
    parser.add_argument("--sandbox", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="plugind-bench-health-") as tmp:
        ws = Workspace(Path(tmp), sandboxing=args.sandbox)
        ws.extra_config = "[hooks]\ndefault_timeout_secs = 120.0\n[monitoring]\ncheck_interval_secs = 1.0\n"
        # A cgroup parent of its own: never share (and clean up) the groups of another daemon.
        parent = f"/plugind-bench-{os.getpid()}"
        ws.extra_config += f'[sandboxing.cgroups]\nparent = "{parent}"\n'
        names = [f"burner{i}" for i in range(args.plugins)]
        for name in names:
            ws.add(plugin_source(name, {"burn": (0, BURN)}))
        if args.bundle_mb:
            bulky = plugin_source("bulky")
            bulky["blob.txt"] = os.urandom(args.bundle_mb * 1024 * 1024 // 2).hex()
            ws.add(bulky)
        ws.auto_load = False  # the burners are loaded below; bulky while /health is probed
        daemon = start(ws)
        loading: list[float] = []
        try:
            for name in names:
                assert daemon.load(name).status_code == 200, f"{name} did not load"
            loaded = daemon.api("GET", "/health").json()["plugins_loaded"]
            assert loaded == args.plugins, f"{loaded} of {args.plugins} plugins loaded"
            idle = probe(daemon.url, args.seconds)

            burn_reply: dict[str, object] = {}

            def burn() -> None:
                try:
                    burn_reply["r"] = daemon.call("burn", {"seconds": args.seconds + 1}, policy="all",
                                                  timeout_s=args.seconds * 4)
                except Exception as exc:  # reported below, in the main thread
                    burn_reply["error"] = exc

            burner = threading.Thread(target=burn)
            burner.start()
            time.sleep(0.5)  # let every plugin start spinning
            busy = probe(daemon.url, args.seconds)
            burner.join()
            if "error" in burn_reply:
                raise RuntimeError(f"the burn call failed: {burn_reply['error']!r}")
            results = burn_reply["r"]["results"]  # type: ignore[index]
            assert [r["outcome"] for r in results] == ["ok"] * args.plugins, results
            if args.bundle_mb:
                def load_bulky() -> None:
                    reply = daemon.load("bulky")
                    assert reply.status_code == 200, reply.text

                loading = probe_during(daemon.url, load_bulky)
            # A graceful stop: the plugins' cgroups are removed with them.
            assert daemon.stop() == 0, "the daemon did not stop cleanly"
        finally:
            reap(daemon)
            if args.sandbox:
                from plugind.sandbox.cgroups import remove_tree

                remove_tree(parent)

    def line(label: str, xs: list[float]) -> str:
        return (f"{label}: n={len(xs):4d}  p50 {statistics.median(xs) * 1e3:7.2f} ms  "
                f"p99 {pct(xs, 0.99) * 1e3:7.2f} ms  max {max(xs) * 1e3:7.2f} ms")

    print(f"/health with {args.plugins} plugins, sandbox {'on' if args.sandbox else 'off'}, 2 CPUs shared")
    print(line("idle plugins   ", idle))
    print(line(f"{args.plugins} plugins busy", busy))
    print(f"busy/idle ratio: p50 {statistics.median(busy) / statistics.median(idle):.2f}x  "
          f"p99 {pct(busy, 0.99) / pct(idle, 0.99):.2f}x")
    if loading:
        print(line(f"{args.bundle_mb} MiB bundle".ljust(15), loading))
        print(f"bundle/idle ratio: p50 {statistics.median(loading) / statistics.median(idle):.2f}x  "
              f"max {max(loading) / pct(idle, 0.99):.2f}x idle p99")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
