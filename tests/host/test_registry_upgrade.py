"""PluginRegistry.upgrade_plugin as a library, with the real loader, launcher and supervisors: what
the REST tests in tests/integration/test_upgrade.py cannot reach from outside (a call that picked the
old version before the switch but reaches it after it stopped) and the state file's pin."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from integration.kit import Workspace, plugin_source
from test_registry import open_registry

from plugind.errors import LoadError, PluginBusy, PluginNotFound
from plugind.host import PluginRegistry
from plugind.host.state import encode_state

ANSWER = "data.setdefault('answered', []).append({version!r})\nreturn data"
# The library's loader reads the trust list once: every bundle is there from the start, and the
# state file pins 1.0.0 (as an earlier upgrade would have) so that is what starts.
PINNED = encode_state(["svc"], {"svc": "1.0.0"})


def svc(version: str) -> dict[str, str]:
    return plugin_source("svc", {"on_request": (0, ANSWER.format(version=version))}, version=version)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def pinned_at_1(ws: Workspace) -> None:
    ws.add(svc("1.0.0"))
    ws.add(svc("2.0.0"))
    (ws.root / "data" / "loaded.json").write_bytes(PINNED)


async def answered(reg: PluginRegistry) -> list[str]:
    result = await reg.hooks.execute("on_request", {})
    assert result.ok, result.to_dict()
    versions: list[str] = result.data["answered"]
    return versions


def test_a_call_that_reaches_the_old_version_after_it_stopped_goes_to_the_new_one(ws: Workspace) -> None:
    pinned_at_1(ws)

    async def main() -> None:
        async with open_registry(ws) as reg:
            await reg.start()
            old = reg.get_plugin("svc")
            assert old is not None
            assert old.version == "1.0.0"
            old_sup = old.supervisor  # what a chain call holds once it picked its handlers
            done = await reg.upgrade_plugin("svc")
            assert (done.from_version, done.to_version, done.drained) == ("1.0.0", "2.0.0", 0)
            assert old_sup.state == "stopped" and old_sup.pid is None
            # A late call on the old one is answered by the new one: it neither fails nor runs twice.
            assert await old_sup.invoke("on_request", {}, 5.0) == {"answered": ["2.0.0"]}
            assert await answered(reg) == ["2.0.0"]
            new = reg.get_plugin("svc")
            assert new is not None and new.supervisor.plan is None  # no sandbox in this test
            assert getattr(new.supervisor, "instance", "") != ""

    asyncio.run(main())


def test_upgrade_refusals_leave_the_old_version(ws: Workspace) -> None:
    pinned_at_1(ws)

    async def main() -> None:
        async with open_registry(ws) as reg:
            await reg.start()
            with pytest.raises(LoadError, match="invalid version") as bad:
                await reg.upgrade_plugin("svc", "../../etc/x")
            assert bad.value.reason == "invalid_version"
            with pytest.raises(LoadError, match="invalid plugin name"):
                await reg.upgrade_plugin("../svc")
            with pytest.raises(PluginNotFound, match=r"no bundle of svc 3\.0\.0 .*have: 1\.0\.0"):
                await reg.upgrade_plugin("svc", "3.0.0")
            # Busy: an upgrade in progress refuses the next one and an unload.
            first = asyncio.ensure_future(reg.upgrade_plugin("svc"))
            while "svc" not in reg._busy:  # it marks the plugin busy before its first await ends
                await asyncio.sleep(0)
            with pytest.raises(PluginBusy, match="being loaded, upgraded or unloaded"):
                await reg.upgrade_plugin("svc")
            with pytest.raises(PluginBusy, match="being upgraded or unloaded"):
                await reg.unload_plugin("svc")
            assert (await first).to_version == "2.0.0"
            assert await answered(reg) == ["2.0.0"]

    asyncio.run(main())


def test_the_pinned_version_comes_back_and_a_missing_one_is_said(ws: Workspace) -> None:
    ws.add(svc("1.0.0"))
    v2 = ws.add(svc("2.0.0"))
    state = ws.root / "data" / "loaded.json"

    async def upgrade_down() -> None:
        async with open_registry(ws) as reg:
            await reg.start()
            assert await answered(reg) == ["2.0.0"]  # a plain start: the highest
            await reg.upgrade_plugin("svc", "1.0.0")  # a rollback, named
        assert json.loads(state.read_text())["versions"] == {"svc": "1.0.0"}

    async def restart(expect: list[str]) -> None:
        async with open_registry(ws) as reg:
            await reg.start()
            assert await answered(reg) == expect

    asyncio.run(upgrade_down())
    asyncio.run(restart(["1.0.0"]))  # pinned, although 2.0.0 is the highest

    v1 = ws.root / "plugins" / "svc-1.0.0.plugin"
    v1.rename(v1.with_suffix(".gone"))

    async def pinned_gone() -> None:
        async with open_registry(ws) as reg:
            await reg.start()
            assert not reg.is_loaded("svc")
            why = reg.failed_plugins()["svc"]
            assert "was upgraded to 1.0.0, but svc-1.0.0.plugin is gone" in why
            assert reg.wanted_plugins() == ["svc"]
            # The operator's plain load runs the highest version and drops the pin.
            await reg.load_plugin("svc")
            assert await answered(reg) == ["2.0.0"]
        assert "versions" not in json.loads(state.read_text())

    asyncio.run(pinned_gone())
    assert v2.exists()
