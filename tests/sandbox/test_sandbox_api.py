"""The sandbox package's public names: sorted, all resolvable, and lazily loaded."""

from __future__ import annotations

import subprocess
import sys

import plugind.sandbox as sandbox


def test_all_is_sorted_and_resolves() -> None:
    assert sandbox.__all__ == sorted(sandbox.__all__)
    for name in sandbox.__all__:
        assert getattr(sandbox, name) is not None


def test_plan_import_does_not_load_seccomp_or_netlink() -> None:
    code = (
        "import sys; from plugind.sandbox import build_plan; "
        "print(sorted(m for m in ('pyseccomp', 'pyroute2', 'prctl') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
