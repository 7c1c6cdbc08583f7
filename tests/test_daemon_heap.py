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
