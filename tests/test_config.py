"""Configuration: file parsing, env overrides, and errors that name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugind.config import Settings, load_config
from plugind.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("PLUGIND_"):
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plugins.toml"
    path.write_text(text)
    return path


def test_shipped_config_has_every_key_and_the_defaults(repo_root: Path) -> None:
    settings = load_config(repo_root / "config" / "plugins.toml")
    assert settings.model_dump() == Settings().model_dump()
    # Every key of every section appears in the documented file.
    text = (repo_root / "config" / "plugins.toml").read_text()
    for section in Settings.model_fields:
        if section == "plugin":
            continue
        assert f"[{section}]" in text
        value = getattr(settings, section)
        for key in type(value).model_fields:
            assert f"{key} =" in text or f"[{section}.{key}]" in text, f"{section}.{key} not documented"


def test_values_from_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[api]\nlisten = "127.0.0.1:9999"\n[sandboxing.cgroups]\nmemory_limit_mb = 32\n'
        "[plugin.rate-limiter]\nmax_pids = 4\nhook_timeouts = { on_request = 0.25 }\n",
    )
    settings = load_config(path)
    assert settings.api.listen == "127.0.0.1:9999"
    assert settings.sandboxing.cgroups.memory_limit_mb == 32
    assert settings.override_for("rate-limiter").max_pids == 4
    assert settings.hook_timeout("on_request", "rate-limiter") == 0.25
    assert settings.hook_timeout("on_request", "other") == settings.hooks.default_timeout_secs


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[api]\nlisten = "127.0.0.1:9999"\n')
    monkeypatch.setenv("PLUGIND_API__LISTEN", "127.0.0.1:7071")
    monkeypatch.setenv("PLUGIND_SANDBOXING__ENABLED", "false")
    monkeypatch.setenv("PLUGIND_SECURITY__PUBLIC_KEYS", '{"dev": "' + "ab" * 32 + '"}')
    settings = load_config(path)
    assert settings.api.listen == "127.0.0.1:7071"
    assert settings.sandboxing.enabled is False
    assert settings.security.public_keys == {"dev": "ab" * 32}


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("[api]\nlistne = 'x'\n", "api.listne", "unknown key"),
        ("[nosuch]\na = 1\n", "nosuch", "unknown key"),
        ("[sandboxing.cgroups]\nmemory_limt_mb = 3\n", "sandboxing.cgroups.memory_limt_mb", "unknown key"),
        ("[api]\nlisten = 'nohostport'\n", "api.listen", "HOST:PORT"),
        ("[sandboxing.network]\nmode = 'wide'\n", "sandboxing.network.mode", "none"),
        ("[monitoring]\nviolation_threshold = 0\n", "monitoring.violation_threshold", "greater than"),
        ("[security.public_keys]\ndev = 'zz'\n", "security.public_keys", "64 hex"),
        ("[plugin.'../x']\nmax_pids = 1\n", "", "not a valid plugin name"),
    ],
    ids=[
        "typo", "unknown-section", "nested-typo", "bad-listen",
        "bad-enum", "bad-range", "bad-key", "bad-name",
    ],
)
def test_invalid_config_names_key_and_file(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=fragment) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    if key:
        assert info.value.key == key
        assert key in str(info.value)


def test_bad_env_value_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGIND_MONITORING__CHECK_INTERVAL_SECS", "soon")
    with pytest.raises(ConfigError, match=r"monitoring\.check_interval_secs") as info:
        load_config(write(tmp_path, ""))
    assert info.value.key == "monitoring.check_interval_secs"


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[api\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("", "trusted"),
        ('[security]\nmin_trust_level = "untrusted"\n', "untrusted"),
        ("[security]\nonly_trusted = false\n", "signed"),  # the deprecated alias: never "untrusted"
        ('[security]\nonly_trusted = true\nmin_trust_level = "signed"\n', "trusted"),  # the alias decides
    ],
)
def test_min_trust_level_and_its_deprecated_alias(tmp_path: Path, text: str, level: str) -> None:
    assert load_config(write(tmp_path, text)).security.min_trust_level == level


def test_min_trust_level_refuses_other_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"security\.min_trust_level"):
        load_config(write(tmp_path, '[security]\nmin_trust_level = "invalid"\n'))


@pytest.mark.parametrize("value", ["", "  ", "maybe", "2"])
def test_an_empty_or_unknown_only_trusted_never_lowers_the_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # An empty PLUGIND_SECURITY__ONLY_TRUSTED read as false: min_trust_level fell to "signed",
    # over a file that said "trusted", and the daemon started without its trust list.
    path = write(tmp_path, '[security]\nmin_trust_level = "trusted"\n')
    monkeypatch.setenv("PLUGIND_SECURITY__ONLY_TRUSTED", value)
    with pytest.raises(ConfigError, match=r"only_trusted must be true or false"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"only_trusted must be true or false"):
        load_config(write(tmp_path, f'[security]\nonly_trusted = "{value}"\n'))
    monkeypatch.setenv("PLUGIND_SECURITY__ONLY_TRUSTED", "no")
    assert load_config(path).security.min_trust_level == "signed"  # said plainly: the alias decides


@pytest.mark.parametrize("table", ["[hooks.timeouts]\non_request = ",
                                   "[plugin.alpha]\nhook_timeouts = { x = "])
@pytest.mark.parametrize("value", ["0", "-1", "3601"])
def test_hook_deadlines_are_positive_and_bounded(tmp_path: Path, table: str, value: str) -> None:
    # A zero or negative deadline failed every call of the hook ("deadline passed before it ran").
    text = table + value + (" }" if table.endswith("= ") and "{" in table else "") + "\n"
    with pytest.raises(ConfigError, match=r"greater than 0|less than or equal to 3600"):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(("name", "value"), [("PLUGIND_SANDBOXING__ALLOWED_CAPS", "CAP_NET_BIND_SERVICE"),
                                             ("PLUGIND_HOOKS__TIMEOUTS", "on_request=1")])
def test_a_list_or_table_not_in_json_names_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    # It was a 49-line traceback naming only the section.
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=rf"^{name} cannot be read: a list or a table is given as JSON"):
        load_config(write(tmp_path, ""))


@pytest.mark.parametrize(("name", "meant", "key"), [
    # One underscore between levels: pydantic-settings ignored it, and the default stood.
    ("PLUGIND_API_LISTEN", "PLUGIND_API__LISTEN", "api.listen"),
    ("PLUGIND_SANDBOXING_CGROUPS_MEMORY_LIMIT_MB", "PLUGIND_SANDBOXING__CGROUPS__MEMORY_LIMIT_MB",
     "sandboxing.cgroups.memory_limit_mb"),
    ("PLUGIND_SECURITY_ONLY_TRUSTED", "PLUGIND_SECURITY__ONLY_TRUSTED", "security.only_trusted"),
    # A key, or a section, misspelt.
    ("PLUGIND_API__LISTENN", "PLUGIND_API__LISTEN", "api.listen"),
    ("PLUGIND_APII__LISTEN", "PLUGIND_API__LISTEN", "api.listen"),
    ("PLUGIND_SUPERVISOR__SPIN", "PLUGIND_SUPERVISOR__SPIN_US", "supervisor.spin_us"),
    ("PLUGIND_PLUGIN__ECHO__AUTO_UNMOUNTT", "PLUGIND_PLUGIN__ECHO__AUTO_UNMOUNT", "plugin.echo.auto_unmount"),
])
def test_a_variable_that_sets_nothing_but_was_meant_to_is_refused_with_its_spelling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, meant: str, key: str
) -> None:
    monkeypatch.setenv(name, "1")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, ""))
    assert str(info.value).startswith(f"{name} sets nothing: did you mean {meant}? ")
    assert info.value.key == key and str(tmp_path) not in str(info.value)
    monkeypatch.delenv(name)
    value = {"api.listen": "127.0.0.1:7071", "security.only_trusted": "true",
             "plugin.echo.auto_unmount": "true"}.get(key, "2")
    monkeypatch.setenv(meant, value)
    load_config(write(tmp_path, ""))  # the spelling it suggests is a setting


@pytest.mark.parametrize("name", ["PLUGIND_API_TOKEN", "PLUGIND_LOG", "PLUGIND_FD", "PLUGIND_NAME",
                                  "PLUGIND_MAX_FRAME", "PLUGIND_HOSTS_MIRROR", "PLUGIND_SOMETHING_ELSE",
                                  "PLUGIND_FOO__BAR", "plugind_api__listen",
                                  "PLUGIND_HOOKS__TIMEOUTS__ON_REQUEST"])
def test_other_variables_and_settings_are_left_to_their_readers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "127.0.0.1:7072" if name.lower() == "plugind_api__listen" else "3")
    settings = load_config(write(tmp_path, ""))
    if name == "plugind_api__listen":
        assert settings.api.listen == "127.0.0.1:7072"
    if name.endswith("ON_REQUEST"):
        assert settings.hooks.timeouts == {"on_request": 3.0}


def test_an_environment_value_that_fails_is_blamed_on_its_variable_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[api]\nmax_header_bytes = 8192\n")
    monkeypatch.setenv("PLUGIND_API__MAX_HEADER_BYTES", "lots")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith("PLUGIND_API__MAX_HEADER_BYTES: api.max_header_bytes: ")
    assert str(path) not in str(info.value) and info.value.path is None
    monkeypatch.setenv("PLUGIND_API__ZZZ", "1")  # no key near it: pydantic's refusal, named so too
    monkeypatch.delenv("PLUGIND_API__MAX_HEADER_BYTES")
    with pytest.raises(ConfigError, match=r"^PLUGIND_API__ZZZ: api\.zzz: unknown key$"):
        load_config(path)
    monkeypatch.delenv("PLUGIND_API__ZZZ")
    with pytest.raises(ConfigError, match=rf"^{path}: api\.max_header_bytes: "):
        load_config(write(tmp_path, "[api]\nmax_header_bytes = 'lots'\n"))  # from the file: the file
    # A section's own check: its values may come from either, and both are named.
    monkeypatch.setenv("PLUGIND_SECURITY__ONLY_TRUSTED", "2")
    with pytest.raises(ConfigError, match=rf"^{path} and PLUGIND_SECURITY__ONLY_TRUSTED: security: "):
        load_config(write(tmp_path, ""))
