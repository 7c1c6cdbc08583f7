"""PluginRegistry: the desired state, available vs loaded plugins, and every load/unload/scan.

Plugins are addressed by name only (`[a-z0-9][a-z0-9_-]{0,62}`) and looked up among the bundles of
the last scan of `plugins.directory`: a name from outside never becomes a path. Blocking work
(hashing, verifying, extracting) runs in threads so the event loop keeps answering.

`plugins.state_file` records the operator's intent: the plugins that *should* be loaded, written
atomically and restored at start, where it wins over `auto_load` (which only seeds it on the very
first start). Only the operator changes it: an explicit load adds a plugin once it loaded, an
explicit unload removes it, and so does the resource monitor's auto-unload, which carries out the
operator's own `[monitoring]` policy. A load that fails never changes it, whatever the cause (the
host's sandbox, cgroups or fork-server, the plugin's own init, a shutdown): the plugin stays wanted,
is reported by `failed_plugins()` (and `/ready`), and is tried again at the next start.

The file tells the truth or nothing (plugind/host/state.py): when it cannot be written, an explicit
load is rolled back (the plugin is stopped again and the caller told why), an unload stands and its
caller is warned (`state_problem`), and the write is tried again at every change and at shutdown;
when it cannot be read at start, nothing is loaded on its behalf, and the log, the audit trail and
`/ready` say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from plugind.config import PLUGIN_NAME_RE, Settings
from plugind.errors import (
    AlreadyLoaded,
    ConfigError,
    LoadError,
    NotLoaded,
    PluginBusy,
    PluginError,
    PluginNotFound,
    SecurityError,
)
from plugind.host.error_hooks import ErrorHooks
from plugind.host.hooks import HookRegistry, HookResult, HookTarget
from plugind.host.loader import LoadedBundle, PluginLoader
from plugind.host.state import StateWriter, keep_aside, read_state
from plugind.monitor import metrics
from plugind.monitor.resource import ResourceMonitor
from plugind.monitor.sampling import MonitoredPlugin

if TYPE_CHECKING:
    from plugind.host.upgrade import UpgradeResult

log = logging.getLogger("plugind.host.registry")

# NAME-VERSION.plugin; the version starts with a digit, so the last "-<digit>" splits them.
_BUNDLE_RE = re.compile(r"^([a-z0-9][a-z0-9_-]{0,62})-(\d[0-9A-Za-z.+-]{0,63})\.plugin$")
# Plugins a start restores at once (each still joins the loaded set in the intent's order).
RESTORE_CONCURRENCY = 8
# How long change listeners (STATUS=) may lag the change that calls them (they see every change).
CHANGE_COALESCE_S = 0.05


class SupervisorLike(HookTarget, Protocol):
    """The part of `plugind.host.supervisor.Supervisor` the registry uses."""

    state: str
    pid: int | None
    hooks: dict[str, int]
    restarts: int
    isolation: dict[str, str]

    async def start(self) -> None: ...

    async def stop(self, reason: str) -> None: ...

    def host_stopping(self) -> None: ...


SupervisorFactory = Callable[..., SupervisorLike]
EventCallback = Callable[[str, str, Any], None]


class AuditSink(Protocol):
    def append(self, event: str, /, plugin: str | None = None, **fields: Any) -> Any: ...


@dataclass
class AvailablePlugin:
    """A bundle found by the last scan. `error` says why it cannot load (tampered, malformed)."""

    name: str
    version: str
    path: Path
    digest: str | None = None
    trust_level: str = "untrusted"
    description: str = ""
    error: str | None = None


@dataclass
class LoadedPlugin:
    """A plugin with a running supervisor."""

    name: str
    version: str
    digest: str
    trust_level: str
    tree: Path
    supervisor: SupervisorLike


def validate_name(name: object) -> str:
    """`name` if it is a valid plugin name. Raises LoadError(reason="invalid_name") otherwise."""
    if not isinstance(name, str) or not PLUGIN_NAME_RE.match(name):
        shown = repr(name)[:80]
        raise LoadError(
            f"invalid plugin name {shown}: use 1-63 of a-z, 0-9, '_' and '-', starting with a "
            "letter or digit (a name, never a path)",
            reason="invalid_name",
        )
    return name


def _version_key(version: str) -> tuple[Any, ...]:
    core, _, pre = version.partition("-")
    parts = []
    for piece in core.split("+")[0].split("."):
        parts.append((0, int(piece), "") if piece.isdigit() else (1, 0, piece))
    # A release sorts after its pre-releases.
    return (tuple(parts), pre == "", pre)


class PluginRegistry:
    """Available and loaded plugins; load, unload, scan, restore and the start-up/shutdown hooks."""

    def __init__(
        self,
        settings: Settings,
        *,
        loader: PluginLoader,
        supervisor_factory: SupervisorFactory,
        hooks: HookRegistry | None = None,
        context: Any = None,
        launcher: Any = None,
        audit: AuditSink | None = None,
    ) -> None:
        self.settings = settings
        self.loader = loader
        self.hooks = hooks if hooks is not None else HookRegistry(settings)
        self.context = context
        self.launcher = launcher
        self.audit = audit
        self._factory = supervisor_factory
        self._available: dict[str, AvailablePlugin] = {}
        self._loaded: dict[str, LoadedPlugin] = {}
        self._busy: set[str] = set()
        # The operator's intent (the state file), in order; None until `start` has read it.
        self._wanted: list[str] | None = None
        self._failed: dict[str, str] = {}  # wanted but not loaded: name -> why its last load failed
        # Plugins the operator asked for whose bundle passed its checks and that are starting: the
        # state file lists them already (written while they start, see `load_plugin`), the
        # in-memory intent (`_wanted`) once they run. Insertion-ordered.
        self._starting: dict[str, None] = {}
        self._early: list[str] = []  # loaded through the API before `start` read the state file
        # Versions chosen by an upgrade (the state file's "versions"): a restart loads that version,
        # not the highest one in the directory. An unload or a plain load drops the pin.
        self._pins: dict[str, str] = {}
        self._scan_lock = asyncio.Lock()
        self._persist_lock = asyncio.Lock()
        # Group commit: snapshots of the intent taken so far, and (snapshot number, result) of the
        # last write that finished. A caller whose change a finished write's snapshot already holds
        # shares that write's result instead of writing again (see `persist`).
        self._snapshots = 0
        self._last_write: tuple[int, str | None] = (0, None)
        # Started: `/metrics` counts plugins by state at each scrape (`state_counts`), not each change.
        self._counted_at_render = False
        # Appends each change to the state file's journal (one record, one fdatasync), not all N.
        self._state = StateWriter(Path(settings.plugins.state_file))
        # Why the state file does not hold the intent (unreadable at start, or the last write
        # failed), or None; `_unsaved`: a write failed since the last one that succeeded.
        self.state_problem: str | None = None
        self._unsaved = False
        self.ready = False
        self._shutting_down = False
        # `health_counts` is cached until something it counts may have changed.
        self._health_gen = 0
        self._health: tuple[int, tuple[int, int, int]] | None = None
        # Also told of every supervisor event (name, kind, detail), e.g. the monitor of OOM kills.
        self.event_listeners: list[Callable[[str, str, Any], None]] = []
        # Called (no arguments) whenever the loaded, wanted or failed set may have changed.
        self.change_listeners: list[Callable[[], None]] = []
        self._notify_pending = False
        # The registry owns its monitor: it samples the loaded plugins, unloads through
        # `monitor_unload`, hears of OOM kills, and runs from `start` to `shutdown`.
        self.monitor = ResourceMonitor(settings, self.monitored_plugins, self.monitor_unload, audit=audit)
        self.event_listeners.append(self.monitor.on_plugin_event)
        # `on_error`, fired by the host for failed hook calls and crashed plugins.
        self.error_hooks = ErrorHooks(self.hooks, settings)
        self.hooks.on_failure = self.error_hooks.report
        self.event_listeners.append(self.error_hooks.on_plugin_event)

    # -- queries -------------------------------------------------------------------------------

    def plugin_count(self) -> int:
        """How many plugins are loaded."""
        return len(self._loaded)

    def health_counts(self) -> tuple[int, int, int]:
        """(loaded, total, failed) for `/health`: `plugin_count()`, `total_plugin_count()` and
        `len(failed_plugins())`, computed again only after a change (a load, unload, scan, event or
        intent change bumps `_health_gen`), so a probe costs O(1) with 1,000 plugins loaded."""
        cached = self._health
        if cached is not None and cached[0] == self._health_gen:
            return cached[1]
        counts = (self.plugin_count(), self.total_plugin_count(), len(self.failed_plugins()))
        self._health = (self._health_gen, counts)
        return counts

    def _changed_health(self) -> None:
        """Something `health_counts` counts may have changed: count again at the next probe."""
        self._health_gen += 1

    def total_plugin_count(self) -> int:
        """How many plugins are known (available from the last scan, or loaded)."""
        return len(set(self._available) | set(self._loaded))

    def get_available_plugins(self) -> list[AvailablePlugin]:
        """Every plugin of the last scan, by name."""
        return [self._available[n] for n in sorted(self._available)]

    def get_loaded_plugins(self) -> list[LoadedPlugin]:
        """Every loaded plugin, in load order."""
        return list(self._loaded.values())

    def get_plugin(self, name: str) -> LoadedPlugin | None:
        """The loaded plugin `name`, or None."""
        return self._loaded.get(name)

    def get_available(self, name: str) -> AvailablePlugin | None:
        """The scanned plugin `name`, or None."""
        return self._available.get(name)

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def monitored_plugins(self) -> list[MonitoredPlugin]:
        """The running plugins, as the resource monitor samples them (pid and cgroup).

        Also called from the monitor's on-demand checks in a worker thread: iterate over a copy.
        """
        out = []
        for p in list(self._loaded.values()):
            sup: Any = p.supervisor
            if sup.pid is not None and sup.state == "running":
                out.append(MonitoredPlugin(p.name, sup.pid, getattr(sup, "cgroup", None)))
        return out

    def state_of(self, name: str) -> str:
        """"running", "failed", ... for a loaded plugin ("upgrading" while an upgrade of it runs),
        "loading" while it loads, "load_failed" for a wanted plugin whose load failed, else
        "available"."""
        loaded = self._loaded.get(name)
        if loaded is not None:
            if name in self._busy and loaded.supervisor.state == "running":
                return "upgrading"  # an unload makes it "stopping" at once
            return str(loaded.supervisor.state)
        if name in self._busy:
            return "loading"
        return "load_failed" if name in self._failed else "available"

    def wanted_plugins(self) -> list[str]:
        """The operator's intent: every plugin that should be loaded (the state file), in order."""
        return list(self._wanted or ())

    def failed_plugins(self) -> dict[str, str]:
        """Wanted plugins that do not run, in intent order: name -> why (the error of their last
        load, or the supervisor's last error once it gave up restarting one)."""
        out: dict[str, str] = {}
        for name in self._wanted or ():
            loaded = self._loaded.get(name)
            if loaded is None and name in self._failed:
                out[name] = self._failed[name]
            elif loaded is not None and loaded.supervisor.state == "failed":
                out[name] = str(getattr(loaded.supervisor, "last_error", None) or "failed")
        return out

    def load_summary(self) -> str:
        """One line for logs and `systemctl status`: "loaded 3 of 4 configured plugins; failed: a (...)"."""
        wanted = self._wanted or []
        failed = self.failed_plugins()
        running = sum(1 for n in wanted if n in self._loaded and n not in failed)
        text = f"loaded {running} of {len(wanted)} configured plugins"
        if failed:
            text += "; failed: " + ", ".join(f"{n} ({why})" for n, why in failed.items())
        return text

    # -- scanning ------------------------------------------------------------------------------

    async def scan_directory(self) -> list[AvailablePlugin]:
        """Scan `plugins.directory` (in a thread) and replace the available set. Returns it."""
        async with self._scan_lock:
            found = await asyncio.to_thread(self._scan_blocking)
            self._available = found
        self._publish_states()
        return self.get_available_plugins()

    async def rescan(self) -> dict[str, list[str]]:
        """Scan again; returns {"added": [...], "removed": [...], "available": [...]}."""
        before = set(self._available)
        await self.scan_directory()
        after = set(self._available)
        return {
            "added": sorted(after - before),
            "removed": sorted(before - after),
            "available": sorted(after),
        }

    def _scan_blocking(self) -> dict[str, AvailablePlugin]:
        directory = Path(self.settings.plugins.directory)
        try:
            self.loader.refresh_trust()
        except SecurityError as exc:
            # Keep the previous trust list; every load re-reads it and fails closed meanwhile.
            log.error("cannot re-read the trust list: %s", exc)
        candidates: dict[str, list[tuple[str, Path]]] = {}
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except FileNotFoundError:
            log.warning("plugin directory %s does not exist", directory)
            return {}
        except OSError as exc:  # a file, unreadable: the operator's to fix, said plainly
            raise ConfigError(f"plugins.directory {directory}: cannot list it: {exc.strerror}",
                              key="plugins.directory") from None
        for entry in entries:
            match = _BUNDLE_RE.match(entry.name)
            if match is None or not entry.is_file(follow_symlinks=False):
                continue
            candidates.setdefault(match.group(1), []).append((match.group(2), Path(entry.path)))
        found: dict[str, AvailablePlugin] = {}
        for name, versions in candidates.items():
            version, path = max(versions, key=lambda v: _version_key(v[0]))
            found[name] = self._describe(name, version, path)
        return found

    def _describe(self, name: str, version: str, path: Path) -> AvailablePlugin:
        try:
            vb = self.loader.verify(path)
        except (PluginError, OSError) as exc:
            # Tampered, malformed, unreadable: listed (so the operator sees why) but never loadable.
            return AvailablePlugin(name, version, path, trust_level="invalid", error=str(exc))
        if vb.name != name or str(vb.version) != version:
            return AvailablePlugin(
                name,
                version,
                path,
                digest=vb.digest,
                trust_level="invalid",
                error=f"file name says {name} {version} but the manifest says {vb.name} {vb.version}",
            )
        level = getattr(vb.trust_level, "value", vb.trust_level)
        description = getattr(vb.manifest, "description", "") or ""
        return AvailablePlugin(name, version, path, vb.digest, str(level), description)

    # -- loading -------------------------------------------------------------------------------

    async def load_plugin(self, name: str) -> LoadedPlugin:
        """Load the scanned plugin `name`: verify, policy, extract, spawn, wait for hello.

        Raises LoadError(reason="invalid_name" or "shutting_down"), PluginNotFound, AlreadyLoaded,
        UntrustedPlugin,
        SignatureInvalid / BundleError (tampered), InitializationError, SandboxError.
        """
        if name not in self._loaded:
            self._pins.pop(name, None)  # the operator's plain load: the highest version, unpinned
        # The state file is written while the plugin starts, not after: once the bundle has passed
        # its checks, the name joins the intent as "starting" and a write of it begins next to the
        # spawn (`intend`). A start that fails takes it out and writes the file again before the
        # error is answered; a crash in between leaves it listed, and the next start loads it (or
        # reports why it could not) as for any wanted plugin. A 200 still means it is on disk.
        # The audit entry (an fsync) is written once it runs, next to the end of that write; the
        # reply waits for both.
        audits: list[asyncio.Future[None]] = []
        intent: list[asyncio.Future[str | None]] = []

        def intend() -> None:
            if self._wanted is not None and name not in self._wanted:
                self._starting[name] = None
                intent.append(asyncio.ensure_future(self.persist()))

        try:
            try:
                loaded = await self._load(name, explicit=True, audits=audits, intend=intend)
            except BaseException:
                if intent:
                    # Written (or being written) with the name: write it again without, before the
                    # error is answered. Shielded: a cancelled load still takes its name out.
                    self._starting.pop(name, None)
                    await asyncio.shield(self._withdraw(intent[0]))
                raise
            self._starting.pop(name, None)
            why = await intent[0] if intent else await self.persist()
        finally:
            if audits:
                await asyncio.gather(*audits, return_exceptions=True)
        if why is not None and name in (self._wanted or ()):
            # Running but not recorded: a restart would not bring it back. Undo it, so the answer,
            # the running set and the file agree. Unwanted at once, before the stop awaits: the
            # next write (another caller's, maybe already waiting) must not record it.
            self._unwant(name)
            with contextlib.suppress(NotLoaded):  # unloaded meanwhile by someone else: as good
                await self._unload(name, "rolled back: the state file could not be written", forget=True)
            raise LoadError(
                f"plugin {name!r} loaded, but {why}; the load was rolled back and it is not running "
                "(free space or fix the file system, then load it again)",
                plugin=name,
                reason="state_not_saved",
            )
        # Its hook series are made right after this returns (the reply is on its way, and the
        # loop idle until the caller's first call comes), not at that first call.
        asyncio.get_running_loop().call_soon(self._bind_series, loaded)
        return loaded

    async def _withdraw(self, written: asyncio.Future[str | None]) -> None:
        # A failed start's name is out of `_starting`: once the write that may list it has ended,
        # write the intent again (a snapshot taken now does not list it).
        with contextlib.suppress(Exception):
            await written
        await self.persist()

    async def load_plugin_by_name(self, name: str) -> LoadedPlugin:
        """Same as `load_plugin` (the integration guide's name for it)."""
        return await self.load_plugin(name)

    async def _load(self, name: str, *, explicit: bool, at_start: bool = False,
                    audits: list[asyncio.Future[None]] | None = None,
                    slot: asyncio.Semaphore | None = None,
                    turn: Callable[[], Awaitable[None]] | None = None,
                    intend: Callable[[], None] | None = None) -> LoadedPlugin:
        # explicit: the operator asked (API, CLI, library), so a success makes the plugin wanted.
        # at_start: the caller logs the failure itself, as one line.
        # slot: held while the bundle is loaded and the plugin started (a bound on concurrent
        # loads); turn: awaited after that, before the plugin joins the loaded set and the hooks.
        # intend: called once the bundle passed its checks, right before the spawn.
        try:
            validate_name(name)
        except LoadError as exc:
            await self._refused(None, exc, requested=repr(name)[:80])
            raise
        if self.shutting_down:
            raise LoadError(
                f"cannot load {name!r}: plugind is shutting down", plugin=name, reason="shutting_down"
            )
        if name in self._loaded or name in self._busy:
            raise AlreadyLoaded(f"plugin {name!r} is already loaded", plugin=name)
        available = self._available.get(name)
        if available is None:
            err = PluginNotFound(
                f"unknown plugin {name!r}: no bundle for it in {self.settings.plugins.directory} "
                "(add one, then rescan)",
                plugin=name,
            )
            await self._refused(name, err, quiet=at_start)
            raise err
        self._busy.add(name)
        self._publish_states()
        sup: SupervisorLike | None = None
        entry: asyncio.Future[None] | None = None  # the `load` audit entry's write, once begun
        held: asyncio.Semaphore | None = None
        try:
            try:
                if slot is not None:
                    await slot.acquire()
                    held = slot
                path = available.path
                pinned = self._pins.get(name)
                if pinned is not None and pinned != available.version:
                    path = self._pinned_bundle(name, pinned)
                # An unchanged plugin loaded before is checked here, by stats (no thread hops);
                # anything else (a first load, a changed file, a refusal) in a worker thread.
                bundle = self.loader.load_kept(path, expected_name=name)
                if bundle is None:
                    bundle = await asyncio.to_thread(self.loader.load, path, expected_name=name)
                vb = bundle.bundle
                sup = self._factory(
                    name,
                    bundle.tree,
                    vb.manifest,
                    self.settings,
                    self.launcher,
                    self.context,
                    self._on_event,
                )
                if hasattr(sup, "before_spawn"):  # verify-then-run on every start, restarts included
                    sup.before_spawn = self._before_spawn(bundle)
                if hasattr(sup, "on_hello"):
                    # The `load` entry is begun at the hello (the plugin runs: its import and
                    # on_load are done), so its fsync runs beside the rest of the start.
                    told: Any = sup
                    what = {"version": str(vb.version), "digest": vb.digest}

                    def hello(pid: int) -> None:
                        nonlocal entry
                        told.on_hello = None  # this start's only: a restart audits itself
                        entry = self._audit_begin("load", name, pid=pid, **what)

                    told.on_hello = hello
                if intend is not None:
                    intend()
                await sup.start()
                if held is not None:  # started: the slot goes to the next load
                    held.release()
                    held = None
                if turn is not None:
                    await turn()
            except PluginError as exc:
                if exc.plugin is None:
                    exc.plugin = name
                if entry is not None and sup is not None:  # said hello, then failed: the trail says so
                    await asyncio.shield(self._aborted(name, sup, entry))
                await self._refused(name, exc, quiet=at_start)
                raise
            except BaseException:
                # Cancelled (shutdown during start-up) or a bug: never leave a child behind.
                if entry is not None and sup is not None:
                    await asyncio.shield(self._aborted(name, sup, entry))
                elif sup is not None:
                    await asyncio.shield(sup.stop("load aborted"))
                raise
            level = str(getattr(vb.trust_level, "value", vb.trust_level))
            loaded = LoadedPlugin(name, str(vb.version), vb.digest, level, bundle.tree, sup)
            self._loaded[name] = loaded
            metrics.plugin_back(name)  # (before its hooks can be called)
            self.hooks.register(name, dict(sup.hooks), sup)
            self._failed.pop(name, None)
            if explicit and self._wanted is not None and name not in self._wanted:
                self._wanted.append(name)
            elif explicit and self._wanted is None:
                self._early.append(name)  # loaded before `start` read the state file
        finally:
            if held is not None:
                held.release()
            self._busy.discard(name)
            self._publish_states()
        if entry is None:  # a supervisor that does not say when its plugin said hello
            entry = self._audit_begin("load", name, version=loaded.version, digest=loaded.digest,
                                      pid=sup.pid)
        if audits is None:
            await entry
        else:  # awaited by the caller, next to its state file write
            audits.append(entry)
        log.info("loaded %s %s (pid %s)", name, loaded.version, sup.pid, extra={"plugin": name})
        return loaded

    def _bind_series(self, loaded: LoadedPlugin) -> None:
        # Only while it is still the loaded instance: series made for a plugin unloaded meanwhile
        # would outlive its unload (metrics.forget_plugin has run).
        if self._loaded.get(loaded.name) is loaded:
            metrics.bind_hooks(loaded.name, loaded.supervisor.hooks)

    def _pinned_bundle(self, name: str, version: str) -> Path:
        # The version an upgrade chose, by its file name in the plugin directory (never a path
        # from outside). Gone: fail, rather than quietly run another version than the operator's.
        path = Path(self.settings.plugins.directory) / f"{name}-{version}.plugin"
        if not _BUNDLE_RE.match(path.name) or not path.is_file() or path.is_symlink():
            raise PluginNotFound(
                f"plugin {name!r} was upgraded to {version}, but {path.name} is gone from "
                f"{self.settings.plugins.directory}: put it back, or unload and load {name} to run "
                "the highest version",
                plugin=name,
            )
        return path

    async def upgrade_plugin(self, name: str, version: str | None = None) -> UpgradeResult:
        """Replace the loaded plugin `name` by another version without dropping a call: see
        `plugind.host.upgrade`. Returns its UpgradeResult; raises as `upgrade.upgrade` says."""
        from plugind.host.upgrade import upgrade  # it builds on this module

        return await upgrade(self, name, version)

    def _before_spawn(self, bundle: LoadedBundle) -> Callable[[bool], Awaitable[None]]:
        # Verify-then-run: before a restart, the trust list, the bundle file, the policy and the tree
        # (re-extracted if changed; PluginLoader.ensure). A first start needs none of it again:
        # loader.load has just extracted the tree from verified bytes or checked it byte for byte,
        # and hashing every file a second time would only slow the spawn.
        async def check(restart: bool) -> None:
            if restart:
                await asyncio.to_thread(self.loader.ensure, bundle, recheck=True)

        return check

    async def _refused(
        self, name: str | None, exc: PluginError, *, quiet: bool = False, **extra: Any
    ) -> None:
        reason = getattr(exc, "reason", None) or exc.code
        metrics.load_failed(str(reason))
        if name is not None and name in (self._wanted or ()):
            self._failed[name] = failure_reason(exc)  # still wanted: reported, retried at next start
            self._changed_health()
        await self._audit("refused", name, reason=str(reason), error=str(exc), **extra)
        if not quiet:
            log.warning("load of %s refused: %s", name, exc, extra={"plugin": name})

    async def unload_plugin(self, name: str, reason: str = "requested") -> bool:
        """Stop the loaded plugin `name` (on_unload, SIGTERM, SIGKILL), forget its hooks, and stop
        wanting it: it is no longer loaded at start.

        A wanted plugin that is not running because its load failed is only forgotten. Returns True
        when a running plugin was stopped, False when it was only forgotten. If the state file could
        not be written, the unload stands and `state_problem` says why (a restart would load it
        again until a later write succeeds).
        Raises LoadError(reason="invalid_name"), NotLoaded (neither loaded nor wanted).
        """
        validate_name(name)
        if name not in self._loaded and name not in self._busy and name in (self._wanted or ()):
            self._unwant(name)
            self._publish_states()
            await self._audit("unload", name, reason=reason, running=False)
            log.info("%s is no longer wanted (%s; it was not running)", name, reason, extra={"plugin": name})
            await self.persist()
            return False
        await self._unload(name, reason, forget=True)
        await self.persist()
        return True

    def _unwant(self, name: str) -> None:
        self._changed_health()
        if self._wanted is not None and name in self._wanted:
            self._wanted.remove(name)
        self._failed.pop(name, None)
        self._pins.pop(name, None)

    async def _unload(self, name: str, reason: str, *, forget: bool) -> None:
        validate_name(name)
        loaded = self._loaded.get(name)
        if loaded is not None and name in self._busy:
            raise PluginBusy(f"plugin {name!r} is being upgraded or unloaded; try again when that "
                             "has finished", plugin=name)
        if loaded is None or name in self._busy:
            raise NotLoaded(f"plugin {name!r} is not loaded", plugin=name)
        self._busy.add(name)
        self.hooks.unregister(name)
        try:
            await loaded.supervisor.stop(reason)
        finally:
            self._loaded.pop(name, None)
            self._busy.discard(name)
            if forget:
                self._unwant(name)
                if self.context is not None:  # what the daemon kept on its behalf goes with it
                    self.context.release(name)
            metrics.forget_plugin(name)
            self._publish_states()
        await self._audit("unload", name, reason=reason)
        log.info("unloaded %s (%s)", name, reason, extra={"plugin": name})

    async def unload_all(self, reason: str = "shutdown", *, persist: bool = False) -> None:
        """Stop every loaded plugin concurrently. They stay wanted (the state file is kept) unless
        `persist`, which makes this the operator's unload of every plugin (the state file empties)."""
        names = list(self._loaded)
        results = await asyncio.gather(
            *(self._unload(n, reason, forget=persist) for n in names), return_exceptions=True
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                log.error("unloading %s failed: %s", name, result, extra={"plugin": name})
        if persist:
            for name in list(self._wanted or ()):
                self._unwant(name)
            self._publish_states()
            await self.persist()

    async def monitor_unload(self, name: str, reason: str) -> None:
        """The resource monitor's unload callback: unload and record why (never raises NotLoaded).

        The plugin is no longer wanted afterwards: the monitor carries out the operator's own
        `[monitoring]` policy (limits, `auto_unmount`), and a restart must not quietly bring back a
        plugin that policy removed. The operator loads it again once it is fixed.
        """
        if name not in self._loaded:
            return
        await self.unload_plugin(name, reason)

    # -- start-up and shutdown -----------------------------------------------------------------

    async def start(self) -> list[str]:
        """Scan, load the wanted set (the state file, or on a first start what `auto_load` admits),
        fire `on_startup`. Returns the loaded names; `failed_plugins()` says what did not load.

        Starts `monitor` when `[monitoring] enabled` (needs a running event loop)."""
        if self.settings.monitoring.enabled and not self.monitor.running:
            self.monitor.start_resource_monitor()
        metrics.set_state_source(self.state_counts)
        self._counted_at_render = True
        if self.settings.plugins.scan_on_start:
            await self.scan_directory()
        wanted = await self._read_intent()
        restoring = wanted is not None
        if wanted is None:
            wanted = [
                p.name
                for p in self.get_available_plugins()
                if self.settings.plugins.auto_load and self.loader.admits(p.trust_level)
            ]
        early = [n for n in self._early if n not in wanted]  # loaded through the API meanwhile
        self._wanted = [*wanted, *early]
        self._early.clear()
        await self._restore([n for n in wanted if n not in self._loaded])
        if not restoring or early:
            # First start: from now on the state file, not auto_load, decides, whatever loaded. A
            # restored intent is not rewritten: failed loads leave it as it is.
            await self.persist()
        await self.fire("on_startup", {"host": "plugind"})
        self.ready = True
        self._notify_changed()
        return list(self._loaded)

    async def _restore(self, names: list[str]) -> None:
        """Load `names` at start, up to RESTORE_CONCURRENCY at once, but each one joins the loaded set
        and the hooks (load order: equal priorities run in it) in the order of `names`, the
        intent's; a failed load is logged and reported as at any start, and never holds up the
        others."""
        slots = asyncio.Semaphore(RESTORE_CONCURRENCY)
        done = [asyncio.Event() for _ in names]

        async def one(i: int, name: str) -> None:
            async def turn() -> None:  # after its start, before it is registered
                if i:
                    await done[i - 1].wait()

            try:
                await self._load(name, explicit=False, at_start=True, slot=slots, turn=turn)
            except PluginError as exc:
                log.error("could not load %s at start: %s", name, exc, extra={"plugin": name})
                await turn()  # the next one waits for this one, and so for every one before it
            finally:
                done[i].set()  # also when cancelled (a shutdown): the others are cancelled too

        # Every load runs to its end before a bug in one (not a PluginError) is raised, as the
        # first of them: none is left loading behind the caller's back.
        results = await asyncio.gather(*(one(i, n) for i, n in enumerate(names)), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    @property
    def shutting_down(self) -> bool:
        """The daemon is stopping: loads are refused, and a plugin that exits from now on (the
        unit's SIGTERM may reach every process of its group) is not restarted or reported as a
        crash."""
        return self._shutting_down

    @shutting_down.setter
    def shutting_down(self, value: bool) -> None:
        self._shutting_down = value
        if value:
            for p in self._loaded.values():
                p.supervisor.host_stopping()

    async def shutdown(self) -> None:
        """Not ready any more; stop the monitor; fire `on_shutdown`; stop every plugin (the persisted
        set is kept)."""
        self.ready = False
        self.shutting_down = True
        await self.monitor.stop()
        if self._counted_at_render:
            self._counted_at_render = False
            metrics.set_state_source(None)
        if self._loaded:
            await self.fire("on_shutdown", {"host": "plugind"})
        await self.error_hooks.close()  # no on_error for plugins being stopped
        await self.unload_all("shutdown", persist=False)
        if self._unsaved:  # a last try, so a restart finds what the operator last asked for
            await self.persist()
        async with self._persist_lock:  # the base alone then says everything
            try:
                await asyncio.to_thread(self._state.fold)
            except OSError as exc:  # the journal still holds it all
                log.warning("state file %s: could not fold its journal in (%s)", self._state.path,
                            exc.strerror or exc)
        self._notify_changed()

    async def fire(self, hook: str, data: Any) -> HookResult:
        """Run a lifecycle hook with the `all` policy; failures are logged, never raised."""
        result = await self.hooks.execute_all(hook, data)
        for outcome in result.results:
            if not outcome.ok:
                log.warning(
                    "%s of %s failed: %s", hook, outcome.plugin, outcome.error,
                    extra={"plugin": outcome.plugin},
                )
        return result

    # -- events, persistence, metrics ----------------------------------------------------------

    def _on_event(self, name: str, kind: str, detail: Any = None) -> None:
        # Called by supervisors: crashes, restarts, protocol violations, OOM kills, circuit open.
        fields = dict(detail) if isinstance(detail, dict) else {"detail": detail}
        # Kinds: crashed, oom_killed, protocol_violation, hung, circuit_open, restarting, recovered.
        if kind == "restarting":
            metrics.plugin_restarted(name)
        event = "restart" if kind in ("restarting", "recovered") else "crash"
        fields.pop("kind", None)
        if kind != "budget_exceeded":  # a violation: the monitor (a listener) logs and audits it
            self._audit_soon(event, name, kind=kind, **fields)
            log.warning("plugin %s: %s %s", name, kind, detail or "", extra={"plugin": name})
        for listener in self.event_listeners:
            try:
                listener(name, kind, detail)
            except Exception:  # a listener must not break the supervisor's crash handling
                log.exception("event listener failed on %s of %s", kind, name, extra={"plugin": name})
        self._publish_states()
        # A supervisor may change its state just after telling (a crash with no restart ends
        # "failed"): count again once it has.
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().call_soon(self._changed_health)

    async def _audit(self, event: str, plugin: str | None, **fields: Any) -> None:
        # The audit log fsyncs every line: off the event loop.
        await self._audit_begin(event, plugin, **fields)

    def _audit_begin(self, event: str, plugin: str | None, **fields: Any) -> asyncio.Future[None]:
        # The entry's write, handed to a worker thread now (a coroutine would start it only at the
        # caller's next await): await the future for it to be on disk.
        loop = asyncio.get_running_loop()
        if self.audit is None:
            done: asyncio.Future[None] = loop.create_future()
            done.set_result(None)
            return done
        return loop.run_in_executor(None, self._audit_blocking, event, plugin, fields)

    async def _aborted(self, name: str, sup: SupervisorLike, entry: asyncio.Future[None]) -> None:
        # A start stopped after the plugin said hello (its `load` entry begun): the child stops, and
        # an `unload` entry follows the `load` one.
        await sup.stop("load aborted")
        await entry
        await self._audit("unload", name, reason="load aborted")

    def _audit_soon(self, event: str, plugin: str | None, **fields: Any) -> None:
        if self.audit is None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._audit_blocking(event, plugin, fields)
            return
        self._audit_begin(event, plugin, **fields)

    def _audit_blocking(self, event: str, plugin: str | None, fields: dict[str, Any]) -> None:
        assert self.audit is not None
        try:
            self.audit.append(event, plugin=plugin, **fields)
        except Exception:  # the audit trail failing must not take a load or unload down with it
            log.exception("audit log write failed for %s", event)

    def _publish_states(self) -> None:
        # Twice per load and unload. Once started, /metrics counts at each scrape (state_counts);
        # counting here, over every plugin, cost ~1 ms a change at 1,000 (cache misses, 3 objects
        # per plugin).
        if not self._counted_at_render:
            metrics.set_plugin_states(self.state_counts())
        self._notify_changed()

    def state_counts(self) -> dict[str, int]:
        """Plugins by supervisor state, those being loaded as `starting`. Only reads: safe from the
        thread that renders /metrics (the lists are copied in one step under the GIL)."""
        loaded = list(self._loaded.values())
        busy = list(self._busy)
        counts = Counter([p.supervisor.state for p in loaded])
        names = {p.name for p in loaded}
        counts["starting"] += sum(1 for n in busy if n not in names)
        return {str(state): n for state, n in counts.items()}

    def _notify_changed(self) -> None:
        # The listeners (sd_notify STATUS=: an O(N) summary and a new socket each, at 1,000
        # plugins) run at most once per CHANGE_COALESCE_S, after the changes made meanwhile: a load
        # changes things twice, and loads come 50 a second.
        self._changed_health()
        if self._notify_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._call_change_listeners()
            return
        self._notify_pending = True
        loop.call_later(CHANGE_COALESCE_S, self._call_change_listeners)

    def _call_change_listeners(self) -> None:
        self._notify_pending = False
        for listener in self.change_listeners:
            try:
                listener()
            except Exception:  # a listener (sd_notify STATUS=) must not break a load or unload
                log.exception("change listener failed")

    async def _read_intent(self) -> list[str] | None:
        """The state file's names; None when there is none (a first start). An unreadable file gives
        an empty intent, loudly: nothing may load on its behalf, least of all what was unloaded."""
        path = Path(self.settings.plugins.state_file)
        found = await asyncio.to_thread(read_state, path)
        if found.problem is None:
            if found.note is not None:
                log.warning("%s", found.note)
            self._pins = dict(found.versions)
            return found.names
        aside = await asyncio.to_thread(keep_aside, path)
        kept = f" (a copy is kept as {aside})" if aside else ""
        self.state_problem = (
            f"{found.problem}{kept}: no plugin was loaded on its behalf; load the ones you want "
            "through the API, which writes a new state file"
        )
        log.error("%s", self.state_problem)
        await self._audit("state", None, problem=found.problem, action="loaded nothing",
                          copy=str(aside) if aside else None)
        return []

    async def persist(self) -> str | None:
        """Write the wanted set to `plugins.state_file` atomically (serialised: last call wins).

        Returns None when it was written (or there is nothing to write yet), else why it could not
        be: that is logged, audited and kept in `state_problem` (`/ready` shows it); never raises.
        A no-op until `start` has read the file: writing earlier would replace the intent unread.

        Group commit: the caller has changed the intent in memory before calling. Writes run one at
        a time; a caller that waited while another write ran shares the result of the next write
        whose snapshot was taken after it called (that snapshot holds its change), so N concurrent
        loads cost about two writes and fsyncs, not N. Each of them still gets the result of a write
        that holds its own change: None only once that is on disk, else why not (and a load then
        rolls itself back).
        """
        called_after = self._snapshots  # a snapshot numbered higher than this holds our change
        async with self._persist_lock:
            if self._wanted is None:
                return None
            done, result = self._last_write
            if done > called_after:
                return result  # written (or failed) together with the change of another caller
            self._snapshots += 1
            snapshot = self._snapshots
            result = await self._write_intent()
            self._last_write = (snapshot, result)
            return result

    async def _write_intent(self) -> str | None:
        # `persist`'s write, under its lock: None once written, else why not (logged and audited).
        if self._wanted is None:
            return None
        path = Path(self.settings.plugins.state_file)
        names = list(self._wanted)
        names += [n for n in self._starting if n not in names]
        pins = {n: v for n, v in self._pins.items() if n in names}
        try:
            await asyncio.to_thread(self._state.write, names, pins)
        except OSError as exc:
            why = f"the state file {path} could not be written ({exc.strerror or exc})"
            first = not self._unsaved
            self._unsaved = True
            self.state_problem = why
            log.error("%s; plugind keeps the intent in memory and writes it again at the next "
                      "change and at shutdown", why)
            if first:
                await self._audit("state", None, problem=why, action="not saved", loaded=names)
            self._notify_changed()
            return why
        if self.state_problem is not None:
            log.info("state file %s written again: %s", path, names)
            await self._audit("state", None, action="saved", loaded=names)
            self.state_problem = None
            self._notify_changed()
        self._unsaved = False
        return None


def failure_reason(exc: PluginError) -> str:
    """A short why for summaries ("sandbox step 'filesystem': setns(...): EPERM ...; lacks CAP_X").

    The full message (with its advice) stays in the log line of the failure and the audit trail.
    """
    step = getattr(exc, "step", None)
    detail = getattr(exc, "detail", None)
    if step and detail:
        text = f"sandbox step {step!r}: {detail}"
        lacking = getattr(exc, "missing_caps", None)
        if lacking:
            text += f"; plugind lacks {', '.join(lacking)}"
        return text
    what = str(exc).split("; ", 1)[0]  # what failed; the advice after it is in the full message
    return what if len(what) <= 300 else what[:297] + "..."


__all__ = [
    "AvailablePlugin",
    "LoadedPlugin",
    "PluginRegistry",
    "SupervisorLike",
    "failure_reason",
    "validate_name",
]
