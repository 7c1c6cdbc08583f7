"""systemd/plugind.service: the keys the issue asks for, and systemd's own verdict when available."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "plugind.service"


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections -> (key, value) in order; keys may repeat (Environment=), continuation lines joined."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line}"
        current.append((key.strip(), value.strip()))
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, list[tuple[str, str]]]:
    return parse_unit(UNIT.read_text())


def one(unit, section: str, key: str) -> str:
    values = [v for k, v in unit[section] if k == key]
    assert len(values) == 1, f"[{section}] {key}= appears {len(values)} times"
    return values[0]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Delegate", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("KillMode", "mixed"),
        ("EnvironmentFile", "/etc/plugind/secrets.env"),
        ("WorkingDirectory", "/var/lib/plugind"),
    ],
)
def test_service_keys(unit, key, expected):
    assert one(unit, "Service", key) == expected


def test_watchdog_limits_and_writable_state(unit):
    assert one(unit, "Service", "WatchdogSec").endswith("s")
    assert int(one(unit, "Service", "LimitNOFILE")) >= 4096
    assert int(one(unit, "Service", "TasksMax")) >= 64
    assert "/var/lib/plugind" in one(unit, "Service", "ReadWritePaths").split()
    assert one(unit, "Service", "ExecStart").split()[1:3] == ["serve", "--config"]
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_a_probe_listener_on_loopback(unit):
    env = [v for k, v in unit["Service"] if k == "Environment"]
    assert "PLUGIND_API__PROBE_LISTEN=127.0.0.1:7071" in env


def test_no_inline_secrets(unit):
    for key, value in unit["Service"]:
        if key == "Environment":
            assert "PLUGIN_TRUST_KEY" not in value and "PLUGIND_API_TOKEN" not in value


def test_settings_that_would_break_the_sandbox_are_absent(unit):
    keys = {k for k, _ in unit["Service"]}
    # Namespaces, a writable cgroupfs and mount syscalls are what the sandbox is made of.
    for key in ("RestrictNamespaces", "ProtectControlGroups", "ProtectKernelTunables", "SystemCallFilter"):
        assert key not in keys, key
    caps = one(unit, "Service", "CapabilityBoundingSet").split()
    assert {"CAP_SYS_ADMIN", "CAP_SETPCAP"} <= set(caps)
    # ...and the unit says why in its comments.
    text = UNIT.read_text()
    assert "RestrictNamespaces=     unset: the sandbox creates" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_every_key(tmp_path):
    # Point ExecStart at a real executable: verify otherwise stops at the missing virtualenv.
    copy = tmp_path / "plugind.service"
    text = UNIT.read_text().replace("/opt/plugind/.venv/bin/plugind", shutil.which("true") or "/bin/true")
    copy.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    problems = [
        line for line in (result.stdout + result.stderr).splitlines()
        if "plugind.service" in line and ("Unknown" in line or "nvalid" in line or "ignoring" in line)
    ]
    assert problems == []
    assert result.returncode == 0, result.stderr
