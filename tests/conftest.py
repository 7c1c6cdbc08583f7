"""Shared fixtures and markers for the whole suite."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import cgroup_host
import pytest

REPO = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0


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


@pytest.fixture(scope="session")
def cgroup_session() -> Iterator[cgroup_host.SessionParent | str]:
    """The tests' own cgroup parent for the whole session (tests/cgroup_host.py), or why there is
    none here (not root; no room on this host's cgroup v2). Removed, and checked empty, at the end:
    a test that leaves a cgroup behind fails the run."""
    yield from cgroup_host.session()


@pytest.fixture
def cgroup_parent(cgroup_session: cgroup_host.SessionParent | str) -> Iterator[str]:
    """A cgroup parent of this test's own under the session's (never the hierarchy's root), for
    plugin groups; removed and checked gone afterwards. The test skips, saying why, where the host
    offers no cgroup controller to limit a plugin with."""
    parent = cgroup_host.unique_parent()
    yield parent
    from plugind.sandbox import cgroups

    cgroups.remove_tree(parent)
    assert cgroup_host.group_dirs(parent) == [], f"cgroup parent {parent} left behind"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Root-only tests skip with a reason when not root; CI runs as root, so they run there.
    skip_root = pytest.mark.skip(reason="needs root (namespaces, cgroups, seccomp); CI runs as root")
    for item in items:
        if "root" in item.keywords and not IS_ROOT:
            item.add_marker(skip_root)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


@pytest.fixture
def two_cpus() -> Iterator[tuple[int, int]]:
    """Two CPUs (a, b), with this process pinned to a for the test: polling is about a peer on
    another CPU (on one CPU it only takes turns), so these tests place both ends themselves."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs to place the two ends of a socket apart (CI has two)")
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpus[0]})
    try:
        yield cpus[0], cpus[-1]
    finally:
        os.sched_setaffinity(0, before)
