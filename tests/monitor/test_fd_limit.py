"""The monitor keeps sampling when its process is out of fds (issue 9, row 2): a sample that fails
with EMFILE is taken again with the monitor's spare fds released for it."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from collections.abc import Iterator

from plugind.config import Settings
from plugind.monitor.resource import ResourceMonitor
from plugind.monitor.sampling import MonitoredPlugin


@contextlib.contextmanager
def out_of_fds() -> Iterator[None]:
    """Every fd of this process taken until the block ends (a lowered soft limit, then filled)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    taken: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 64, hard))
    try:
        while True:
            try:
                taken.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
                break
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _unload(name: str, reason: str) -> None:
    raise AssertionError("nothing is unloaded here")


def test_a_sweep_at_the_fd_limit_still_samples(hog) -> None:
    child = hog()
    plugin = MonitoredPlugin("fdless", child.pid)
    monitor = ResourceMonitor(Settings(), lambda: [plugin], _unload)
    with out_of_fds():
        # The process is out of fds: anything that opens one fails...
        try:
            os.open(os.devnull, os.O_RDONLY)
        except OSError as exc:
            assert exc.errno == errno.EMFILE
        else:
            raise AssertionError("the process still had a free fd")
        # ...but the monitor's sample is taken.
        samples = monitor.sample_all([plugin])
    assert set(samples) == {"fdless"}
    assert samples["fdless"].pid == child.pid and samples["fdless"].fds >= 3


def test_a_sample_of_a_process_no_longer_loaded_is_not_judged(hog) -> None:
    # A plugin unloaded and loaded again while a sweep sampled it: the old process's sample (over
    # its limit) unloaded the fresh one. Judged only while the sampled process is still the one loaded.
    import asyncio

    old, new = hog(), hog()
    old.do("fds 80")
    settings = Settings.model_validate({"monitoring": {"violation_threshold": 1,
                                                       "limits": {"max_fds": 40}}})
    unloaded: list[str] = []

    async def unload(name: str, reason: str) -> None:
        unloaded.append(name)

    async def main(swapped: bool) -> dict[str, object]:
        calls = 0

        def source() -> list[MonitoredPlugin]:
            nonlocal calls
            calls += 1  # the first call lists what is sampled; the later ones what is loaded now
            return [MonitoredPlugin("x", new.pid if swapped and calls > 1 else old.pid)]

        monitor = ResourceMonitor(settings, source, unload)
        verdicts = await monitor.sweep()
        await asyncio.sleep(0.1)  # an unload runs as a task
        await monitor.stop()
        return dict(verdicts)

    assert asyncio.run(main(swapped=True)) == {} and unloaded == []
    verdicts = asyncio.run(main(swapped=False))  # the same process: judged, and unloaded
    assert [v.type for v in verdicts["x"]] == ["fds"] and unloaded == ["x"]  # type: ignore[attr-defined]
