"""Benchmark: rendering `/metrics` at 1,000 plugins, prometheus_client's generate_latest next to plugind's
renderer (plugind.monitor.metrics.render), in one interleaved run.

    .venv/bin/python bench/metrics_render.py [--plugins 1000] [--hooks 3] [--rounds 15]

The real registry is filled in-process through the module's own functions, as the daemon fills it:
each plugin answers each hook (`ok`, every plugin also `error` on one hook, every 10th a `timeout`),
has a violation and a restart, and a resource sample. Plugins beyond the label budget (MAX_PLUGINS)
are summed under `other`, as in the daemon. Prints the medians, the ratio, the body size, the time
per 1,000 plugins, and a floor: joining the same body from its lines, already made
(`b"\\n".join`), which no renderer that builds the body line by line can beat.
Both renderers' bodies are checked to be the same bytes first. The first render of the new
renderer (its caches empty, as after a start) is shown too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from plugind.monitor import metrics

HOOKS = ("on_request", "on_response", "on_startup", "on_shutdown", "on_event", "on_tick")


def populate(plugins: int, hooks: int) -> list[str]:
    names = [f"bench-plugin-{i:04d}" for i in range(plugins)]
    samples = {n: metrics.PluginSample(64 << 20, 12.5 + i, 4, 20, 1) for i, n in enumerate(names)}
    for i, name in enumerate(names):
        for j, hook in enumerate(HOOKS[:hooks]):
            for k in range(1 + i % 7):  # spread over the buckets
                metrics.observe_hook(hook, name, "ok", 0.00005 * 3**k)
            if j == 0:
                metrics.observe_hook(hook, name, "error", 0.002)
            if i % 10 == 0:
                metrics.observe_hook(hook, name, "timeout", 5.0)
        metrics.violation(name, "memory")
        metrics.plugin_restarted(name)
    metrics.set_sample_source(lambda: samples)
    metrics.set_plugin_states({"running": plugins})
    return names


def time_interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each function, run in turn each round so load from others hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plugins", type=int, default=1000)
    parser.add_argument("--hooks", type=int, default=3, choices=range(1, len(HOOKS) + 1))
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    names = populate(args.plugins, args.hooks)
    try:
        t0 = time.perf_counter()
        body = metrics._TextRenderer(metrics.REGISTRY).render()  # a fresh renderer: cold caches
        cold = time.perf_counter() - t0
        reference = metrics.generate_latest(metrics.REGISTRY)
        if metrics.render()[0] != reference or body != reference:
            print("the renderers disagree", file=sys.stderr)
            return 1
        pieces = body.split(b"\n")
        lines = sum(1 for line in pieces if line and not line.startswith(b"#"))
        times = time_interleaved(
            {
                "generate_latest": lambda: metrics.generate_latest(metrics.REGISTRY),
                "render": lambda: metrics.render(),
                "floor": lambda: b"\n".join(pieces),
            },
            args.rounds,
        )
    finally:
        metrics.set_sample_source(None)
        metrics.set_plugin_states({})
        for name in names:
            metrics.forget_plugin(name)
    old, new, floor = times["generate_latest"], times["render"], times["floor"]
    per_k = 1000 / args.plugins
    print(f"{args.plugins} plugins x {args.hooks} hooks (plugin labels: at most {metrics.MAX_PLUGINS}"
          f" + other); median of {args.rounds} interleaved rounds")
    print(f"body: {len(body)} B, {lines} samples")
    print(f"generate_latest: {old * 1e3:8.2f} ms | per 1,000 plugins {old * per_k * 1e3:8.2f} ms"
          f" | {old / lines * 1e9:6.0f} ns/sample")
    print(f"plugind render:  {new * 1e3:8.2f} ms | per 1,000 plugins {new * per_k * 1e3:8.2f} ms"
          f" | {new / lines * 1e9:6.0f} ns/sample | first render (cold caches) {cold * 1e3:.2f} ms")
    print(f"floor (join of the {len(pieces)} lines): {floor * 1e3:.3f} ms")
    print(f"ratio generate_latest / render: {old / new:.1f}x; render / floor: {new / floor:.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
