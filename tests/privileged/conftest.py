"""Fixtures of the root-only sandbox tests: the session's own cgroup parent, one parent per test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import cgroup_host
import pytest
from sandbox_harness import group_dirs, unique_parent

from plugind.sandbox import cgroups


def pytest_report_header() -> list[str]:
    host = cgroup_host.HOST
    lines = [host.describe()]
    if host.layout == "v1":
        lines.append("tests' v1 groups: under /<each v1 mount>/plugind-tests-PID")
    if host.v2_mount is not None:
        base = cgroup_host.choose_v2_base(host, os.getpid())
        lines.append(base if isinstance(base, str) else f"tests' cgroup2 groups: {base.how}")
    return lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for sp in cgroup_host.DONE:
        terminalreporter.write_line(sp if isinstance(sp, str) else sp.summary)


@pytest.fixture(scope="session", autouse=True)
def session_cgroups() -> Iterator[cgroup_host.SessionParent | str]:
    """The tests' own cgroup parent for the whole session (see cgroup_host); removed at the end."""
    yield from cgroup_host.session()


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
