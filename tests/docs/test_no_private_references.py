"""The repository's docs, docstrings and comments point to the repository's own docs, never to
working papers that are not part of it."""

from __future__ import annotations

import re
from pathlib import Path

from integration.kit import REPO

# Spelled in pieces so that this file does not match itself.
PAPERS = ("DESIGN", "SANDBOX", "STYLE", "HOSTS")
CITED = re.compile(r"\b(?:" + "|".join(PAPERS) + r")(?:\.md\b| section\b)")
WHERE = ("plugind", "docs", "tests", "scripts", "examples", "bench", "deploy", "systemd", "config")
FILES = ("README.md", "CHANGELOG.md", "Makefile", "Dockerfile", "pyproject.toml")
SUFFIXES = {".py", ".md", ".toml", ".json", ".yaml", ".yml", ".sh", ".service", ".txt", ".cfg", ""}


def sources() -> list[Path]:
    found = [REPO / f for f in FILES if (REPO / f).is_file()]
    for top in WHERE:
        found += [
            p for p in sorted((REPO / top).rglob("*"))
            if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts
        ]
    return found


def test_no_file_cites_a_paper_outside_the_repository() -> None:
    files = sources()
    assert len(files) > 100  # the walk found the tree
    cited = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in files
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if CITED.search(line)
    ]
    assert cited == []


def test_the_pattern_catches_citations() -> None:
    name = "DES" + "IGN"
    assert CITED.search(f"see {name}.md section 7")
    assert CITED.search(f"names of {name} section 11")
    assert not CITED.search("DOCUMENTED_NAMES and SANDBOX_PLAN")
