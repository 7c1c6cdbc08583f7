"""The plugin manifest, `plugin.toml`: name, version, entrypoint, api, description, requires."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from plugind.errors import BundleError
from plugind.trust.version import PluginVersion

MANIFEST_NAME = "plugin.toml"
MAX_MANIFEST_BYTES = 64 * 1024
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_MODULE_ENTRY = re.compile(rf"({_IDENT}(?:\.{_IDENT})*):({_IDENT})")
_EXEC_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(?:/[A-Za-z0-9_][A-Za-z0-9._-]*)*")
_PLUGIN_KEYS = {"name", "version", "entrypoint", "api", "description", "requires"}
_REQUIRES_KEYS = {"network", "memory_mb"}


@dataclass(frozen=True)
class Requires:
    """What a plugin asks for; the operator's config decides what it gets."""

    network: tuple[str, ...] = ()
    memory_mb: int | None = None


@dataclass(frozen=True)
class Manifest:
    """A validated `plugin.toml`."""

    name: str
    version: str
    entrypoint: str
    api: int
    description: str = ""
    requires: Requires = field(default_factory=Requires)

    @property
    def plugin_version(self) -> PluginVersion:
        """The version, parsed."""
        return PluginVersion.parse(self.version)

    @property
    def is_exec(self) -> bool:
        """True for `exec:path` entrypoints (any executable speaking the wire protocol)."""
        return self.entrypoint.startswith("exec:")

    @property
    def bundle_filename(self) -> str:
        """`NAME-VERSION.plugin`, the file name `plugind pack` writes."""
        return f"{self.name}-{self.version}.plugin"

    def entrypoint_files(self) -> tuple[str, ...]:
        """Bundle paths of which one must exist for the entrypoint to be loadable."""
        if self.is_exec:
            return (self.entrypoint[len("exec:") :],)
        module = self.entrypoint.split(":", 1)[0].replace(".", "/")
        return (f"{module}.py", f"{module}/__init__.py")

    @classmethod
    def from_toml(cls, data: bytes, *, bundle: str | None = None) -> Manifest:
        """Parse and validate plugin.toml bytes. Raises BundleError naming the offending key."""

        def bad(msg: str) -> BundleError:
            return BundleError(f"invalid {MANIFEST_NAME}: {msg}", bundle=bundle, entry=MANIFEST_NAME)

        if len(data) > MAX_MANIFEST_BYTES:
            raise bad(f"larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            doc = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise bad(f"not valid TOML: {exc}") from None
        except RecursionError:  # deeply nested arrays or tables from an untrusted bundle
            raise bad("not valid TOML: nested too deeply") from None
        table = doc.get("plugin")
        if set(doc) != {"plugin"} or not isinstance(table, dict):
            raise bad("expected exactly one [plugin] table")
        unknown = sorted(set(table) - _PLUGIN_KEYS)
        if unknown:
            raise bad(f"plugin.{unknown[0]}: unknown key")
        return cls(
            name=_name(table, bad),
            version=_version(table, bad),
            entrypoint=_entrypoint(table, bad),
            api=_api(table, bad),
            description=_description(table, bad),
            requires=_requires(table.get("requires", {}), bad),
        )


def _name(table: dict[str, Any], bad: Any) -> str:
    name = table.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise bad(f"plugin.name: {str(name)[:80]!r} must match [a-z0-9][a-z0-9_-]{{0,62}}")
    return name


def _version(table: dict[str, Any], bad: Any) -> str:
    version = table.get("version")
    try:
        PluginVersion.parse(version)  # type: ignore[arg-type]
    except ValueError as exc:
        raise bad(f"plugin.version: {exc}") from None
    assert isinstance(version, str)
    return version


def _entrypoint(table: dict[str, Any], bad: Any) -> str:
    entry = table.get("entrypoint")
    if not isinstance(entry, str):
        raise bad("plugin.entrypoint: missing; use 'module:attribute' or 'exec:relative/path'")
    if entry.startswith("exec:"):
        path = entry[len("exec:") :]
        if not _EXEC_PATH.fullmatch(path) or ".." in path.split("/"):
            raise bad(f"plugin.entrypoint: {entry[:80]!r}: exec path must be relative, inside the bundle")
    elif not _MODULE_ENTRY.fullmatch(entry):
        raise bad(f"plugin.entrypoint: {entry[:80]!r}: use 'module:attribute' or 'exec:relative/path'")
    return entry


def _api(table: dict[str, Any], bad: Any) -> int:
    api = table.get("api")
    if isinstance(api, bool) or not isinstance(api, int) or not 1 <= api <= 1000:
        raise bad("plugin.api: must be a positive integer (the SDK/wire protocol major version)")
    return api


def _description(table: dict[str, Any], bad: Any) -> str:
    description = table.get("description", "")
    if not isinstance(description, str) or len(description) > 1000:
        raise bad("plugin.description: must be a string of at most 1000 characters")
    return description


def _requires(requires: Any, bad: Any) -> Requires:
    if not isinstance(requires, dict):
        raise bad("plugin.requires: must be a table")
    unknown = sorted(set(requires) - _REQUIRES_KEYS)
    if unknown:
        raise bad(f"plugin.requires.{unknown[0]}: unknown key")
    network = requires.get("network", [])
    if not isinstance(network, list) or not all(isinstance(t, str) and 0 < len(t) <= 255 for t in network):
        raise bad("plugin.requires.network: must be a list of 'host:port' strings")
    memory = requires.get("memory_mb")
    if memory is not None and (isinstance(memory, bool) or not isinstance(memory, int) or memory <= 0):
        raise bad("plugin.requires.memory_mb: must be a positive integer")
    return Requires(network=tuple(network), memory_mb=memory)
