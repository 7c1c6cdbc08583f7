"""The HTTP edge's decisions that need no daemon: the connection cap under the fd limit, and the
accounting of open connections by client address (tests/chaos/test_edge.py runs them for real)."""

from __future__ import annotations

import pytest

from plugind.api.edge import EdgeLimits, EdgeState, effective_max_connections
from plugind.config import Settings


@pytest.mark.parametrize(
    ("configured", "nofile", "expected"),
    [
        (1024, 65536, 1024),  # the unit's LimitNOFILE: the configured cap holds
        (1024, 1024, 768),  # a quarter of the fds kept back
        (100000, 256, 192),  # at least 64 kept back
        (1024, 60, 1),  # never 0 (which would mean no cap)
        (0, 256, 0),  # 0: no cap, the operator's choice
    ],
)
def test_the_cap_keeps_a_reserve_of_fds(configured: int, nofile: int, expected: int) -> None:
    assert effective_max_connections(configured, nofile) == expected


def test_the_lowered_cap_is_the_one_in_force_and_counts_the_fds_in_use() -> None:
    settings = Settings()
    settings.api.max_connections = 5000
    assert EdgeLimits.from_settings(settings, nofile=1024).max_connections == 768
    assert EdgeLimits.from_settings(settings, nofile=1024, in_use=40).max_connections == 728


def test_connections_are_counted_in_total_and_per_address() -> None:
    state = EdgeState(EdgeLimits(3, 2, 10.0, 30.0, 0))
    assert state.admit("10.0.0.1") is None
    assert state.admit("10.0.0.1") is None
    assert state.admit("10.0.0.1") == "max_connections_per_client"
    assert state.admit(None) is None  # the Unix socket: the total cap only
    assert state.admit("10.0.0.2") == "max_connections"
    state.release("10.0.0.1")
    assert state.admit("10.0.0.1") is None
    for client in ("10.0.0.1", "10.0.0.1", None):
        state.release(client)
    assert state.open == 0 and not state.by_client  # nothing kept for addresses that left
