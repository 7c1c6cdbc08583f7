"""The host lane (`make test-hosts`): its scripts are sound, its report schema holds, and the
documented blocks it runs verbatim exist and parse. The lane itself boots a guest and is too slow
for every run; these checks keep it from rotting between runs."""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
HOSTS = REPO / "scripts" / "hosts"
SHELL_SCRIPTS = sorted([*HOSTS.glob("*.sh"), *HOSTS.glob("guest/*.sh"), REPO / "scripts" / "setup.sh"])


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


report = load(HOSTS / "report.py", "host_lane_report")
lanes = load(HOSTS / "guest" / "lanes.py", "host_lane_guest")


def shellcheck() -> str:
    path = shutil.which("shellcheck")
    if path is None:
        pytest.fail("shellcheck is missing: `make setup` installs it (Debian package shellcheck)")
    return path


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shell_scripts_are_shellcheck_clean(script: Path) -> None:
    proc = subprocess.run([shellcheck(), "-x", str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


# --- the report ---------------------------------------------------------------------------------

GOOD = {
    "guest": {"os": "Debian GNU/Linux 12 (bookworm)", "kernel": "6.1.0-50-amd64", "cgroup": "v2",
              "systemd": "systemd 252 (252.39-1~deb12u2)"},
    "lanes": {
        "systemd": {"ok": True, "plugins_loaded": 4, "plugins_total": 4, "seconds": 400,
                    "steps": {"echo": {"cgroups": "active", "seccomp": "active"}}},
        "privileged": {"ok": True, "passed": 65, "failed": 0, "skipped": 0, "seconds": 300},
        "container": {"ok": True, "detail": "healthy", "seconds": 200},
        "rootless": {"ok": True, "seconds": 60, "steps": {"echo": {"cgroups": "degraded: not delegated"}}},
    },
}


def broken(path: str, value: object) -> dict:
    """GOOD with the value at a dotted path replaced (or removed when value is ...)."""
    doc = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return doc


def test_a_conforming_report_has_no_problems() -> None:
    assert report.validate_report(GOOD) == []


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (broken("guest.cgroup", ...), "guest.cgroup: missing"),
        (broken("lanes.privileged", ...), "lanes.privileged: missing"),
        (broken("lanes.systemd.plugins_loaded", "4"), "lanes.systemd.plugins_loaded: missing or"),
        (broken("lanes.privileged.failed", True), "lanes.privileged.failed: missing or of the wrong type"),
        (broken("lanes.systemd.plugins_loaded", 0), "lanes.systemd: ok with 0 of 4 plugins loaded"),
        (broken("lanes.privileged.failed", 2), "lanes.privileged: ok with failed tests"),
        (broken("lanes.systemd.steps", {"echo": {"cgroups": "on"}}), "lanes.systemd.steps.echo.cgroups: 'on"),
        (broken("lanes.systemd.steps", {"echo": {}}), "lanes.systemd.steps.echo: expected a map"),
        (broken("lanes.bogus", {"ok": True}), "lanes.bogus: unknown lane"),
        (broken("lanes", []), "lanes: missing"),
    ],
    ids=["no-cgroup", "lane-missing", "string-count", "bool-count", "ok-but-not-loaded", "ok-but-failed",
         "bad-step-state", "empty-steps", "unknown-lane", "lanes-not-a-map"],
)
def test_each_departure_from_the_schema_is_named(doc: dict, problem: str) -> None:
    problems = report.validate_report(doc)
    assert any(p.startswith(problem) for p in problems), problems


def test_a_failed_lane_needs_only_its_reason_and_unrun_lanes_may_be_absent() -> None:
    doc = broken("lanes.container", {"ok": False, "detail": "docker build failed"})
    assert report.validate_report(doc) == []
    del doc["lanes"]["rootless"]
    assert report.validate_report(doc, ["systemd", "privileged", "container"]) == []
    assert report.validate_report(doc) == ["lanes.rootless: missing"]


