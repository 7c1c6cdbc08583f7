"""Fixtures of the root-only sandbox tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sandbox_harness import group_dirs, unique_parent

from plugind.sandbox import cgroups


@pytest.fixture
def parent() -> Iterator[str]:
    """A cgroup parent of this test's own, removed (and checked gone) afterwards."""
    p = unique_parent()
    yield p
    cgroups.remove_tree(p)
    assert group_dirs(p) == []
