"""Zero-downtime upgrade of a loaded plugin: start the new version next to the old, switch, drain.

The steps, for `PluginRegistry.upgrade_plugin(name, version)`:

1. choose the bundle: the named version, or else the highest version above the running one that
   passes the same verification as any load (signature, trust list, policy); versions that do not are
   skipped and said;
2. start it as a second instance (its own cgroup `NAME@N`, its own child) and wait for its hello,
   which the runtime sends once `on_load` has returned;
3. switch in one step of the event loop: the registry's record and the hook handlers point at the
   new instance; a call that had already picked the old one stays on it, every later call goes to
   the new one, so each call is answered by exactly one version;
4. drain: the old instance answers the calls it has in flight (each bounded by its deadline); a call
   that still reaches it afterwards is handed to the new one;
5. stop the old instance (`on_unload` runs in it), record the upgrade in the audit trail and pin the
   version in the state file so a restart brings the new version back.

A failure before step 3 stops the new instance and leaves the old one serving; the error says why.
Only one upgrade or unload of a plugin runs at a time: the others get PluginBusy (409).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plugind.errors import (
    AlreadyLoaded,
    BundleError,
    LoadError,
    NotLoaded,
    PluginBusy,
    PluginError,
    PluginNotFound,
)
from plugind.host.loader import LoadedBundle
from plugind.host.registry import (
    _BUNDLE_RE,
    LoadedPlugin,
    PluginRegistry,
    _version_key,
    validate_name,
)
from plugind.monitor import metrics

log = logging.getLogger("plugind.host.upgrade")

# Instance names of second instances, unique for the daemon's life (the cgroup leaf `NAME@N`).
_instances = itertools.count(1)


@dataclass
class UpgradeResult:
    """What an upgrade did."""

    name: str
    from_version: str
    to_version: str
    old_pid: int | None
    pid: int | None
    digest: str
    drained: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # version -> why it was not admitted

    @property
    def message(self) -> str:
        text = (f"upgraded {self.name} from {self.from_version} to {self.to_version} "
                f"(pid {self.old_pid} -> {self.pid}; {self.drained} call(s) in flight drained)")
        if self.skipped:
            text += "; skipped: " + ", ".join(f"{v} ({why})" for v, why in self.skipped.items())
        return text


def bundle_versions(directory: Path, name: str) -> dict[str, Path]:
    """Every bundle of plugin `name` in `directory`: version -> path (regular files only)."""
    found: dict[str, Path] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return found
    for entry in entries:
        match = _BUNDLE_RE.match(entry.name)
        if match and match.group(1) == name and entry.is_file(follow_symlinks=False):
            found[match.group(2)] = Path(entry.path)
    return found


def _check_manifest(bundle: LoadedBundle, name: str, version: str) -> None:
    vb = bundle.bundle
    if vb.name != name or str(vb.version) != version:
        raise BundleError(
            f"file name says {name} {version} but the manifest says {vb.name} {vb.version}",
            plugin=name,
        )


async def _choose(reg: PluginRegistry, current: LoadedPlugin, version: str | None,
                  skipped: dict[str, str]) -> LoadedBundle:
    """Verify and extract the bundle to upgrade to. Raises PluginNotFound, AlreadyLoaded (nothing
    newer is admitted), or the load's own errors (UntrustedPlugin, SignatureInvalid, ...)."""
    name = current.name
    directory = Path(reg.settings.plugins.directory)
    versions = await asyncio.to_thread(bundle_versions, directory, name)
    if version is not None:
        path = versions.get(version)
        if path is None:
            raise PluginNotFound(
                f"no bundle of {name} {version} in {directory} (have: "
                f"{', '.join(sorted(versions, key=_version_key)) or 'none'})", plugin=name)
        bundle = await asyncio.to_thread(reg.loader.load, path, expected_name=name)
        _check_manifest(bundle, name, version)
        return bundle
    newer = sorted((v for v in versions if _version_key(v) > _version_key(current.version)),
                   key=_version_key, reverse=True)
    for candidate in newer:
        try:
            bundle = await asyncio.to_thread(reg.loader.load, versions[candidate], expected_name=name)
            _check_manifest(bundle, name, candidate)
            return bundle
        except PluginError as exc:
            skipped[candidate] = str(exc).split("; ", 1)[0][:300]
            log.warning("upgrade of %s: version %s skipped: %s", name, candidate, exc,
                        extra={"plugin": name})
    why = f"; not admitted: {', '.join(f'{v} ({e})' for v, e in skipped.items())}" if skipped else ""
    raise AlreadyLoaded(
        f"{name} {current.version} is already the highest admitted version in {directory}{why}",
        plugin=name, reason="up_to_date")


