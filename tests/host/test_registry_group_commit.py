"""The state file under concurrent loads: group commit (one write serves every change it holds), and
the contract it keeps: a load answered with success is on disk, a failed write rolls back every load
it held. Real registry, loader, launcher and supervisors; the real state file on a real file system."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from integration.kit import Workspace, plugin_source

from plugind.audit import AuditLog
from plugind.errors import LoadError
from plugind.host import HookRegistry, PluginContext, PluginLoader, PluginRegistry
from plugind.host.launcher import Launcher
from plugind.host.state import StateWriter, journal_path, read_state
from plugind.host.supervisor import Supervisor
from plugind.trust import PluginSecurity

NAMES = [f"p{i}" for i in range(6)]


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path, auto_load=False)
    for name in NAMES:
        ws.add(plugin_source(name, {"on_request": (0, "return data")}))
    return ws


@contextlib.asynccontextmanager
async def open_registry(ws: Workspace) -> AsyncIterator[PluginRegistry]:
    settings = ws.settings()
    launcher = Launcher()
    await launcher.start()
    try:
        registry = PluginRegistry(
            settings,
            loader=PluginLoader(settings, PluginSecurity.from_settings(settings, ws.trust_key_hex)),
            supervisor_factory=Supervisor,
            hooks=HookRegistry(settings),
            context=PluginContext(),
            launcher=launcher,
            audit=AuditLog(settings.logging.audit_log),
        )
        try:
            yield registry
        finally:
            await registry.shutdown()
    finally:
        await launcher.close()


def state_file(ws: Workspace) -> Path:
    return ws.root / "data" / "loaded.json"


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every state-file write the registry makes (the real write, counted): the names it wrote."""
    seen: list[list[str]] = []

    real = StateWriter.write

    def counted(self: StateWriter, names: list[str], versions: dict[str, str] | None = None) -> None:
        seen.append(list(names))
        real(self, names, versions)

    monkeypatch.setattr(StateWriter, "write", counted)
    return seen


def test_concurrent_changes_share_one_write(ws: Workspace, writes: list[list[str]]) -> None:
    async def scenario() -> None:
        async with open_registry(ws) as reg:
            await reg.start()
            del writes[:]
            # Five callers at once (as five loads finishing together): the first writes at once;
            # the four that called while it ran may have changed the intent after its snapshot, so
            # one more write, taken after all of them called, serves all four. Not five writes.
            reg._wanted = list(NAMES[:5])  # as five loads would have left it
            results = await asyncio.gather(*(reg.persist() for _ in range(5)))
            assert results == [None] * 5
            assert writes == [NAMES[:5], NAMES[:5]]
            # A change made while a write runs is not in that write's snapshot: it gets its own.
            first = asyncio.ensure_future(reg.persist())
            await asyncio.sleep(0)  # the first write has taken its snapshot and is in its thread
            reg._wanted.append(NAMES[5])
            assert await asyncio.gather(first, reg.persist()) == [None, None]
            assert writes[2:] == [NAMES[:5], NAMES]
            assert read_state(state_file(ws)).names == NAMES
            reg._wanted = []  # nothing runs: leave an empty intent
            assert await reg.persist() is None

    asyncio.run(scenario())


def test_concurrent_loads_are_all_recorded(ws: Workspace, writes: list[list[str]]) -> None:
    async def scenario() -> None:
        async with open_registry(ws) as reg:
            await reg.start()
            del writes[:]
            loaded = await asyncio.gather(*(reg.load_plugin(n) for n in NAMES))
            assert [p.name for p in loaded] == NAMES
            assert sorted(reg.wanted_plugins()) == NAMES
            # Each answer came after a write holding its load: the file has them all.
            assert sorted(read_state(state_file(ws)).names) == NAMES
            assert 1 <= len(writes) <= len(NAMES)
            for name in NAMES:
                # the write that answered `name`'s load held it
                assert any(name in written for written in writes)

    asyncio.run(scenario())


def test_a_failed_shared_write_rolls_back_every_load_it_held(ws: Workspace) -> None:
    async def scenario() -> None:
        async with open_registry(ws) as reg:
            await reg.start()
            await reg.load_plugin(NAMES[0])
            # Writes now fail for real (a non-empty directory where each file of the state was).
            for each in (state_file(ws), journal_path(state_file(ws))):
                each.unlink()
                (each / "x").mkdir(parents=True)
            results: list[Any] = await asyncio.gather(
                *(reg.load_plugin(n) for n in NAMES[1:]), return_exceptions=True
            )
            for name, result in zip(NAMES[1:], results, strict=True):
                assert isinstance(result, LoadError), (name, result)
                assert result.reason == "state_not_saved"
                assert not reg.is_loaded(name)
            assert reg.wanted_plugins() == [NAMES[0]]
            assert [p.name for p in reg.get_loaded_plugins()] == [NAMES[0]]
            # Writable again: the next write holds only what runs and is wanted.
            for each in (state_file(ws), journal_path(state_file(ws))):
                (each / "x").rmdir()
                each.rmdir()
            assert await reg.persist() is None
            assert read_state(state_file(ws)).names == [NAMES[0]]

    asyncio.run(scenario())
