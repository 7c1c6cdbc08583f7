"""The integration guide's own sandbox settings, copied literally: each works as meant or is refused
at config load with a message naming the key and the fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from plugind.config import load_config
from plugind.errors import ConfigError
from plugind.sandbox.plan import Bind, user_binds

REFUSED = [
    pytest.param(
        '[sandboxing.filesystem]\nwritable_paths = ["/tmp"]',
        "sandboxing.filesystem.writable_paths", "allow_host_tmp = true", id="writable-host-tmp",
    ),
    pytest.param(
        '[sandboxing.filesystem]\nread_only_paths = ["/tmp/"]',
        "sandboxing.filesystem.read_only_paths", "private /tmp", id="read-only-host-tmp",
    ),
    pytest.param(
        '[sandboxing.filesystem]\nwritable_paths = ["/"]',
        "sandboxing.filesystem.writable_paths", "allow_host_tmp", id="host-root",
    ),
    pytest.param(
        '[sandboxing.filesystem]\nbind_mounts = [{source = "/srv", target = "/tmp"}]',
        "sandboxing.filesystem.bind_mounts.target", "allow_host_tmp", id="bind-over-tmp",
    ),
    pytest.param(
        '[sandboxing]\nmode = "strict"\n[sandboxing.network]\nmode = "restricted"\n'
        'allowed_targets = ["127.0.0.1:443"]',
        "sandboxing.network.mode = 'restricted'", "sandboxing.mode = 'default'", id="strict-restricted",
    ),
    pytest.param(
        '[sandboxing]\nmode = "strict"\n[sandboxing.network]\nmode = "host"',
        "sandboxing.network.mode = 'host'", "sandboxing.network.mode = 'none'", id="strict-host",
    ),
    pytest.param(
        '[sandboxing.network]\nmode = "restricted"\nallowed_targets = ["api.example.com"]',
        "sandboxing.network.allowed_targets", "api.example.com:443", id="domain-without-port",
    ),
    pytest.param(
        '[plugin.hello]\nallowed_targets = ["api.example.com"]',
        "plugin.hello.allowed_targets", "api.example.com:443", id="override-domain-without-port",
    ),
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plugins.toml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(("toml", "key", "fix"), REFUSED)
def test_unsafe_guide_values_are_refused_at_load(tmp_path: Path, toml: str, key: str, fix: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, toml), env=False)
    message = str(info.value)
    assert key in message and fix in message
    assert "Value error" not in message


ACCEPTED = [
    pytest.param(
        '[sandboxing.filesystem]\nwritable_paths = ["/tmp"]\nallow_host_tmp = true', id="forced-tmp"
    ),
    pytest.param('[sandboxing.filesystem]\nwritable_paths = ["/tmp/shared"]', id="dir-under-tmp"),
    pytest.param('[sandboxing.filesystem]\nread_only_paths = ["/usr", "/lib", "/lib64"]', id="guide-paths"),
    pytest.param('[sandboxing]\nmode = "strict"\n[sandboxing.network]\nmode = "none"', id="strict-none"),
    pytest.param(
        '[sandboxing.network]\nmode = "restricted"\nallowed_targets = ["api.example.com:443", "10.0.0.0/8"]',
        id="domain-with-port",
    ),
]


@pytest.mark.parametrize("toml", ACCEPTED)
def test_safe_values_load(tmp_path: Path, toml: str) -> None:
    load_config(write(tmp_path, toml), env=False)


# A merged-/usr host, as a table: path -> real path, and the links.
REAL = {"/lib": "/usr/lib", "/lib64": "/usr/lib64", "/usr": "/usr", "/": "/", "/opt/data": "/opt/data",
        "/opt": "/opt", "/srv/link": "/data/real", "/srv": "/srv", "/lib/x": "/usr/lib/x"}
LINKS = {"/lib": "usr/lib", "/lib64": "usr/lib64", "/srv/link": "/data/real"}
SYSTEM = [Bind("/usr", "/usr"), Bind("/lib", "/lib", symlink="usr/lib")]


@pytest.mark.parametrize(
    ("paths", "writable", "expected"),
    [
        pytest.param(["/usr", "/lib", "/lib64"], False, [Bind("/lib64", "/lib64", symlink="usr/lib64")],
                     id="guide-paths-covered-by-usr"),
        pytest.param(["/srv/link"], False,
                     [Bind("/srv/link", "/srv/link", symlink="/data/real"), Bind("/data/real", "/data/real")],
                     id="link-recreated-target-bound"),
        pytest.param(
            ["/lib/x"], True, [Bind("/usr/lib/x", "/usr/lib/x", writable=True)], id="through-a-link"
        ),
        pytest.param(["/opt/data"], True, [Bind("/opt/data", "/opt/data", writable=True)], id="plain"),
    ],
)
def test_user_binds_follow_symlinks(paths: list[str], writable: bool, expected: list[Bind]) -> None:
    got = user_binds(SYSTEM, paths, writable=writable, realpath=REAL.__getitem__, readlink=LINKS.__getitem__)
    assert got == expected
