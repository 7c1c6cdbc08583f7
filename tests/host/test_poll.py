"""Adaptive polling: the KVM-style window as a table, and the event loop's poller on real loops
(asyncio's and the daemon's) with a clock the test moves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from plugind.daemon import event_loop_factory
from plugind.host import poll
from plugind.host.poll import LoopPoller
from plugind.wire.polling import START_S, PollWindow

# budget, window polled (0: slept at once), answer after -> the next window; in microseconds
WINDOW_TABLE = {
    "slept-answer-within-budget-starts": (200, 0, 50, 10),
    "answer-after-the-window-doubles-it": (200, 10, 50, 20),
    "answer-at-the-budget-still-doubles": (200, 80, 200, 160),
    "doubling-stops-at-the-budget": (200, 160, 190, 200),
    "answer-while-polling-keeps-it": (200, 20, 15, 20),
    "answer-later-than-the-budget-stops": (200, 200, 5000, 0),
    "slept-answer-later-than-the-budget": (200, 0, 300, 0),
    "no-budget-never-polls": (0, 0, 1, 0),
}


@pytest.mark.parametrize(("budget", "window", "took", "after"), WINDOW_TABLE.values(),
                         ids=WINDOW_TABLE.keys())
def test_window_grows_keeps_and_resets_like_halt_polling(budget: int, window: int, took: int,
                                                         after: int) -> None:
    w = PollWindow(budget * 1e-6)
    w.window = window * 1e-6
    w.update(window * 1e-6, took * 1e-6)
    assert round(w.window * 1e6, 6) == after


def test_window_from_sleep_to_budget_and_back() -> None:
    w = PollWindow(200e-6)
    grown = []
    for _ in range(6):
        w.update(w.window, 190e-6)
        grown.append(round(w.window * 1e6))
    assert grown == [round(START_S * 1e6), 20, 40, 80, 160, 200]
    w.update(w.window, 5e-3)
    assert w.window == 0.0


class Clock:
    """The poller's clock, moved by the test alone: which turns it polls in is then up to the code."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def turns(n: int) -> None:
    """Let the running loop go round `n` times."""
    for _ in range(n):
        await asyncio.sleep(0)


LOOPS = {"asyncio": asyncio.new_event_loop, "daemon-loop": event_loop_factory()}


@pytest.mark.parametrize("loop_factory", LOOPS.values(), ids=LOOPS.keys())
def test_loop_poller_polls_every_turn_while_a_call_is_in_flight_within_its_window(
        loop_factory: Callable[[], asyncio.AbstractEventLoop], monkeypatch: pytest.MonkeyPatch) -> None:
    # One round per turn of the loop keeps a callback always ready, so the loop polls epoll with a
    # zero timeout instead of sleeping; how much that saves is in bench/hooks.py.
    clock = Clock()
    monkeypatch.setattr(poll, "time", SimpleNamespace(monotonic=clock))

    async def main() -> list[int]:
        poller = LoopPoller(asyncio.get_running_loop())
        seen = []
        await turns(10)
        seen.append(poller.rounds)  # nothing in flight: no polling
        poller.begin(0.005)
        await turns(50)
        seen.append(poller.rounds)  # answered within the window: a round every turn until then
        poller.end()
        await turns(50)
        seen.append(poller.rounds)  # answered: polling stops at once
        poller.begin(0.005)
        await turns(20)
        clock.now += 0.005
        await turns(20)
        seen.append(poller.rounds)  # not answered within its window: polling stops when it ends
        poller.end()
        poller.begin(0.001)
        poller.begin(0.010)  # two calls in flight: polled for until the later window ends
        await turns(10)
        clock.now += 0.002
        await turns(10)
        poller.end()
        await turns(10)
        seen.append(poller.rounds)  # one answered, the other still within its window
        poller.end()
        await turns(10)
        seen.append(poller.rounds)  # both answered
        poller.begin(0.001)  # a window of its own, from now: not the earlier calls' 10 ms
        clock.now += 0.001
        await turns(10)
        seen.append(poller.rounds)
        poller.end()
        return seen

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert runner.run(main()) == [0, 50, 50, 70, 100, 100, 100]


@pytest.mark.parametrize("loop_factory", LOOPS.values(), ids=LOOPS.keys())
def test_the_round_after_an_answer_does_not_yield(
        loop_factory: Callable[[], asyncio.AbstractEventLoop], monkeypatch: pytest.MonkeyPatch) -> None:
    # Between reading an answer and running its caller the poller's round comes first: it skips
    # its sched_yield then, and yields again from the round after.
    clock = Clock()
    monkeypatch.setattr(poll, "time", SimpleNamespace(monotonic=clock))
    yielded: list[int] = []
    monkeypatch.setattr(poll, "os", SimpleNamespace(sched_yield=lambda: yielded.append(1)))

    async def main() -> list[tuple[int, int]]:
        poller = LoopPoller(asyncio.get_running_loop())
        seen = []
        poller.answered()  # not polling: nothing to skip later
        poller.begin(0.005)
        await turns(10)
        seen.append((poller.rounds, len(yielded)))
        poller.answered()
        await turns(1)
        seen.append((poller.rounds, len(yielded)))  # that round did not yield
        await turns(5)
        seen.append((poller.rounds, len(yielded)))  # the later ones do
        poller.end()
        await turns(3)
        seen.append((poller.rounds, poller.yields))
        return seen

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert runner.run(main()) == [(10, 10), (11, 10), (16, 15), (16, 15)]
