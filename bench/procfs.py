"""What the benches read of /proc: CPU time by schedstat, page faults, /proc/meminfo, and what a
fresh page costs."""

from __future__ import annotations

import contextlib
import mmap
import time
from pathlib import Path


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid`, in ns. From /proc/PID/task/*/schedstat, not /proc/PID/stat,
    which counts whole 10 ms ticks rounded down per process (a plugin whose start took 9 ms of CPU
    reads as 0 there). Raises FileNotFoundError when the process is gone."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total


def minor_faults(pid: int) -> int:
    """Minor page faults of `pid` so far (every thread's, the exited ones' included); 0 if it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])
    except (OSError, ValueError, IndexError):
        return 0


def meminfo_kib() -> dict[str, int]:
    """/proc/meminfo, in KiB."""
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        with contextlib.suppress(ValueError, IndexError):
            out[key] = int(rest.split()[0])
    return out


def fresh_page_us(mib: int = 64) -> float:
    """What a fresh anonymous page costs here now (us per 4 KiB page: the fault, its zeroing and, in
    a VM, whatever the host charges for a page it has to back): `mib` MiB touched once and freed."""
    size = mib << 20
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        t0 = time.perf_counter()
        for off in range(0, size, 4096):
            m[off] = 1
        return (time.perf_counter() - t0) / (size // 4096) * 1e6
    finally:
        m.close()
