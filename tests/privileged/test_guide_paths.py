"""The guide's `read_only_paths = ["/usr", "/lib", "/lib64"]`, copied literally, in a real sandbox on
this merged-/usr host: the plugin starts (no ELOOP) and sees /lib as the host does."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from sandbox_harness import make_settings, make_tree, run_probe

from plugind.sandbox.plan import build_plan

pytestmark = pytest.mark.root


def test_guide_read_only_paths_load_and_follow_symlinks(tmp_path: Path, parent: str) -> None:
    if not os.path.islink("/lib"):
        pytest.skip("/lib is not a symlink on this host (not merged-/usr)")
    libdir = tmp_path / "libs"
    (libdir / "real").mkdir(parents=True)
    (libdir / "real" / "f").write_text("through the link")
    (libdir / "link").symlink_to("real")
    settings = make_settings(parent)
    guide = [Path("/usr"), Path("/lib"), Path("/lib64")]
    settings.sandboxing.filesystem.read_only_paths = [*guide, libdir / "link"]
    plan = build_plan(settings, "guide", make_tree(tmp_path, "guide"))
    link = str(libdir / "link")

    def probe() -> dict[str, Any]:
        return {
            "lib": os.readlink("/lib"),
            "lib_lists": bool(os.listdir("/lib")),
            "link": os.readlink(link),
            "through_link": Path(link, "f").read_text(),
        }

    out = run_probe(plan, probe)
    assert out.result == {
        "lib": os.readlink("/lib"),
        "lib_lists": True,
        "link": "real",
        "through_link": "through the link",
    }
