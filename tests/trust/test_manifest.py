"""plugin.toml validation and plugin versions."""

from __future__ import annotations

import itertools

import pytest

from plugind.errors import BundleError
from plugind.trust import Manifest, PluginVersion

GOOD = b"""
[plugin]
name = "rate-limiter_2"
version = "1.2.0-rc.1+build.5"
entrypoint = "pkg.mod:plugin"
api = 1
description = "limits"
[plugin.requires]
network = ["api.example.com:443"]
memory_mb = 64
"""


def test_valid_manifest() -> None:
    m = Manifest.from_toml(GOOD)
    assert (m.name, m.version, m.entrypoint, m.api, m.description) == (
        "rate-limiter_2",
        "1.2.0-rc.1+build.5",
        "pkg.mod:plugin",
        1,
        "limits",
    )
    assert m.requires.network == ("api.example.com:443",)
    assert m.requires.memory_mb == 64
    assert m.entrypoint_files() == ("pkg/mod.py", "pkg/mod/__init__.py")
    assert m.bundle_filename == "rate-limiter_2-1.2.0-rc.1+build.5.plugin"
    assert not m.is_exec


def test_exec_entrypoint() -> None:
    m = Manifest.from_toml(b'[plugin]\nname="x"\nversion="1.0.0"\nentrypoint="exec:bin/plugin"\napi=1\n')
    assert m.is_exec
    assert m.entrypoint_files() == ("bin/plugin",)


def _doc(**fields: str) -> bytes:
    base = {"name": '"hello"', "version": '"1.0.0"', "entrypoint": '"hello:plugin"', "api": "1"}
    base.update(fields)
    return ("[plugin]\n" + "".join(f"{k} = {v}\n" for k, v in base.items() if v != "")).encode()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_doc(name='"Hello"'), r"plugin.name: 'Hello' must match"),
        (_doc(name='"-x"'), r"plugin.name: '-x' must match"),
        (_doc(name='"' + "a" * 64 + '"'), r"plugin.name: 'a{64}' must match"),
        (_doc(name='"../x"'), r"plugin.name: '../x' must match"),
        (_doc(name=""), r"plugin.name: 'None' must match"),
        (_doc(version='"1.0"'), r"plugin.version: '1.0' is not a semantic version"),
        (_doc(version='"01.0.0"'), r"plugin.version: '01.0.0' is not a semantic version"),
        (_doc(version='"1.0.0-"'), r"plugin.version: '1.0.0-' is not a semantic version"),
        (_doc(version="1"), r"plugin.version: '1' is not a semantic version"),
        (_doc(entrypoint='"hello"'), r"plugin.entrypoint: 'hello': use 'module:attribute'"),
        (_doc(entrypoint='"../x:y"'), r"plugin.entrypoint: '../x:y': use 'module:attribute'"),
        (_doc(entrypoint='"exec:/bin/sh"'), r"plugin.entrypoint: 'exec:/bin/sh': exec path must be relative"),
        (_doc(entrypoint='"exec:bin/../../x"'), r"exec path must be relative"),
        (_doc(api="0"), r"plugin.api: must be a positive integer"),
        (_doc(api='"1"'), r"plugin.api: must be a positive integer"),
        (_doc(api="true"), r"plugin.api: must be a positive integer"),
        (_doc(extra='"x"'), r"plugin.extra: unknown key"),
        (_doc(requires="{ cpu = 1 }"), r"plugin.requires.cpu: unknown key"),
        (_doc(requires="{ memory_mb = -1 }"), r"plugin.requires.memory_mb: must be a positive integer"),
        (_doc(requires='{ network = "x" }'), r"plugin.requires.network: must be a list"),
        (b"[plugin\n", r"not valid TOML"),
        (b"\xff\xfe", r"not valid TOML"),
        (b"[other]\nx=1\n", r"expected exactly one \[plugin\] table"),
        (b"x" * 70000, r"larger than 65536 bytes"),
        (b"[plugin]\nx=" + b"[" * 30000 + b"]" * 30000, r"not valid TOML: nested too deeply"),
    ],
    ids=lambda v: v[:40] if isinstance(v, str) else None,
)
def test_invalid_manifest_is_refused(doc: bytes, message: str) -> None:
    with pytest.raises(BundleError, match=r"^invalid plugin.toml: .*" + message) as exc:
        Manifest.from_toml(doc, bundle="b.plugin")
    assert exc.value.entry == "plugin.toml"
    assert exc.value.bundle == "b.plugin"


@pytest.mark.parametrize(
    "ordered",
    [
        [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.10.0",
            "2.0.0",
        ]
    ],
)
def test_version_precedence(ordered: list[str]) -> None:
    versions = [PluginVersion.parse(v) for v in ordered]
    assert sorted(reversed(versions)) == versions
    assert all(a < b for a, b in itertools.pairwise(versions))
    assert [str(v) for v in versions] == ordered
    assert PluginVersion.parse("1.0.0+a") == PluginVersion.parse("1.0.0+b")
