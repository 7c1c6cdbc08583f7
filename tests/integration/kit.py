"""Test kit shared by tests/host, tests/api and tests/integration: real plugin sources, real bundles
packed, signed and trusted with the real trust code, and a config file pointing at them.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plugind.config import Settings, load_config
from plugind.trust import (
    PrivateKey,
    TrustedPluginEntry,
    add_trusted_plugin,
    bundle_digest,
    init_trust_list,
    signature_path,
    signed_message,
    write_bundle,
)
from plugind.trust.trustlist import modify_trust_list

REPO = Path(__file__).resolve().parents[2]


def plugin_source(name: str, hooks: dict[str, tuple[int, str]] | None = None, *, header: str = "",
                  on_load: str = "", on_unload: str = "", version: str = "1.0.0") -> dict[str, str]:
    """Files of a Python plugin: `hooks` maps hook -> (priority, handler body using data, ctx)."""
    mod = name.replace("-", "_")
    lines = [
        "import os, sys, time, socket, signal, asyncio",
        "from plugind.sdk import Plugin",
        textwrap.dedent(header),
        "plugin = Plugin()",
    ]
    if on_load:
        lines += ["@plugin.on_load", "def _load(ctx):", textwrap.indent(textwrap.dedent(on_load), "    ")]
    if on_unload:
        lines += ["@plugin.on_unload", "def _unload(ctx):",
                  textwrap.indent(textwrap.dedent(on_unload), "    ")]
    for i, (hook, (priority, body)) in enumerate((hooks or {}).items()):
        lines += [f"@plugin.hook({hook!r}, priority={priority})", f"def _h{i}(data, ctx):",
                  textwrap.indent(textwrap.dedent(body), "    ")]
    toml = (
        f'[plugin]\nname = "{name}"\nversion = "{version}"\nentrypoint = "{mod}:plugin"\n'
        f'api = 1\ndescription = "test plugin {name}"\n'
    )
    return {"plugin.toml": toml, f"{mod}.py": "\n".join(lines) + "\n"}


@dataclass
class Workspace:
    """A temp directory laid out like a deployment: plugins/, data/, config.toml, keys."""

    root: Path
    key: PrivateKey = field(default_factory=PrivateKey.generate)
    trust_key: bytes = field(default_factory=lambda: os.urandom(32))
    extra_config: str = ""  # more TOML sections ([supervisor], [hooks], [plugin.NAME], ...)
    auto_load: bool = True
    sandboxing: bool = False

    def __post_init__(self) -> None:
        for sub in ("plugins", "data", "src"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        init_trust_list(self.trust_list, self.trust_key)

    @property
    def plugins(self) -> Path:
        return self.root / "plugins"

    @property
    def trust_list(self) -> Path:
        return self.root / "data" / "trust.list"

    @property
    def trust_key_hex(self) -> str:
        return self.trust_key.hex()

    def add(self, files: dict[str, str], *, sign: bool = True, trust: bool = True,
            src_name: str | None = None) -> Path:
        """Write a plugin source, pack it into plugins/, sign and trust it as asked. Returns the bundle."""
        return self.sign_and_trust(self._pack(files, src_name), sign=sign, trust=trust)

    def _pack(self, files: dict[str, str], src_name: str | None = None) -> Path:
        name = src_name or files["plugin.toml"].split('name = "', 1)[1].split('"', 1)[0]
        src = self.root / "src" / name
        src.mkdir(parents=True, exist_ok=True)
        for rel, text in files.items():
            (src / rel).write_text(text)
        path, _manifest, _changed = write_bundle(src, self.plugins)
        return path

    def add_dir(self, src: Path, *, sign: bool = True, trust: bool = True) -> Path:
        """Pack an existing plugin directory (e.g. examples/NAME) into plugins/."""
        path, _manifest, _changed = write_bundle(src, self.plugins)
        return self.sign_and_trust(path, sign=sign, trust=trust)

    def add_many(self, sources: list[dict[str, str]]) -> list[Path]:
        """`add` each source, signed and trusted, with one write of the trust list for all of them
        (`add` rewrites the whole list each time: O(N^2) bytes for N plugins)."""
        bundles = [self._pack(files) for files in sources]
        entries = [self._sign(bundle) for bundle in bundles]
        modify_trust_list(self.trust_list, self.trust_key, lambda old: ([*old, *entries], None))
        return bundles

    def _sign(self, bundle: Path, sign: bool = True) -> TrustedPluginEntry:
        # Its trust entry; its signature file written next to it too when `sign`.
        digest = bundle_digest(bundle.read_bytes())
        name, version = bundle.name[: -len(".plugin")].rsplit("-", 1)
        entry = TrustedPluginEntry(name, version, digest, self.key.sign(signed_message(digest)).hex, "test")
        if sign:
            signature_path(bundle).write_text(entry.signature + "\n")
        return entry

    def sign_and_trust(self, bundle: Path, *, sign: bool = True, trust: bool = True) -> Path:
        entry = self._sign(bundle, sign)
        if trust:
            add_trusted_plugin(self.trust_list, self.trust_key, entry)
        return bundle

    def config_text(self, **api: Any) -> str:
        listen = api.get("listen", "127.0.0.1:7070")
        return textwrap.dedent(f"""
            [plugins]
            directory = "{self.root / 'plugins'}"
            extract_dir = "{self.root / 'data' / 'extracted'}"
            state_file = "{self.root / 'data' / 'loaded.json'}"
            auto_load = {str(self.auto_load).lower()}
            [security]
            min_trust_level = "trusted"
            trust_list_path = "{self.trust_list}"
            trust_state_file = "{self.root / 'data' / 'trust-state.json'}"
            [security.public_keys]
            test = "{self.key.public_key.hex}"
            [api]
            listen = "{listen}"
            token_file = "{self.root / 'data' / 'api-token'}"
            [logging]
            audit_log = "{self.root / 'data' / 'audit.log'}"
            format = "text"
            [sandboxing]
            enabled = {str(self.sandboxing).lower()}
        """) + self.extra_config

    def write_config(self, **api: Any) -> Path:
        path = self.root / "config.toml"
        path.write_text(self.config_text(**api))
        return path

    def settings(self, **api: Any) -> Settings:
        return load_config(self.write_config(**api), env=False)
