"""plugind.wire.polling: the CPU reader both ends send in their frames, and the poll window."""

from __future__ import annotations

import os
import threading

import pytest

from plugind.wire.polling import START_S, PollWindow, getcpu


def test_getcpu_says_the_cpu_this_thread_is_pinned_to() -> None:
    # The `cpu` of invoke and result frames: each side keeps from polling for a peer on its own CPU.
    # Read on a thread of its own pinned to each allowed CPU in turn (this process keeps its mask).
    cpus = sorted(os.sched_getaffinity(0))
    seen: dict[int, list[int]] = {}

    def probe(cpu: int) -> None:
        os.sched_setaffinity(0, {cpu})  # this thread only (0: the calling thread)
        seen[cpu] = [getcpu() for _ in range(20)]

    for cpu in cpus[:4]:
        t = threading.Thread(target=probe, args=(cpu,))
        t.start()
        t.join()
    assert seen == {cpu: [cpu] * 20 for cpu in cpus[:4]}
    assert type(getcpu()) is int


@pytest.mark.parametrize(("window", "took", "after"), [
    (0.0, 5e-6, START_S),  # slept at once, came within the budget: start polling
    (START_S, 5e-6, START_S),  # came while polling: the window stays
    (START_S, 15e-6, 2 * START_S),  # came later, within the budget: doubled
    (160e-6, 180e-6, 200e-6),  # doubled, but never past the budget
    (START_S, 300e-6, 0.0),  # later than the budget: reset
])
def test_poll_window_halt_polling_rules(window: float, took: float, after: float) -> None:
    poll = PollWindow(200e-6)
    poll.window = window
    poll.update(window, took)
    assert poll.window == after
