"""PluginRegistry as a library: scan, load/unload by name, persistence and restore, lifecycle hooks,
supervisor events into the audit trail, with the real loader, launcher and supervisors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from integration.kit import Workspace, plugin_source

from plugind.audit import AuditLog
from plugind.errors import (
    AlreadyLoaded,
    InitializationError,
    LoadError,
    NotLoaded,
    PluginNotFound,
    UntrustedPlugin,
)
from plugind.host import HookRegistry, PluginContext, PluginLoader, PluginRegistry
from plugind.host.launcher import Launcher
from plugind.host.state import decode_state, journal_path, read_state
from plugind.host.supervisor import Supervisor
from plugind.trust import PluginSecurity

ECHO = "data.setdefault('seen', []).append({name!r})\nreturn data"


def echo(name: str, priority: int = 0, version: str = "1.0.0") -> dict[str, str]:
    return plugin_source(name, {"on_request": (priority, ECHO.format(name=name))}, version=version)


@contextlib.asynccontextmanager
async def open_registry(ws: Workspace, **settings_kw: Any) -> AsyncIterator[PluginRegistry]:
    settings = ws.settings()
    launcher = Launcher()
    await launcher.start()
    try:
        security = PluginSecurity.from_settings(settings, ws.trust_key_hex)
        registry = PluginRegistry(
            settings,
            loader=PluginLoader(settings, security),
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


def run(ws: Workspace, scenario: Callable[[PluginRegistry], Awaitable[None]]) -> None:
    async def main() -> None:
        async with open_registry(ws) as reg:
            await scenario(reg)

    asyncio.run(main())


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def state_file(ws: Workspace) -> Path:
    return ws.root / "data" / "loaded.json"


def test_scan_picks_highest_version_and_flags_bad_bundles(ws: Workspace) -> None:
    ws.add(echo("multi", version="1.2.0"))
    ws.add(echo("multi", version="1.10.0"))
    ws.add(echo("multi", version="1.9.9"))
    renamed = ws.add(echo("inner"))
    renamed.rename(ws.plugins / "outer-1.0.0.plugin")
    (ws.plugins / "README.txt").write_text("not a bundle")
    (ws.plugins / "linked-1.0.0.plugin").symlink_to(ws.plugins / "multi-1.2.0.plugin")
    ws.add(echo("unsigned"), sign=False, trust=False)

    async def scenario(reg: PluginRegistry) -> None:
        found = {p.name: p for p in await reg.scan_directory()}
        assert sorted(found) == ["multi", "outer", "unsigned"]
        assert found["multi"].version == "1.10.0" and found["multi"].trust_level == "trusted"
        assert found["outer"].trust_level == "invalid"
        assert found["outer"].error == "file name says outer 1.0.0 but the manifest says inner 1.0.0"
        assert found["unsigned"].trust_level == "untrusted"
        assert reg.total_plugin_count() == 3 and reg.plugin_count() == 0

    run(ws, scenario)


def test_missing_directory_scans_empty(ws: Workspace) -> None:
    ws.plugins.rmdir()

    async def scenario(reg: PluginRegistry) -> None:
        assert await reg.scan_directory() == []

    run(ws, scenario)


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "A", "", "x" * 64, "a b", "-lead"])
def test_invalid_names_are_refused_before_any_lookup(ws: Workspace, name: str) -> None:
    async def scenario(reg: PluginRegistry) -> None:
        await reg.scan_directory()
        for call in (reg.load_plugin, reg.load_plugin_by_name, reg.unload_plugin):
            with pytest.raises(LoadError, match=re.escape(f"invalid plugin name {name!r}")) as info:
                await call(name)
            assert info.value.reason == "invalid_name"

    run(ws, scenario)


def test_load_unload_errors_and_persistence(ws: Workspace) -> None:
    ws.auto_load = False
    ws.add(echo("one", priority=2))
    ws.add(echo("two", priority=1))
    ws.add(echo("unlisted"), trust=False)

    async def scenario(reg: PluginRegistry) -> None:
        await reg.start()
        assert reg.plugin_count() == 0 and reg.ready
        assert read_state(state_file(ws)).names == []
        assert json.loads(state_file(ws).read_text())["version"] == 2
        loaded = await reg.load_plugin("one")
        assert loaded.supervisor.state == "running" and loaded.trust_level == "trusted"
        await reg.load_plugin_by_name("two")
        assert reg.plugin_count() == 2
        assert read_state(state_file(ws)).names == ["one", "two"]
        assert [f for f in os.listdir(state_file(ws).parent) if f.startswith(".loaded")] == []
        with pytest.raises(AlreadyLoaded, match="plugin 'one' is already loaded"):
            await reg.load_plugin("one")
        with pytest.raises(PluginNotFound, match="unknown plugin 'ghost': no bundle for it in"):
            await reg.load_plugin("ghost")
        with pytest.raises(UntrustedPlugin, match=re.escape("unlisted 1.0.0 is signed")):
            await reg.load_plugin("unlisted")
        result = await reg.hooks.execute("on_request", {"seen": []})
        assert result.data == {"seen": ["one", "two"]}
        until = await reg.hooks.execute_until_error("on_request", {"seen": []})
        assert until.ok and until.data == {"seen": ["one", "two"]}
        every = await reg.hooks.execute_all("on_request", {"seen": []}, timeout_s=5)
        assert [(r.plugin, r.output) for r in every.results] == [
            ("one", {"seen": ["one"]}), ("two", {"seen": ["two"]})
        ]
        pid = loaded.supervisor.pid
        await reg.unload_plugin("one")
        assert pid is not None and not _alive(pid)
        with pytest.raises(NotLoaded, match="plugin 'one' is not loaded"):
            await reg.unload_plugin("one")
        assert read_state(state_file(ws)).names == ["two"]
        assert reg.hooks.handlers("on_request") == [("two", 1)]

    run(ws, scenario)
    entries = AuditLog(ws.root / "data" / "audit.log").tail(50)
    assert [(e["event"], e["plugin"]) for e in entries if e["event"] != "refused"] == [
        ("load", "one"), ("load", "two"), ("unload", "one"), ("unload", "two")
    ]
    refused = [e for e in entries if e["event"] == "refused"]
    pairs = [(e["plugin"], e["reason"]) for e in refused]
    assert pairs == [("ghost", "not_found"), ("unlisted", "untrusted")]


def test_a_change_appends_to_the_journal_and_a_clean_stop_folds_it_in(ws: Workspace) -> None:
    ws.auto_load = False
    for name in ("a", "b", "c"):
        ws.add(echo(name))

    async def scenario(reg: PluginRegistry) -> None:
        await reg.start()  # its first write rewrites the file (then known), with nothing in it
        base = state_file(ws).read_bytes()
        await reg.load_plugin("a")
        await reg.load_plugin("b")
        await reg.load_plugin("c")
        await reg.unload_plugin("a")
        assert state_file(ws).read_bytes() == base  # not rewritten for every change
        assert len(journal_path(state_file(ws)).read_bytes().splitlines()) == 1 + 4
        assert read_state(state_file(ws)).names == ["b", "c"]

    run(ws, scenario)
    assert decode_state(state_file(ws).read_bytes()) == ["b", "c"]  # the file alone says it all
    assert len(journal_path(state_file(ws)).read_bytes().splitlines()) == 1  # an empty journal


def test_persisted_set_wins_over_auto_load_and_shutdown_keeps_it(ws: Workspace) -> None:
    for name in ("a", "b", "c"):
        ws.add(echo(name))
    # Format 1 (no checksum), as older versions wrote it, is still read.
    state_file(ws).write_text(json.dumps({"version": 1, "loaded": ["b", "b"]}))

    async def scenario(reg: PluginRegistry) -> None:
        assert await reg.start() == ["b"]
        assert reg.total_plugin_count() == 3 and reg.state_problem is None

    run(ws, scenario)
    # Shut down (in run's teardown) without rewriting the set.
    assert json.loads(state_file(ws).read_text()) == {"version": 1, "loaded": ["b", "b"]}


def test_auto_load_loads_only_what_policy_admits_then_persists(ws: Workspace) -> None:
    ws.add(echo("trusted-one"))
    ws.add(echo("signed-only"), trust=False)

    async def scenario(reg: PluginRegistry) -> None:
        assert await reg.start() == ["trusted-one"]

    run(ws, scenario)
    assert read_state(state_file(ws)).names == ["trusted-one"]


@pytest.mark.parametrize("content", [
    pytest.param("{not json", id="not-json"),
    pytest.param("", id="empty"),
    pytest.param(json.dumps({"version": 1, "loaded": ["solo", "../evil"]}), id="bad-name"),
    pytest.param(json.dumps({"version": 2, "loaded": ["solo"], "sha256": "0" * 64}), id="bad-checksum"),
])
def test_an_unreadable_state_file_loads_nothing_and_says_so(ws: Workspace, content: str) -> None:
    ws.add(echo("solo"))  # admitted by auto_load: only a first start (no file at all) would load it
    state_file(ws).write_text(content)

    async def scenario(reg: PluginRegistry) -> None:
        assert await reg.start() == []
        assert reg.state_problem is not None
        assert f"state file {state_file(ws)} is unreadable" in reg.state_problem
        assert "no plugin was loaded on its behalf" in reg.state_problem

    run(ws, scenario)
    assert state_file(ws).read_text() == content  # kept until the operator loads or unloads
    assert Path(f"{state_file(ws)}.unreadable").read_text() == content
    (entry,) = [e for e in AuditLog(ws.root / "data" / "audit.log").tail(50) if e["event"] == "state"]
    assert entry["action"] == "loaded nothing" and "is unreadable" in entry["problem"]


def test_a_state_file_that_cannot_be_written_rolls_a_load_back_and_warns_of_an_unload(
    ws: Workspace,
) -> None:
    ws.auto_load = False
    ws.add(echo("one"))
    ws.add(echo("two"))

    async def scenario(reg: PluginRegistry) -> None:
        await reg.start()
        await reg.load_plugin("one")
        # Writes now fail for real (a non-empty directory where each file of the state was).
        for each in (state_file(ws), journal_path(state_file(ws))):
            each.unlink()
            (each / "x").mkdir(parents=True)
        with pytest.raises(LoadError, match=r"plugin 'two' loaded, but the state file .* could not be "
                                            r"written \(.*\); the load was rolled back") as info:
            await reg.load_plugin("two")
        assert info.value.reason == "state_not_saved"
        assert not reg.is_loaded("two") and reg.wanted_plugins() == ["one"]
        assert await reg.unload_plugin("one") is True  # the unload stands...
        assert not reg.is_loaded("one") and reg.state_problem is not None  # ...with the reason
        assert "could not be written" in reg.state_problem
        # Writable again: the next change (or the shutdown) writes the intent and clears it.
        for each in (state_file(ws), journal_path(state_file(ws))):
            (each / "x").rmdir()
            each.rmdir()
        await reg.load_plugin("two")
        assert reg.state_problem is None
        assert read_state(state_file(ws)).names == ["two"]

    run(ws, scenario)
    states = [e["action"] for e in AuditLog(ws.root / "data" / "audit.log").tail(50) if e["event"] == "state"]
    assert states == ["not saved", "saved"]


def test_a_failed_load_is_not_in_the_state_file(ws: Workspace) -> None:
    ws.auto_load = False
    ws.add(echo("one"))
    ws.add(plugin_source("broken", {"on_request": (0, "return data")}, on_load="raise ValueError('no')"))

    async def scenario(reg: PluginRegistry) -> None:
        await reg.start()
        await reg.load_plugin("one")
        with pytest.raises(InitializationError, match="on_load of plugin 'broken' raised ValueError"):
            await reg.load_plugin("broken")
        assert not reg.is_loaded("broken") and reg.wanted_plugins() == ["one"]
        assert read_state(state_file(ws)).names == ["one"]
        assert reg.state_problem is None

    run(ws, scenario)
    events = [e["event"] for e in AuditLog(ws.root / "data" / "audit.log").tail(50)]
    assert events.count("load") == 1 and "refused" in events


def test_startup_and_shutdown_hooks_fire(ws: Workspace) -> None:
    ws.add(plugin_source("life", {
        "on_startup": (0, "ctx.set('life.started', data['host'])\nreturn data"),
        "on_shutdown": (0, "ctx.set('life.stopped', True)\nreturn data"),
    }))
    seen: dict[str, Any] = {}

    async def scenario(reg: PluginRegistry) -> None:
        await reg.start()
        assert reg.context.get("life.started") == "plugind"
        await reg.shutdown()
        seen["stopped"] = reg.context.get("life.stopped")
        assert reg.plugin_count() == 0 and not reg.ready and reg.shutting_down
        with pytest.raises(LoadError, match="cannot load 'life': plugind is shutting down") as info:
            await reg.load_plugin("life")
        assert info.value.reason == "shutting_down"

    run(ws, scenario)
    assert seen == {"stopped": True}


def test_crash_and_restart_reach_audit_and_state(ws: Workspace) -> None:
    ws.extra_config = "[supervisor]\nbackoff_initial_secs = 0.01\n"
    ws.add(echo("fragile"))

    async def scenario(reg: PluginRegistry) -> None:
        await reg.start()
        sup = reg.get_plugin("fragile").supervisor  # type: ignore[union-attr]
        before = sup.pid
        os.kill(before, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60  # a bound against a hang, not a figure
        while not (sup.state == "running" and sup.pid != before) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert sup.pid != before and sup.restarts == 1
        assert reg.state_of("fragile") == "running"
        result = await reg.hooks.execute("on_request", {"seen": []})
        assert result.data == {"seen": ["fragile"]}

    run(ws, scenario)
    events = [e["event"] for e in AuditLog(ws.root / "data" / "audit.log").tail(50)]
    assert events[:1] == ["load"] and "crash" in events and "restart" in events
    assert events.count("load") == 1  # a restart is audited as one, not as a load


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


# -- the state file is the operator's intent --------------------------------------------------------


def broken(name: str, why: str = "no database", version: str = "1.0.0") -> dict[str, str]:
    """A plugin whose own on_load fails."""
    return plugin_source(name, {"on_request": (0, "return data")}, on_load=f"raise RuntimeError({why!r})",
                         version=version)


def test_a_failed_load_stays_wanted_and_a_later_persist_keeps_it(ws: Workspace) -> None:
    ws.add(echo("good"))
    ws.add(broken("flaky"))
    ws.add(echo("later"))
    state_file(ws).write_text(json.dumps({"version": 1, "loaded": ["flaky", "good"]}))

    async def scenario(reg: PluginRegistry) -> None:
        assert await reg.start() == ["good"]
        assert reg.wanted_plugins() == ["flaky", "good"]
        (why,) = reg.failed_plugins().values()
        assert list(reg.failed_plugins()) == ["flaky"] and "no database" in why
        assert reg.state_of("flaky") == "load_failed"
        assert reg.load_summary() == f"loaded 1 of 2 configured plugins; failed: flaky ({why})"
        # Persisting for another plugin's sake writes the intent, not just what runs.
        await reg.load_plugin("later")
        assert read_state(state_file(ws)).names == ["flaky", "good", "later"]
        await reg.unload_plugin("good")
        assert read_state(state_file(ws)).names == ["flaky", "later"]
        # An explicit load that fails again changes nothing; one of a plugin nobody wanted adds nothing.
        with pytest.raises(InitializationError, match="no database"):
            await reg.load_plugin("flaky")
        assert reg.wanted_plugins() == ["flaky", "later"]

    run(ws, scenario)
    # A new version fixes it: the next start loads it, because it was still wanted.
    ws.add(echo("flaky", version="1.0.1"))

    async def fixed(reg: PluginRegistry) -> None:
        assert await reg.start() == ["flaky", "later"]
        assert reg.failed_plugins() == {}
        assert reg.load_summary() == "loaded 2 of 2 configured plugins"

    run(ws, fixed)
    assert read_state(state_file(ws)).names == ["flaky", "later"]


def test_a_failed_explicit_load_of_an_unwanted_plugin_is_not_remembered(ws: Workspace) -> None:
    ws.auto_load = False
    ws.add(broken("stranger"))

    async def scenario(reg: PluginRegistry) -> None:
        await reg.start()
        with pytest.raises(InitializationError):
            await reg.load_plugin("stranger")
        assert reg.wanted_plugins() == [] and reg.failed_plugins() == {}
        assert reg.state_of("stranger") == "available"

    run(ws, scenario)
    assert read_state(state_file(ws)).names == []


def test_unloading_a_wanted_plugin_that_failed_forgets_it(ws: Workspace) -> None:
    ws.add(broken("flaky"))

    async def scenario(reg: PluginRegistry) -> None:
        assert await reg.start() == []
        assert read_state(state_file(ws)).names == ["flaky"]  # first start: auto_load
        assert await reg.unload_plugin("flaky") is False
        assert reg.wanted_plugins() == [] and reg.failed_plugins() == {}
        assert reg.load_summary() == "loaded 0 of 0 configured plugins"
        with pytest.raises(NotLoaded, match="plugin 'flaky' is not loaded"):
            await reg.unload_plugin("flaky")

    run(ws, scenario)
    assert read_state(state_file(ws)).names == []
    entries = AuditLog(ws.root / "data" / "audit.log").tail(20)
    assert [(e["event"], e.get("running")) for e in entries if e["event"] == "unload"] == [("unload", False)]


def test_the_monitors_auto_unload_is_the_operators_policy(ws: Workspace) -> None:
    ws.add(echo("hog"))
    ws.add(echo("calm"))

    async def scenario(reg: PluginRegistry) -> None:
        await reg.start()
        await reg.monitor_unload("hog", "resource limits exceeded in 3 consecutive checks: memory")
        assert reg.wanted_plugins() == ["calm"] and reg.failed_plugins() == {}

    run(ws, scenario)
    assert read_state(state_file(ws)).names == ["calm"]


def test_a_load_before_start_neither_overwrites_nor_loses_the_intent(ws: Workspace) -> None:
    ws.add(echo("early"))
    ws.add(echo("kept"))
    state_file(ws).write_text(json.dumps({"version": 1, "loaded": ["kept"]}))

    async def scenario(reg: PluginRegistry) -> None:
        await reg.scan_directory()
        await reg.load_plugin("early")  # e.g. the API, while start-up still scans
        assert read_state(state_file(ws)).names == ["kept"]
        assert sorted(await reg.start()) == ["early", "kept"]
        assert reg.wanted_plugins() == ["kept", "early"]

    run(ws, scenario)
    assert read_state(state_file(ws)).names == ["kept", "early"]


def test_shutdown_keeps_every_wanted_plugin(ws: Workspace) -> None:
    ws.add(echo("one"))
    ws.add(broken("two"))

    async def scenario(reg: PluginRegistry) -> None:
        await reg.start()
        await reg.shutdown()
        assert reg.wanted_plugins() == ["one", "two"]

    run(ws, scenario)
    assert read_state(state_file(ws)).names == ["one", "two"]


@pytest.mark.root
def test_a_start_that_fails_for_a_host_reason_keeps_the_intent(ws: Workspace) -> None:
    # Every sandboxed load fails at step 'filesystem': a read-only bind source the operator
    # configured does not exist yet. That is the host's fault; the plugins stay wanted.
    needed = ws.root / "shared-data"
    ws.sandboxing = True
    ws.extra_config = (
        f'[sandboxing.cgroups]\nbackend = "none"\n'
        f'[sandboxing.filesystem]\nread_only_paths = ["{needed}"]\n'
    )
    ws.add(echo("a"))
    ws.add(echo("b"))

    async def failing(reg: PluginRegistry) -> None:
        assert await reg.start() == []
        failed = reg.failed_plugins()
        assert list(failed) == ["a", "b"]
        assert failed["a"].startswith("sandbox step 'filesystem': stat(")
        assert str(needed) in failed["a"] and "ENOENT" in failed["a"]
        assert reg.load_summary().startswith("loaded 0 of 2 configured plugins; failed: a (sandbox step")

    run(ws, failing)
    assert read_state(state_file(ws)).names == ["a", "b"]

    needed.mkdir()

    async def fixed(reg: PluginRegistry) -> None:
        assert await reg.start() == ["a", "b"]
        assert reg.get_plugin("a").supervisor.isolation["filesystem"] == "active"  # type: ignore[union-attr]
        assert reg.load_summary() == "loaded 2 of 2 configured plugins"

    run(ws, fixed)


def test_a_restart_restores_concurrently_in_intent_order_and_keeps_the_state_file(ws: Workspace) -> None:
    # More plugins than RESTORE_CONCURRENCY, one of which fails its own on_load: every other one is
    # restored, they join the loaded set and the hooks in the intent's order (not the order their
    # starts finished in), the failed one stays wanted and reported, and the state file is left as
    # it was. The starts overlapped, and never more of them at once than the bound.
    from plugind.host import registry as registry_module

    names = [f"r{i:02d}" for i in range(registry_module.RESTORE_CONCURRENCY + 5)][::-1]  # not sorted
    for name in names:
        ws.add(broken(name) if name == "r07" else echo(name))
    state_file(ws).write_text(json.dumps({"version": 1, "loaded": names}))
    before = state_file(ws).read_bytes()
    starting = {"now": 0, "most": 0}

    class Counting(Supervisor):
        async def start(self) -> None:
            starting["now"] += 1
            starting["most"] = max(starting["most"], starting["now"])
            try:
                if self.name == names[0]:  # the first in the intent starts last
                    await asyncio.sleep(0.5)
                await super().start()
            finally:
                starting["now"] -= 1

    async def main() -> None:
        settings = ws.settings()
        launcher = Launcher()
        await launcher.start()
        try:
            security = PluginSecurity.from_settings(settings, ws.trust_key_hex)
            reg = PluginRegistry(settings, loader=PluginLoader(settings, security),
                                 supervisor_factory=Counting, hooks=HookRegistry(settings),
                                 context=PluginContext(), launcher=launcher,
                                 audit=AuditLog(settings.logging.audit_log))
            try:
                good = [n for n in names if n != "r07"]
                assert await reg.start() == good
                assert [p.name for p in reg.get_loaded_plugins()] == good
                assert all(reg.state_of(n) == "running" for n in good)
                assert list(reg.failed_plugins()) == ["r07"] and reg.wanted_plugins() == names
                result = await reg.hooks.execute("on_request", {"seen": []})
                assert result.data == {"seen": good}  # equal priorities: load order, the intent's
                assert 1 < starting["most"] <= registry_module.RESTORE_CONCURRENCY
            finally:
                await reg.shutdown()
        finally:
            await launcher.close()

    asyncio.run(main())
    assert state_file(ws).read_bytes() == before


def test_health_counts_follow_every_change_they_count(ws: Workspace) -> None:
    # /health's counts are cached between changes: each step below changes one of them and must be
    # seen at once, including a crash with restart = "never", where the supervisor ends "failed"
    # only after it told the registry of the crash.
    ws.extra_config = '[supervisor]\nrestart = "never"\n'
    ws.auto_load = False
    ws.add(echo("a"))
    ws.add(echo("b"))
    ws.add(broken("c"))

    def exact(reg: PluginRegistry) -> tuple[int, int, int]:
        return reg.plugin_count(), reg.total_plugin_count(), len(reg.failed_plugins())

    async def scenario(reg: PluginRegistry) -> None:
        assert reg.health_counts() == (0, 0, 0)
        await reg.scan_directory()
        assert reg.health_counts() == (0, 3, 0)
        await reg.start()
        assert reg.health_counts() == exact(reg) == (0, 3, 0)
        await reg.load_plugin("a")
        await reg.load_plugin("b")
        assert reg.health_counts() == exact(reg) == (2, 3, 0)
        with pytest.raises(InitializationError):
            await reg.load_plugin("c")
        assert reg.health_counts() == exact(reg) == (2, 3, 0)  # not wanted: not failed
        sup = reg.get_plugin("a").supervisor  # type: ignore[union-attr]
        reg.change_listeners.append(reg.health_counts)  # counts taken mid-event, as a listener may
        os.kill(sup.pid, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60  # a bound against a hang, not a figure
        while sup.state != "failed" and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert reg.health_counts() == exact(reg) == (2, 3, 1)
        await reg.unload_plugin("a")
        assert reg.health_counts() == exact(reg) == (1, 3, 0)

    run(ws, scenario)


def test_change_listeners_see_every_change_once_they_run_and_are_coalesced(ws: Workspace) -> None:
    # Three concurrent loads change the registry at least six times; the listeners (STATUS=) run
    # fewer times than that, and their last run sees all three loaded.
    ws.auto_load = False
    for name in ("a", "b", "c"):
        ws.add(echo(name))

    async def scenario(reg: PluginRegistry) -> None:
        await reg.start()
        seen: list[int] = []
        reg.change_listeners.append(lambda: seen.append(reg.plugin_count()))
        await asyncio.gather(*(reg.load_plugin(n) for n in ("a", "b", "c")))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30  # a bound against a hang, not a figure
        while (not seen or seen[-1] != 3) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert seen and seen[-1] == 3
        assert len(seen) < 6

    run(ws, scenario)


def test_the_plugins_by_state_gauge_is_exact_at_every_scrape(ws: Workspace) -> None:
    # plugind_plugins{state} is counted when /metrics renders: it shows a crash with restart =
    # "never" as failed, although the supervisor ends "failed" only after it told the registry.
    from plugind.monitor import metrics

    ws.extra_config = '[supervisor]\nrestart = "never"\n'
    ws.auto_load = False
    ws.add(echo("a"))
    ws.add(echo("b"))

    def gauge() -> dict[str, float]:
        text = metrics.render()[0].decode()
        found = re.findall(r'^plugind_plugins\{state="(\w+)"\} (\S+)$', text, re.MULTILINE)
        return {state: float(value) for state, value in found if float(value)}

    async def scenario(reg: PluginRegistry) -> None:
        await reg.start()
        await reg.load_plugin("a")
        await reg.load_plugin("b")
        assert gauge() == {"running": 2}
        sup = reg.get_plugin("a").supervisor  # type: ignore[union-attr]
        os.kill(sup.pid, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60  # a bound against a hang, not a figure
        while sup.state != "failed" and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # whatever the registry does after the crash has been done
        assert gauge() == {"running": 1, "failed": 1}
        await reg.unload_plugin("a")
        assert gauge() == {"running": 1}

    run(ws, scenario)
    assert metrics._state_source == []  # a stopped registry counts no more


def _hook_series(plugin: str) -> dict[str, float]:
    from plugind.monitor import metrics

    out = {}
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            if sample.name == "plugind_hook_duration_seconds_count" and sample.labels.get("plugin") == plugin:
                out[sample.labels["hook"]] = sample.value
    return out


def test_a_loaded_plugins_hook_series_exist_before_its_first_call(ws: Workspace) -> None:
    # Made right after the load returns (the loop's next turn), so the first call only adds to
    # them; never for a plugin unloaded before that ran.
    ws.auto_load = False
    ws.add(echo("prebound"))

    async def scenario(reg: PluginRegistry) -> None:
        await reg.start()
        loaded = await reg.load_plugin("prebound")
        await asyncio.sleep(0)
        assert _hook_series("prebound") == {"on_request": 0.0}
        await reg.hooks.execute("on_request", {"n": 1})
        assert _hook_series("prebound") == {"on_request": 1.0}
        await reg.unload_plugin("prebound")
        assert _hook_series("prebound") == {}
        reg._bind_series(loaded)  # late, after the unload: nothing made
        assert _hook_series("prebound") == {}

    run(ws, scenario)


def test_the_load_entry_is_begun_at_the_hello_and_an_aborted_start_is_closed(ws: Workspace) -> None:
    # The `load` entry's write starts when the plugin says hello (its fsync then runs beside the
    # rest of the start), so it is begun before the plugin joins the loaded set. A start cancelled
    # after the hello stops the child and follows the entry with an `unload`.
    ws.auto_load = False
    ws.add(echo("early"))
    ws.add(echo("late"))
    begun: list[tuple[str, str | None, bool, Any]] = []

    async def scenario(reg: PluginRegistry) -> None:
        await reg.start()
        real = reg._audit_begin

        def spy(event: str, plugin: str | None, **fields: Any) -> asyncio.Future[None]:
            begun.append((event, plugin, reg.is_loaded(plugin or ""), fields.get("pid")))
            return real(event, plugin, **fields)

        reg._audit_begin = spy  # type: ignore[method-assign]
        loaded = await reg.load_plugin("early")
        assert begun == [("load", "early", False, loaded.supervisor.pid)]

        at_turn = asyncio.Event()

        async def turn() -> None:  # after the start, before the plugin joins the loaded set
            at_turn.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(reg._load("late", explicit=True, turn=turn))
        await at_turn.wait()
        pid = begun[-1][3]
        assert begun[-1][:3] == ("load", "late", False) and _alive(pid)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not _alive(pid) and not reg.is_loaded("late")

    run(ws, scenario)
    late = [(e["event"], e.get("reason")) for e in AuditLog(ws.root / "data" / "audit.log").tail(50)
            if e["plugin"] == "late"]
    assert late == [("load", None), ("unload", "load aborted")]


def test_an_unchanged_plugin_loaded_before_is_checked_without_a_thread_and_a_changed_one_is_not(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plugind import fsio

    monkeypatch.setattr(fsio, "SETTLE_S", 0.0)  # files count as settled once read after a change
    ws.auto_load = False
    ws.add(echo("again"))

    async def scenario(reg: PluginRegistry) -> None:
        await reg.start()
        full: list[str] = []
        real = reg.loader.load

        def load(path: Path, *, expected_name: str | None = None) -> Any:
            full.append(str(expected_name))
            return real(path, expected_name=expected_name)

        monkeypatch.setattr(reg.loader, "load", load)
        for _ in range(2):  # extracted, then read back and found to match
            await reg.load_plugin("again")
            await reg.unload_plugin("again")
        assert full == ["again", "again"]
        loaded = await reg.load_plugin("again")
        assert full == ["again", "again"]  # by stats alone
        assert (await reg.hooks.execute("on_request", {"seen": []})).data == {"seen": ["again"]}
        await reg.unload_plugin("again")

        source = loaded.tree / "again.py"
        good = source.read_bytes()
        os.chmod(source, 0o644)
        source.write_bytes(good.replace(b"return data", b"return 666"))
        os.chmod(source, 0o444)
        loaded = await reg.load_plugin("again")
        assert full == ["again", "again", "again"]  # changed: the full check, which re-extracts
        assert source.read_bytes() == good
        assert (await reg.hooks.execute("on_request", {"seen": []})).data == {"seen": ["again"]}

    run(ws, scenario)
