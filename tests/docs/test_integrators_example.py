"""The library example of docs/integrators.md runs as written: extracted from the page and run in a
fresh interpreter, from a directory laid out as it says (config/plugins.toml, a trusted bundle,
PLUGIN_TRUST_KEY), with the real launcher, supervisor and monitor."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from integration.kit import REPO, Workspace

PAGE = REPO / "docs" / "integrators.md"
pytestmark = pytest.mark.slow  # a real plugin process


def library_example() -> str:
    section = PAGE.read_text().split("## The host as a library", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found is not None, "no python block under 'The host as a library'"
    return found.group(1)


def test_the_example_is_python() -> None:
    code = library_example()
    ast.parse(code)
    assert "registry.monitor" in code and "asyncio.run(main())" in code


def test_the_library_example_runs_as_written(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.auto_load = False
    ws.extra_config = "[monitoring]\ncheck_interval_secs = 0.5\n"
    ws.add_dir(REPO / "examples" / "header-tagger")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "plugins.toml").write_text(ws.config_text())
    script = tmp_path / "example.py"
    script.write_text(library_example())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIND_", "PLUGIN_"))}
    env["PLUGIN_TRUST_KEY"] = ws.trust_key_hex
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout
    data, outcomes = lines[0].rsplit(" [", 1)
    assert "'headers'" in data and "x-" in data.lower()  # header-tagger tagged the request
    assert outcomes == "('header-tagger', 'ok')]"
    violations, heap = lines[1].rsplit(" ", 1)
    assert violations == "[]" and int(heap) > 0
