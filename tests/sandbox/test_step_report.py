"""How the child's steps are reported: a step done in parts is degraded when any part is."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from plugind.config import Settings
from plugind.sandbox.contain import ACTIVE, DEGRADED, OFF, _StepFailed, _stepper
from plugind.sandbox.plan import build_plan


def _fail() -> None:
    raise OSError(30, "Read-only file system")


def test_a_later_part_that_succeeds_never_hides_an_earlier_degraded_one(tmp_path: Path) -> None:
    # The born-style hand-off seals the root in the spare and mounts /proc in the plugin, both as
    # the "filesystem" step: a seal that failed must still show once /proc is mounted.
    plan = dataclasses.replace(build_plan(Settings(), "alpha", tmp_path), allow_degraded=True)
    steps = {"filesystem": OFF, "network": OFF}
    step = _stepper(plan, steps)
    step("filesystem", _fail)
    step("filesystem", lambda: None)
    step("network", lambda: None)
    assert steps["filesystem"].startswith(DEGRADED)
    assert "Read-only file system" in steps["filesystem"]
    assert steps["network"] == ACTIVE


def test_a_step_that_may_not_degrade_fails_naming_it(tmp_path: Path) -> None:
    plan = dataclasses.replace(build_plan(Settings(), "alpha", tmp_path), allow_degraded=False)
    steps = {"filesystem": OFF}
    with pytest.raises(_StepFailed) as info:
        _stepper(plan, steps)("filesystem", _fail)
    assert info.value.step == "filesystem"
    assert steps["filesystem"] == OFF
