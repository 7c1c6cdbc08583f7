"""Shared fixtures and markers for the whole suite."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0


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
