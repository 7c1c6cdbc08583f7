"""settle_heap: the daemon's start-up objects leave the collector, later garbage still goes."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from plugind.daemon import settle_heap


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # leave the test process as it was


def test_settle_heap_freezes_what_is_alive_and_collects_the_rest(unfrozen: None) -> None:
    class Node:
        pass

    cycle = Node()
    cycle.me = cycle  # type: ignore[attr-defined]
    before = weakref.ref(cycle)
    del cycle  # garbage before settling: collected, not frozen
    frozen = settle_heap()
    assert frozen == gc.get_freeze_count() > 10_000  # the imported modules
    assert before() is None
    later = Node()
    later.me = later  # type: ignore[attr-defined]
    after = weakref.ref(later)
    del later
    gc.collect()
    assert after() is None  # made after settling: collected as usual


def test_a_bulk_of_loads_is_frozen_once_it_is_quiet_and_a_few_are_not(unfrozen: None) -> None:
    # HeapSettler, as the daemon wires it: a change listener, with the plugin count. Real objects
    # stand for the plugins' (a list per "plugin"), real gc, a real event loop's timers.
    import asyncio

    from plugind.daemon import HeapSettler

    plugins: list[list[object]] = []

    async def scenario() -> None:
        settler = HeapSettler(lambda: len(plugins), quiet_s=0.05, min_change=64)
        for _ in range(200):  # a bulk of loads, each telling the listener
            plugins.append([object() for _ in range(100)])
            settler.changed()
        assert settler.settles == 0  # not while it goes on
        before = gc.get_freeze_count()
        await asyncio.sleep(0.3)
        assert settler.settles == 1 and settler.settled_at == 200
        assert gc.get_freeze_count() >= before + 200  # the plugins' objects are out of reach now
        for _ in range(20):  # a few more: under max(64, 200 // 4), nothing to do
            plugins.append([object()])
            settler.changed()
        await asyncio.sleep(0.3)
        assert settler.settles == 1
        del plugins[:100]  # a bulk of unloads counts as well
        settler.changed()
        await asyncio.sleep(0.3)
        assert settler.settles == 2 and settler.settled_at == 120

    asyncio.run(scenario())
    HeapSettler(lambda: 0).changed()  # told with no loop running: nothing, and no error