@pytest.mark.parametrize(
    ("state", "ok"), [("active", True), ("off", True), ("degraded: no io controller", True),
                      ("degraded:", False), ("", False), (None, False), ("ACTIVE", False)],
)
def test_step_states(state: object, ok: bool) -> None:
    assert report.step_state_ok(state) is ok


def test_the_published_report_conforms_and_the_docs_table_matches_it() -> None:
    """docs/hosts-report.json is the lane's last report; docs/operations.md's table is made from it."""
    published = json.loads((REPO / "docs" / "hosts-report.json").read_text())
    assert report.validate_report(published) == []
    assert published["guest"]["cgroup"] == "v2"
    ops = (REPO / "docs" / "operations.md").read_text()
    assert "## Supported hosts" in ops
    table = ops.split("## Supported hosts", 1)[1].split("\n## ", 1)[0]
    assert report.supported_hosts_table(published) in table  # remade by `lane.py --publish`
    systemd = published["lanes"]["systemd"]
    assert published["guest"]["os"] in table and published["guest"]["kernel"] in table
    assert f"{systemd['plugins_loaded']} of {systemd['plugins_total']}" in table
    privileged = published["lanes"]["privileged"]
    assert f"{privileged['passed']} passed, {privileged['failed']} failed" in table


# --- the documented blocks the lane runs verbatim ------------------------------------------------

@pytest.mark.parametrize(
    ("doc", "marker"),
    [("operations.md", "install-systemd"), ("operations.md", "container-run"), ("sandbox.md", "rootless")],
)
def test_documented_blocks_exist_and_are_sound_shell(doc: str, marker: str, tmp_path: Path) -> None:
    block = lanes.doc_block(REPO / "docs" / doc, marker)
    for placeholder in ("/path/to/plugind", "/path/to/bundles", "/path/to/release.pub"):
        assert placeholder in block, f"{doc} {marker}: the lane substitutes {placeholder}"
    script = tmp_path / "block.sh"
    script.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + block + "\n")
    proc = subprocess.run([shellcheck(), "-e", "SC1091", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_a_missing_block_is_a_clear_failure(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# nothing here\n```sh\necho hi\n```\n")
    with pytest.raises(lanes.LaneFailed, match="has no block marked 'install-systemd'"):
        lanes.doc_block(doc, "install-systemd")


def test_expected_cgroup_values_follow_the_shipped_configuration() -> None:
    config = tomllib.loads((REPO / "config" / "plugins.toml").read_text())
    cg = config["sandboxing"]["cgroups"]
    want = lanes.expected_limits(config, "anything")
    assert want["memory.max"] == str(cg["memory_limit_mb"] * 1024 * 1024)
    period = cg["cpu_period_us"]
    assert want["cpu.max"] == f"{int(period * cg['cpu_quota_percent'] / 100)} {period}"
    assert want["pids.max"] == str(cg["max_pids"])
    over = {**config, "plugin": {"small": {"memory_limit_mb": 32}}}
    assert lanes.expected_limits(over, "small")["memory.max"] == str(32 * 1024 * 1024)
    assert lanes.expected_limits(over, "other")["memory.max"] == want["memory.max"]


def test_the_table_names_each_step_that_is_not_active_and_each_failing_lane() -> None:
    doc = copy.deepcopy(GOOD)
    doc["lanes"]["systemd"]["steps"] = {"a": {"seccomp": "active", "cgroup": "active"},
                                        "b": {"seccomp": "active", "cgroup": "degraded: no io"}}
    doc["lanes"]["container"] = {"ok": False, "detail": "docker build failed", "seconds": 3}
    table = report.supported_hosts_table(doc)
    assert table.startswith(report.TABLE_BEGIN) and table.endswith(report.TABLE_END)
    assert "1 of 2 active; cgroup: active / degraded: no io" in table
    assert "**fails**: docker build failed" in table
    assert "65 passed, 0 failed, 0 skipped" in table
    assert report.supported_hosts_table(GOOD).count("\n| ") == 5  # a header and one row per lane
