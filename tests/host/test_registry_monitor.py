"""The registry owns its monitor: started by `start` (when `[monitoring] enabled`), stopped by
`shutdown`, sampling the registry's running plugins, with `[plugin.NAME]` behaviour; real plugins."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from integration.kit import Workspace, plugin_source

from plugind.errors import NotLoaded
from plugind.host import HookRegistry, PluginContext, PluginLoader, PluginRegistry
from plugind.host.launcher import Launcher
from plugind.host.supervisor import Supervisor
from plugind.monitor import UnmountBehavior
from plugind.trust import PluginSecurity


async def lifecycle(ws: Workspace) -> dict[str, object]:
    settings = ws.settings()
    launcher = Launcher()
    await launcher.start()
    seen: dict[str, object] = {}
    try:
        registry = PluginRegistry(
            settings,
            loader=PluginLoader(settings, PluginSecurity.from_settings(settings, ws.trust_key_hex)),
            supervisor_factory=Supervisor,
            hooks=HookRegistry(settings),
            context=PluginContext(),
            launcher=launcher,
        )
        seen["before_start"] = registry.monitor.running
        try:
            await registry.start()
            seen["after_start"] = registry.monitor.running
            seen["sampled"] = [p.name for p in registry.monitored_plugins()]
            seen["behavior"] = registry.monitor.unmount_behavior("calm")
            seen["other"] = registry.monitor.unmount_behavior("other")
            registry.monitor.set_unmount_behavior("calm", UnmountBehavior(True, True))
            seen["set"] = registry.monitor.unmount_behavior("calm")
            check = await asyncio.to_thread(registry.monitor.check, "calm")
            seen["check"] = (check.plugin, check.violations, check.metrics.thread_count >= 1)
            with pytest.raises(NotLoaded, match="'ghost' is not loaded"):
                registry.monitor.check("ghost")
        finally:
            await registry.shutdown()
        seen["after_shutdown"] = registry.monitor.running
    finally:
        await launcher.close()
    return seen


@pytest.mark.parametrize("enabled", [True, False], ids=["monitoring-on", "monitoring-off"])
def test_registry_starts_and_stops_its_monitor(tmp_path: Path, enabled: bool) -> None:
    ws = Workspace(tmp_path)
    ws.extra_config = (
        f"[monitoring]\nenabled = {str(enabled).lower()}\nauto_unmount = true\n"
        "[plugin.calm]\nauto_unmount = false\n"
    )
    ws.add(plugin_source("calm", {"on_request": (0, "return data")}))
    seen = asyncio.run(lifecycle(ws))
    assert seen["before_start"] is False
    assert seen["after_start"] is enabled
    assert seen["after_shutdown"] is False
    assert seen["sampled"] == ["calm"]
    assert seen["behavior"] == UnmountBehavior(auto_unmount=False, log_violations=True)  # [plugin.calm]
    assert seen["other"] == UnmountBehavior(auto_unmount=True, log_violations=True)  # [monitoring]
    assert seen["set"] == UnmountBehavior(True, True)  # set at run time wins
    assert seen["check"] == ("calm", [], True)  # a check on demand works with or without sweeps