async def upgrade(reg: PluginRegistry, name: str, version: str | None = None) -> UpgradeResult:
    """Upgrade the loaded plugin `name` (see the module docstring).

    Raises LoadError(reason="invalid_name"/"invalid_version"/"shutting_down"), NotLoaded,
    PluginBusy, PluginNotFound (no such version), AlreadyLoaded(reason="up_to_date"), and what a
    load raises for the new version (UntrustedPlugin, SignatureInvalid, BundleError,
    InitializationError, SandboxError); after any of these the old version still serves.
    """
    validate_name(name)
    if version is not None and not _valid_version(version):
        raise LoadError(f"invalid version {version[:80]!r}: a version like 1.2.0, never a path",
                        plugin=name, reason="invalid_version")
    if reg.shutting_down:
        raise LoadError(f"cannot upgrade {name!r}: plugind is shutting down", plugin=name,
                        reason="shutting_down")
    if name in reg._busy:
        raise PluginBusy(f"plugin {name!r} is being loaded, upgraded or unloaded; try again when "
                         "that has finished", plugin=name)
    current = reg._loaded.get(name)
    if current is None:
        raise NotLoaded(f"plugin {name!r} is not loaded: load it instead", plugin=name)
    reg._busy.add(name)
    try:
        return await _upgrade(reg, current, version)
    finally:
        reg._busy.discard(name)
        reg._publish_states()


async def _upgrade(reg: PluginRegistry, current: LoadedPlugin, version: str | None) -> UpgradeResult:
    name = current.name
    skipped: dict[str, str] = {}
    new_sup: Any = None
    try:
        bundle = await _choose(reg, current, version, skipped)
        vb = bundle.bundle
        new_sup = reg._factory(name, bundle.tree, vb.manifest, reg.settings, reg.launcher,
                               reg.context, reg._on_event)
        new_sup.instance = str(next(_instances))
        if hasattr(new_sup, "before_spawn"):  # verify-then-run, as for any load
            new_sup.before_spawn = reg._before_spawn(bundle)
        await new_sup.start()
        if reg.shutting_down:  # the old version is being stopped with the rest: do not swap
            raise LoadError(f"cannot upgrade {name!r}: plugind is shutting down", plugin=name,
                            reason="shutting_down")
    except PluginError as exc:
        if exc.plugin is None:
            exc.plugin = name
        if new_sup is not None:  # a child that failed its start is gone already: stop() tidies
            await asyncio.shield(new_sup.stop("upgrade failed"))
        reason = getattr(exc, "reason", None) or exc.code
        if reason != "up_to_date":
            metrics.load_failed(str(reason))
        await reg._audit("upgrade_failed", name, from_version=current.version,
                         to_version=version, reason=str(reason), error=str(exc))
        log.warning("upgrade of %s refused; %s %s keeps serving: %s", name, name, current.version,
                    exc, extra={"plugin": name})
        raise
    except BaseException:
        # Cancelled (shutdown) or a bug: never leave the new child behind; the old one serves on.
        if new_sup is not None:
            await asyncio.shield(new_sup.stop("upgrade aborted"))
        raise

    # The switch: no await between these lines, so no call sees half of it.
    old_sup: Any = current.supervisor  # a Supervisor: drain, successor, restart_policy
    level = str(getattr(vb.trust_level, "value", vb.trust_level))
    new = LoadedPlugin(name, str(vb.version), vb.digest, level, bundle.tree, new_sup)
    reg._loaded[name] = new  # same key: the plugin keeps its place in the load order
    reg.hooks.replace(name, dict(new_sup.hooks), new_sup)
    old_sup.restart_policy = "never"  # the old version must not come back if it dies draining
    old_sup.successor = new_sup
    reg._pins[name] = new.version
    reg._publish_states()
    _tell_listeners(reg, name, {"pid": new_sup.pid, "old_pid": old_sup.pid,
                                "from_version": current.version, "to_version": new.version})
    log.info("switched %s from %s (pid %s) to %s (pid %s); draining the old version", name,
             current.version, old_sup.pid, new.version, new_sup.pid, extra={"plugin": name})

    result = UpgradeResult(name, current.version, new.version, old_sup.pid, new_sup.pid, new.digest,
                           skipped=skipped)
    try:
        await reg.persist()
        result.drained = await old_sup.drain()
    finally:
        # Also when cancelled (shutdown): the old version is no longer the registry's to stop.
        await asyncio.shield(old_sup.stop(f"upgraded to {new.version}"))
    if current.tree != new.tree:  # the same bundle again shares its tree: keep it then
        try:
            await asyncio.to_thread(reg.loader.discard, current.tree)
        except OSError as exc:  # only disk space is at stake: say so, the upgrade stands
            log.warning("cannot remove the tree of %s %s: %s", name, current.version, exc,
                        extra={"plugin": name})
    await reg._audit("upgrade", name, from_version=result.from_version, to_version=result.to_version,
                     from_digest=current.digest, digest=new.digest, old_pid=result.old_pid,
                     pid=result.pid, drained=result.drained)
    log.info("%s", result.message, extra={"plugin": name})
    return result


def _tell_listeners(reg: PluginRegistry, name: str, detail: dict[str, Any]) -> None:
    # The registry's event listeners (the resource monitor) hear of the switch as kind "upgraded":
    # the plugin's process is another one from now on.
    for listener in reg.event_listeners:
        try:
            listener(name, "upgraded", detail)
        except Exception:  # a listener must not break an upgrade half-way through the switch
            log.exception("event listener failed on the upgrade of %s", name, extra={"plugin": name})


def _valid_version(version: str) -> bool:
    return bool(_BUNDLE_RE.match(f"x-{version}.plugin"))


__all__ = ["UpgradeResult", "bundle_versions", "upgrade"]
