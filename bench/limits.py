"""What the host's depth check on every hook result costs, next to decoding that result.

Run: .venv/bin/python bench/limits.py [--repeat 7]
For each payload shape, prints the median time of `msgpack.unpackb` on its frame body (the floor:
what the receive path pays for every result anyway) and of `too_deep` on the decoded value, and the
ratio check/decode. Both are timed interleaved in the same run, so load from other processes hits
both alike; the ratio, not the microseconds, is the figure to compare between machines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from plugind.wire.limits import MAX_DEPTH, too_deep


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


SHAPES: dict[str, Any] = {
    "scalar": "ok",
    "small map": {"x": 1},
    "request": {"method": "GET", "path": "/a/b", "headers": {"host": "x", "accept": "*/*"},
                "query": [["a", "1"], ["b", "2"]], "body": None},
    "flat list 10k ints": list(range(10_000)),
    "10k small maps": [{"id": i, "name": "n"} for i in range(10_000)],
    f"nested {MAX_DEPTH}": nested(MAX_DEPTH),
}


def per_call(fn: Callable[[], object], number: int) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(f"{'payload':<22} {'decode us':>10} {'check us':>10} {'check/decode':>13}")
    for name, value in SHAPES.items():
        body = msgpack.packb({"type": "result", "id": 1, "ok": True, "data": value}, use_bin_type=True)
        # About 20 ms a sample whatever the shape.
        probe = per_call(lambda b=body: msgpack.unpackb(b, raw=False, strict_map_key=False), 3)
        number = max(1, int(0.02 / max(probe, 1e-7)))
        decode, check = [], []
        for _ in range(args.repeat):
            decode.append(per_call(lambda b=body: msgpack.unpackb(b, raw=False, strict_map_key=False),
                                   number))
            check.append(per_call(lambda v=value: too_deep(v), number))
        d, c = statistics.median(decode), statistics.median(check)
        print(f"{name:<22} {d * 1e6:>10.2f} {c * 1e6:>10.2f} {c / d:>13.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
