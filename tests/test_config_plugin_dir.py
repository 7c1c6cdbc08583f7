"""`PLUGIN_DIR`, the integration guide's variable, as an alias of `PLUGIND_PLUGINS__DIRECTORY`."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugind.config import load_config
from plugind.errors import ConfigError


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("PLUGIN_DIR", "PLUGIND_PLUGINS__DIRECTORY", "PLUGIND_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "plugins.toml"
    path.write_text('[plugins]\ndirectory = "/from/file"\nauto_load = false\n')
    return path


@pytest.mark.parametrize(
    ("alias", "ours", "expected"),
    [
        (None, None, "/from/file"),
        ("/srv/plugins", None, "/srv/plugins"),
        ("/srv/plugins", "/srv/plugins/", "/srv/plugins"),
        (None, "/srv/other", "/srv/other"),
    ],
    ids=["file", "alias-wins-over-file", "both-same", "ours-only"],
)
def test_plugin_dir_alias(
    config: Path, monkeypatch: pytest.MonkeyPatch, alias: str | None, ours: str | None, expected: str
) -> None:
    if alias is not None:
        monkeypatch.setenv("PLUGIN_DIR", alias)
    if ours is not None:
        monkeypatch.setenv("PLUGIND_PLUGINS__DIRECTORY", ours)
    settings = load_config(config)
    assert settings.plugins.directory == Path(expected)
    assert settings.plugins.auto_load is False  # the rest of [plugins] is kept


@pytest.mark.parametrize(
    ("alias", "ours", "message"),
    [
        ("/srv/a", "/srv/b", "PLUGIN_DIR='/srv/a' and PLUGIND_PLUGINS__DIRECTORY='/srv/b' name different"),
        ("  ", None, "PLUGIN_DIR is set but empty"),
    ],
    ids=["both-differ", "empty"],
)
def test_plugin_dir_conflicts_are_refused(
    config: Path, monkeypatch: pytest.MonkeyPatch, alias: str, ours: str | None, message: str
) -> None:
    monkeypatch.setenv("PLUGIN_DIR", alias)
    if ours is not None:
        monkeypatch.setenv("PLUGIND_PLUGINS__DIRECTORY", ours)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(config)
    assert info.value.key == "PLUGIN_DIR"


def test_plugin_dir_is_ignored_without_env(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGIN_DIR", "/srv/plugins")
    assert load_config(config, env=False).plugins.directory == Path("/from/file")
