"""An A/B of bench/peers.py's library rows: runs it in this checkout and in another, in turns.

    .venv/bin/python bench/peers_ab.py --against DIR [--pairs 5] [-- peers.py options...]

DIR is another checkout with its own `.venv` (e.g. `git worktree add --detach ../base main` and
`make setup` there). Each pair runs `bench/peers.py --no-rest --no-cold` (plus the options after
`--`, default `--rounds 3`) once in each checkout, the order swapped every pair, so both see the
same machine over the run. Every run measures go-plugin net/rpc next to plugind, so the ratios it
prints are read against the go-plugin of the same run; this prints each run's ratios and their
medians per checkout. On a shared machine, read the medians, and the go-plugin figures beside them
(a busier machine shows in go-plugin's own CPU per call).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^(go-plugin net/rpc|plugind hooks\.execute|plugind Supervisor\.invoke)\s+(.*)$")


def run(tree: Path, extra: list[str]) -> dict[str, list[float]]:
    """One peers.py run in `tree`: row name -> its numbers (p50, p99, 1/s, 8/s, CPU host, plugin,
    CPU host at 8, plugin at 8)."""
    proc = subprocess.run([str(tree / ".venv/bin/python"), str(tree / "bench/peers.py"), "--no-rest",
                           "--no-cold", *extra], cwd=tree, capture_output=True, text=True, timeout=1800)
    rows: dict[str, list[float]] = {}
    for line in proc.stdout.splitlines():
        match = ROW.match(line)
        if match and "(not measured)" not in line and match.group(1) not in rows:
            rows[match.group(1)] = [float(x) for x in match.group(2).split()]
    if len(rows) < 3:
        raise SystemExit(f"peers.py in {tree} printed no rows:\n{proc.stdout}\n{proc.stderr[-2000:]}")
    return rows


def ratios(rows: dict[str, list[float]]) -> dict[str, float]:
    go, pub, inv = rows["go-plugin net/rpc"], rows["plugind hooks.execute"], rows["plugind Supervisor.invoke"]
    return {
        "public/invoke p50": pub[0] / inv[0],
        "public/go p50": pub[0] / go[0],
        "CPU/call public/go": (pub[4] + pub[5]) / (go[4] + go[5]),
        "8 in flight public/go calls/s": pub[3] / go[3],
        "8 in flight host CPU/call us": pub[6],
        "go host CPU/call at 8 us": go[6],
        "public host+plugin CPU/call us": pub[4] + pub[5],
        "go host+plugin CPU/call us": go[4] + go[5],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", type=Path, required=True, help="the other checkout (with .venv)")
    parser.add_argument("--pairs", type=int, default=5, help="runs in each checkout (default 5)")
    parser.add_argument("extra", nargs="*", help="options for peers.py (after --; default --rounds 3)")
    args = parser.parse_args()
    extra = args.extra or ["--rounds", "3"]
    trees = {"A (against)": args.against.resolve(), "B (this)": REPO}
    seen: dict[str, list[dict[str, float]]] = {k: [] for k in trees}
    for i in range(args.pairs):
        order = list(trees) if i % 2 == 0 else list(reversed(trees))
        for key in order:
            got = ratios(run(trees[key], extra))
            seen[key].append(got)
            print(f"pair {i + 1} {key}: " + ", ".join(f"{k} {v:.2f}" for k, v in got.items()), flush=True)
    print(f"\nmedians of {args.pairs} runs each")
    for name in seen["B (this)"][0]:
        a = statistics.median(r[name] for r in seen["A (against)"])
        b = statistics.median(r[name] for r in seen["B (this)"])
        print(f"  {name:<32} A {a:8.2f}   B {b:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
