"""Helper for tests/examples: import an example plugin from examples/NAME by file path."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(directory: str) -> ModuleType:
    manifest = tomllib.loads((EXAMPLES / directory / "plugin.toml").read_text())["plugin"]
    module_name, _, _attr = manifest["entrypoint"].partition(":")
    path = EXAMPLES / directory / f"{module_name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{module_name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
