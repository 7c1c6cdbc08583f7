"""Fixtures for tests/api: a Workspace and `run_api(scenario)` (see api_helpers)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from api_helpers import Scenario, open_api
from integration.kit import Workspace


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


@pytest.fixture
def run_api(ws: Workspace) -> Callable[..., None]:
    """run_api(scenario, start=True, token=TOKEN): run `await scenario(api)` against a fresh app."""

    def run(scenario: Scenario, **kw: Any) -> None:
        async def main() -> None:
            async with open_api(ws, **kw) as api:
                await scenario(api)

        asyncio.run(main())

    return run
