"""Digest throughput of the `plugind verify` path on a 50 MB bundle, next to `openssl dgst -sha3-512`.

Run: .venv/bin/python bench/digest.py [--size-mb 50] [--repeat 5]
Prints MB/s (1 MB = 10^6 bytes) for each, the median of the repeats, and the ratio plugind/openssl
as the median of the ratios of each round (the sides take turns within a round, all pinned to one
CPU, so that a slower or busier moment of a shared machine hits both alike). Both read the same
file from the page cache (a warm-up pass runs first); the openssl figure includes its process
start, measured separately on an empty file and shown as well.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from plugind.trust.bundle import write_bundle
from plugind.trust.digest import bundle_digest, read_and_digest


def make_bundle(root: Path, size: int) -> Path:
    """A real bundle of about `size` bytes (incompressible payload), packed the way `plugind pack` does."""
    src = root / "big"
    src.mkdir()
    (src / "plugin.toml").write_text(
        '[plugin]\nname = "big"\nversion = "1.0.0"\nentrypoint = "big:plugin"\napi = 1\n'
    )
    (src / "big.py").write_text("plugin = None\n")
    (src / "payload.bin").write_bytes(os.urandom(size - 1024))
    return write_bundle(src, root)[0]


def time_interleaved(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Time each function `repeat` times, interleaved, so load from other processes hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def openssl(path: Path) -> str:
    out = subprocess.run(  # inherits this process's CPU affinity (main pins it)
        ["openssl", "dgst", "-sha3-512", "-r", str(path)], capture_output=True, text=True, check=True
    )
    return out.stdout.split()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = make_bundle(root, args.size_mb * 1_000_000)
        size = bundle.stat().st_size
        empty = root / "empty"
        empty.write_bytes(b"")
        limit = size + 1
        data, ours = read_and_digest(bundle, limit)  # warm the page cache; check both agree
        assert openssl(bundle) == ours, "openssl and plugind disagree on the digest"

        times = time_interleaved(
            {
                "verify": lambda: read_and_digest(bundle, limit),
                "in_memory": lambda: bundle_digest(data),
                "openssl": lambda: openssl(bundle),
                "start": lambda: openssl(empty),
            },
            args.repeat,
        )
    verify, in_memory, ossl, start = (times[k] for k in ("verify", "in_memory", "openssl", "start"))

    mb = size / 1e6

    def rate(times: list[float]) -> float:
        return mb / statistics.median(times)

    print(f"bundle: {mb:.1f} MB, {args.repeat} rounds, medians, on CPU {cpu}")
    print(f"plugind verify path (read once + SHA3-512): {rate(verify):8.1f} MB/s")
    print(f"plugind digest of bytes in memory:          {rate(in_memory):8.1f} MB/s")
    print(f"openssl dgst -sha3-512 (incl. process start): {rate(ossl):6.1f} MB/s")
    print(f"openssl process start on an empty file:     {statistics.median(start) * 1000:8.1f} ms")
    # Per round: throughput ratio = openssl's time / ours.
    per_round = statistics.median(o / v for o, v in zip(ossl, verify, strict=True))
    print(f"ratio plugind verify / openssl: {per_round:.2f} "
          f"(ratio of the medians {rate(verify) / rate(ossl):.2f})")
    print(f"ratio plugind in-memory / openssl: "
          f"{statistics.median(o / m for o, m in zip(ossl, in_memory, strict=True)):.2f} "
          f"(ratio of the medians {rate(in_memory) / rate(ossl):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
