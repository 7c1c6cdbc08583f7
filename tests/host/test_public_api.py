"""plugind.host's public API: a sorted __all__, every name importable, nothing heavy on import."""

from __future__ import annotations

import subprocess
import sys

import plugind.host


def test_all_is_sorted_and_resolves() -> None:
    assert plugind.host.__all__ == sorted(plugind.host.__all__)
    for name in plugind.host.__all__:
        assert getattr(plugind.host, name).__name__ == name


def test_unknown_attribute() -> None:
    try:
        plugind.host.Nope  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert str(exc) == "module 'plugind.host' has no attribute 'Nope'"
    else:
        raise AssertionError("no AttributeError")


def test_importing_the_package_stays_light() -> None:
    code = (
        "import sys, plugind.host.forkserver\n"
        "heavy = [m for m in ('plugind.host.registry', 'prometheus_client', 'fastapi') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
