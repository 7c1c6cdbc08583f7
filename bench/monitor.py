"""Benchmark: one ResourceMonitor sweep and one /metrics render with 200 plugins, next to 1 plugin.

    .venv/bin/python bench/monitor.py [--plugins 200] [--rounds 7]

Plugins are real child processes (forked Python processes holding a socket to the "host", a few
fds, a second thread and 1 MiB of memory), each in its own real cgroup when run as root. The
1-plugin figures, measured in the same run, are the floor; the ratios are what to compare across
machines. Timings on a shared machine are noisy: run it 2-3 times and take the median.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import prctl

from plugind.config import Settings
from plugind.monitor import metrics
from plugind.monitor.resource import ResourceMonitor
from plugind.monitor.sampling import MonitoredPlugin

HOOKS = ("on_request", "on_response", "on_startup")


def spawn_plugin_like(siblings: list[socket.socket]) -> tuple[int, socket.socket]:
    """Fork a child that looks like a plugin process; it exits when the returned socket closes."""
    parent_end, child_end = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # child
        try:
            prctl.set_pdeathsig(signal.SIGKILL)  # never outlive an interrupted bench
            parent_end.close()
            for sock in siblings:  # or an older sibling would never see its EOF
                sock.close()
            fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(6)]
            ballast = bytearray(1024 * 1024)
            for i in range(0, len(ballast), 4096):
                ballast[i] = 1
            threading.Thread(target=child_end.recv, args=(1,), daemon=True).start()
            child_end.recv(1)  # EOF when the bench closes its end
            del fds, ballast
        finally:
            os._exit(0)
    child_end.close()
    return pid, parent_end


class Fleet:
    """N plugin-like processes, each in its own cgroup when we can make one."""

    def __init__(self, n: int) -> None:
        self.children: list[tuple[int, socket.socket]] = []
        self.groups: list[object | None] = [None] * n
        self.parent: str | None = None
        self.backend: str | None = None
        try:
            for _ in range(n):
                self.children.append(spawn_plugin_like([sock for _, sock in self.children]))
            if os.geteuid() == 0:
                self._into_cgroups()
        except BaseException:
            self.close()
            raise

    def _into_cgroups(self) -> None:
        from plugind.sandbox import cgroups
        from plugind.sandbox.plan import CgroupLimits

        hier = cgroups.detect()
        self.backend = cgroups.choose_backend("auto", hier)
        if self.backend is None:
            return
        self.parent = f"plugind-bench-{uuid.uuid4().hex[:8]}"
        for i, (pid, _) in enumerate(self.children):
            group = cgroups.create_group(self.backend, self.parent, f"p{i}", CgroupLimits(256 << 20), hier)
            group.attach(pid)
            self.groups[i] = group

    def plugins(self) -> list[MonitoredPlugin]:
        return [
            MonitoredPlugin(f"bench-{i}", pid, self.groups[i])  # type: ignore[arg-type]
            for i, (pid, _) in enumerate(self.children)
        ]

    def close(self) -> None:
        for _, sock in self.children:
            sock.close()
        for pid, _ in self.children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        if self.parent is not None:
            from plugind.sandbox import cgroups

            cgroups.remove_tree(self.parent)


def median_time(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_sweep(n: int, rounds: int) -> tuple[float, float, float, str]:
    """Median seconds of: the sampling thread's work, a whole `await sweep()`, the part of it spent
    on the event loop (judging, bookkeeping); and the cgroup backend."""
    fleet = Fleet(n)
    try:
        plugins = fleet.plugins()
        settings = Settings()

        async def unload(name: str, reason: str) -> None:
            raise AssertionError(f"bench plugin {name} unloaded: {reason}")

        monitor = ResourceMonitor(settings, lambda: plugins, unload)
        monitor.sample_all(plugins)  # warm up: imports, page cache of /proc
        sampling = median_time(lambda: monitor.sample_all(plugins), rounds)

        async def sweeps() -> tuple[float, float]:
            await monitor.sweep()
            whole, on_loop = [], []
            for _ in range(rounds):
                t0 = time.perf_counter()
                verdicts = await monitor.sweep()
                whole.append(time.perf_counter() - t0)
                on_loop.append(whole[-1] - monitor.last_sweep_seconds)
                assert len(verdicts) == n, f"sampled {len(verdicts)} of {n} plugins"
            await monitor.stop()
            return statistics.median(whole), statistics.median(on_loop)

        whole, on_loop = asyncio.run(sweeps())
        return sampling, whole, on_loop, fleet.backend or "none (psutil and /proc only)"
    finally:
        fleet.close()


def bench_render(n: int, rounds: int) -> tuple[float, int]:
    """(median seconds of metrics.render(), body bytes) with n plugins' worth of series."""
    names = [f"render-{n}-{i}" for i in range(n)]
    samples = {name: metrics.PluginSample(64 << 20, 12.5, 4, 20, 1) for name in names}
    for name in names:
        for hook in HOOKS:
            for outcome in ("ok", "error"):
                metrics.observe_hook(hook, name, outcome, 0.003)
        metrics.violation(name, "memory")
        metrics.plugin_restarted(name)
    metrics.set_sample_source(lambda: samples)
    try:
        body, _ = metrics.render()
        return median_time(metrics.render, rounds), len(body)
    finally:
        metrics.set_sample_source(None)
        for name in names:
            metrics.forget_plugin(name)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--plugins", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    s1, w1, l1, backend = bench_sweep(1, args.rounds)
    sn, wn, ln, _ = bench_sweep(args.plugins, args.rounds)
    r1, b1 = bench_render(1, args.rounds * 3)
    rn, bn = bench_render(args.plugins, args.rounds * 3)
    n = args.plugins
    print(f"cgroups: {backend}; {os.cpu_count()} CPUs; median of {args.rounds} rounds")
    print(f"monitor sweep, sampling thread:  1 plugin {s1 * 1e3:7.2f} ms | {n} plugins {sn * 1e3:7.2f} ms"
          f" | ratio {sn / s1:6.1f}x | per plugin {sn / n * 1e3:.3f} ms"
          f" ({sn / n / s1:.2f}x the 1-plugin sweep)")
    print(f"monitor sweep, whole await:      1 plugin {w1 * 1e3:7.2f} ms | {n} plugins {wn * 1e3:7.2f} ms"
          f" | ratio {wn / w1:6.1f}x | share of a 5 s interval: {wn / 5 * 100:.2f}%")
    print(f"  of which on the event loop:    1 plugin {l1 * 1e3:7.2f} ms | {n} plugins {ln * 1e3:7.2f} ms"
          f" | ratio {ln / l1:6.1f}x")
    print(f"/metrics render:                 1 plugin {r1 * 1e3:7.2f} ms | {n} plugins {rn * 1e3:7.2f} ms"
          f" | ratio {rn / r1:6.1f}x | body {b1} B vs {bn} B")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
