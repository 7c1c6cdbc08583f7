"""Fixtures of the root-only sandbox tests: the session's own cgroup parent, one parent per test."""

from __future__ import annotations

from collections.abc import Iterator

import cgroup_host
import pytest
from cgroup_host import group_dirs, unique_parent

from plugind.sandbox import cgroups


@pytest.fixture(scope="session", autouse=True)
def session_cgroups(cgroup_session: cgroup_host.SessionParent | str) -> cgroup_host.SessionParent | str:
    """Every test here runs with the tests' own cgroup parent in place (see cgroup_host)."""
    return cgroup_session


def _parent(limits: bool) -> Iterator[str]:
    p = unique_parent(limits=limits)
    yield p
    cgroups.remove_tree(p)
    assert group_dirs(p) == []


@pytest.fixture
def parent() -> Iterator[str]:
    """A cgroup parent of this test's own, removed (and checked gone) afterwards; the test skips,
    saying why, on a host that offers no cgroup controller to limit a plugin with."""
    yield from _parent(limits=True)


@pytest.fixture
def any_parent() -> Iterator[str]:
    """As `parent`, on any host: for tests of what happens where cgroups cannot be used."""
    yield from _parent(limits=False)
