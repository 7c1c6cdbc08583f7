"""Adaptive polling: the KVM-style window, and the event loop's poller on a real loop."""

from __future__ import annotations

import asyncio

from plugind.daemon import event_loop_factory
from plugind.host.poll import LoopPoller
from plugind.wire.polling import START_S, PollWindow


def test_window_grows_keeps_and_resets_like_halt_polling() -> None:
    w = PollWindow(200e-6)
    w.update(0.0, 50e-6)  # slept, answer within the budget: start polling
    assert w.window == START_S
    w.update(START_S, 50e-6)  # polled 10 us, answer at 50 us: double
    assert w.window == 2 * START_S
    w.update(w.window, 15e-6)  # answered while polling: keep
    assert w.window == 2 * START_S
    for _ in range(10):
        w.update(w.window, 190e-6)
    assert w.window == 200e-6  # capped at the budget
    w.update(w.window, 5e-3)  # an answer later than the budget: stop polling
    assert w.window == 0.0
    off = PollWindow(0.0)
    off.update(0.0, 1e-6)
    assert off.window == 0.0  # no budget, no polling


def test_loop_poller_keeps_the_loop_awake_until_the_answer_or_the_window() -> None:
    async def main() -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        poller = LoopPoller(loop)
        answer: asyncio.Future[None] = loop.create_future()
        loop.call_later(0.02, answer.set_result, None)
        poller.begin(1.0)  # answered long before the window ends
        await answer
        poller.end()
        after_answer = poller.rounds
        await asyncio.sleep(0.01)
        idle = poller.rounds - after_answer  # nothing in flight: no polling
        poller.begin(0.005)  # never answered: polls for the window, then lets the loop sleep
        await asyncio.sleep(0.05)
        poller.end()
        return after_answer, idle, poller.rounds - after_answer

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        after_answer, idle, unanswered = runner.run(main())
    assert after_answer > 100  # 20 ms of rounds, not one sleep
    assert idle <= 1
    assert 10 < unanswered < after_answer  # about 5 ms of rounds, then none
