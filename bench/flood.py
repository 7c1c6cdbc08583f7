"""Figure: the daemon's RSS under a context flood stays within the documented bound.

    .venv/bin/python bench/flood.py [--plugins 2] [--keys 20000] [--value-kb 60]

Starts `plugind serve` (the integration tests' workspace: real signed and trusted bundles) with
`--plugins` plugins whose `flood` hook calls `ctx.set` on `--keys` keys of `--value-kb` KB under
its own prefix, each going on after a refusal (issue 9, row 1: 20,000 keys of 60 KB), and fills the
integrators' own budget through `PUT /api/context` too. Prints the daemon's RSS before, after the
flood and after unloading the flooders, next to the bound docs/operations.md states for the
context: plugins x `[budgets] context_bytes` + `api_context_bytes`. The RSS growth is what the
daemon holds plus the allocator's slack; what was offered is printed beside it for scale.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # cgroup_host, which the integration conftest imports
sys.path.insert(0, str(REPO / "tests" / "integration"))  # first: its conftest, not the tests' own

import httpx  # noqa: E402
import psutil  # noqa: E402
from conftest import TOKEN, reap, start  # noqa: E402
from kit import Workspace, plugin_source  # noqa: E402

from plugind.config import Settings  # noqa: E402

MIB = 1024 * 1024
FLOOD = """
from plugind.errors import PluginError
value = "v" * (data["value_kb"] * 1000)
stored = refused = 0
for i in range(data["keys"]):
    try:
        ctx.set(f"{data['prefix']}.k{i}", value)
        stored += 1
    except PluginError:
        refused += 1
return {"stored": stored, "refused": refused}
"""


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--plugins", type=int, default=2)
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--value-kb", type=int, default=60)
    parser.add_argument("--api-keys", type=int, default=2_000, help="PUT /api/context writes, same size")
    args = parser.parse_args()
    budgets = Settings().budgets
    bound = args.plugins * budgets.context_bytes + budgets.api_context_bytes

    with tempfile.TemporaryDirectory(prefix="plugind-bench-flood-") as tmp:
        ws = Workspace(Path(tmp))
        ws.extra_config = "[hooks]\ndefault_timeout_secs = 3600.0\n"
        names = [f"flood{i}" for i in range(args.plugins)]
        for name in names:
            ws.add(plugin_source(name, {f"flood_{name}": (0, FLOOD)}))
        daemon = start(ws)
        try:
            before = rss(daemon.proc.pid)
            t0 = time.perf_counter()
            replies: dict[str, dict[str, int]] = {}

            def flood(name: str) -> None:
                data = {"keys": args.keys, "value_kb": args.value_kb, "prefix": name}
                body = {"data": data, "timeout_s": 3600}
                with daemon.client() as client:
                    client.timeout = httpx.Timeout(3600)
                    reply = client.post(f"/api/hooks/flood_{name}/execute", json=body)
                replies[name] = reply.json()["results"][0]["output"]

            threads = [threading.Thread(target=flood, args=(n,)) for n in names]
            for t in threads:
                t.start()
            api_refused = 0
            value = "v" * (args.value_kb * 1000)
            with httpx.Client(base_url=daemon.url, headers={"Authorization": f"Bearer {TOKEN}"},
                              timeout=60) as client:
                for i in range(args.api_keys):
                    if client.put(f"/api/context/app.k{i}", json={"value": value}).status_code == 429:
                        api_refused += 1
            for t in threads:
                t.join()
            flooded = rss(daemon.proc.pid)
            seconds = time.perf_counter() - t0
            for name in names:
                assert daemon.api("POST", "/api/plugins/unload", {"plugin_name": name}).status_code == 200
            unloaded = rss(daemon.proc.pid)
            health = daemon.api("GET", "/health").status_code
        finally:
            reap(daemon)

    offered = (args.plugins * args.keys + args.api_keys) * args.value_kb * 1000
    print(f"flood: {args.plugins} plugins x {args.keys} keys + {args.api_keys} PUTs, of {args.value_kb} KB "
          f"({offered / MIB:.0f} MiB offered) in {seconds:.1f} s")
    for name, out in sorted(replies.items()):
        print(f"  {name}: stored {out['stored']}, refused {out['refused']}")
    print(f"  integrators: stored {args.api_keys - api_refused}, refused {api_refused}")
    print(f"daemon RSS before     {before / MIB:8.1f} MiB")
    print(f"daemon RSS flooded    {flooded / MIB:8.1f} MiB  (growth {(flooded - before) / MIB:.1f} MiB)")
    print(f"daemon RSS unloaded   {unloaded / MIB:8.1f} MiB")
    print(f"documented bound      {bound / MIB:8.1f} MiB  ({args.plugins} x context_bytes "
          f"{budgets.context_bytes / MIB:.0f} MiB + api_context_bytes "
          f"{budgets.api_context_bytes / MIB:.0f} MiB)")
    print(f"growth / bound        {(flooded - before) / bound:8.2f}   /health after: {health}")
    return 0 if flooded - before <= bound * 1.25 else 1


if __name__ == "__main__":
    sys.exit(main())
