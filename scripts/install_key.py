"""Print a short hash of what `pip install` takes from pyproject.toml.

That is [project], [build-system] and [tool.setuptools].

`make setup` reinstalls the virtualenv's packages only when it changes, and the host lane keys its
prepared guest on it, so editing a tool's settings (ruff, mypy, pytest) reinstalls nothing.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path


def install_key(pyproject: Path) -> str:
    """16 hex characters that change whenever the installed packages could."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    wanted = {key: data.get(key) for key in ("project", "build-system")}
    wanted["setuptools"] = data.get("tool", {}).get("setuptools")
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]


if __name__ == "__main__":
    default = Path(__file__).resolve().parent.parent / "pyproject.toml"
    print(install_key(Path(sys.argv[1]) if len(sys.argv) > 1 else default))
