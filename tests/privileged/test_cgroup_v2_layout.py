"""The cgroup v2 layout writer against the real kernel, on this host's controller-less cgroup2 mount.

A unique group made by each test stands in for the daemon's delegated unit cgroup; real processes
are moved with `cgroup.procs` and checked in `/proc/PID/cgroup` and `cgroup.events`. Controller
files do not exist here, so enabling one must be refused by name. Only groups the test created are
touched, and all of them are removed afterwards.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugind.errors import SandboxError
from plugind.sandbox import cgroups
from plugind.sandbox.cgroup_layout import Enable, own_cgroup

pytestmark = pytest.mark.root
HIER = cgroups.detect()
V2 = Path(HIER.v2_path) if HIER.v2_path else None
_n = itertools.count()


@pytest.fixture
def unit() -> Iterator[str]:
    """`/plugind-layout-test-PID-N/svc`: a fresh group in the cgroup2 hierarchy, removed afterwards."""
    if V2 is None:
        pytest.skip("no cgroup2 mount")
    top = f"plugind-layout-test-{os.getpid()}-{next(_n)}"
    (V2 / top / "svc").mkdir(parents=True)
    yield f"/{top}/svc"
    dirs = sorted((p for p in (V2 / top).rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for d in [*dirs, V2 / top]:
        cgroups.CgroupHandle("v2", {"pids": d}).remove()
    assert not (V2 / top).exists()


def _dir(path: str) -> Path:
    assert V2 is not None
    return V2 / path.lstrip("/")


def _sleeper() -> int:
    pid = os.fork()
    if pid == 0:
        signal.pause()
        os._exit(0)
    return pid


def _reap(pid: int) -> int:
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def _v2_path_of(pid: int) -> str:
    return own_cgroup(Path(f"/proc/{pid}/cgroup").read_text())


def _populated(path: str) -> int:
    return cgroups.parse_flat_keyed((_dir(path) / "cgroup.events").read_text())["populated"]


def _procs(path: str) -> list[int]:
    return sorted(int(x) for x in (_dir(path) / "cgroup.procs").read_text().split())


def test_layout_moves_our_processes_into_the_leaf_and_cleanup_stays_under_the_parent(unit: str) -> None:
    assert V2 is not None
    daemon, forkserver = _sleeper(), _sleeper()
    plugin = _sleeper()
    try:
        for pid in (daemon, forkserver):
            (_dir(unit) / "cgroup.procs").write_text(str(pid))
        layout = cgroups.prepare_v2_layout(
            "plugins", [daemon, forkserver], V2, proc_self_cgroup=f"0::{unit}\n"
        )
        assert layout.parent == f"{unit}/plugins"
        assert _v2_path_of(daemon) == _v2_path_of(forkserver) == f"{unit}/daemon"
        assert _procs(unit) == [] and _procs(f"{unit}/daemon") == sorted([daemon, forkserver])
        assert (_populated(unit), _populated(f"{unit}/daemon"), _populated(layout.parent)) == (1, 1, 0)

        # A plugin group under the parent, left populated as a SIGKILLed daemon would leave it.
        group = _dir(layout.parent) / "p1"
        group.mkdir()
        cgroups.CgroupHandle("v2", {"pids": group}).attach(plugin)
        assert _populated(layout.parent) == 1
        removed = cgroups.cleanup_stale(layout.parent, cgroups.Hierarchy(str(V2), frozenset(), {}))
        assert removed == [str(group)]
        assert os.waitpid(plugin, 0)[1] == signal.SIGKILL  # killed through cgroup.kill / its pids
        plugin = 0
        assert _populated(layout.parent) == 0 and not group.exists()
        # The daemon's leaf is a sibling of the parent: never touched by the clean-up.
        assert _procs(f"{unit}/daemon") == sorted([daemon, forkserver])

        # A restart that finds itself in the leaf already (DelegateSubgroup=daemon) gets the same layout.
        again = cgroups.prepare_v2_layout(
            "plugins", [daemon, forkserver], V2, proc_self_cgroup=f"0::{unit}/daemon\n"
        )
        assert again.parent == layout.parent and _procs(f"{unit}/daemon") == sorted([daemon, forkserver])
    finally:
        for pid in (daemon, forkserver, plugin):
            if pid:
                _reap(pid)


def test_a_group_holding_foreign_processes_is_refused_and_left_alone(unit: str) -> None:
    assert V2 is not None
    ours, stranger = _sleeper(), _sleeper()
    try:
        for pid in (ours, stranger):
            (_dir(unit) / "cgroup.procs").write_text(str(pid))
        with pytest.raises(SandboxError, match=rf"cgroup {unit} holds processes that are not plugind's "
                           rf"\(pids \[{stranger}\]\), so it is not delegated") as ei:
            cgroups.prepare_v2_layout("plugins", [ours], V2, proc_self_cgroup=f"0::{unit}\n")
        assert ei.value.step == "cgroup"
        assert _procs(unit) == sorted([ours, stranger])
        assert not (_dir(unit) / "daemon").exists() and not (_dir(unit) / "plugins").exists()
    finally:
        _reap(ours)
        _reap(stranger)


def test_enabling_a_controller_the_group_does_not_offer_is_refused_by_name(unit: str) -> None:
    assert V2 is not None
    offered = (_dir(unit) / "cgroup.controllers").read_text().split()
    if "memory" in offered:
        pytest.skip("this cgroup2 mount offers the memory controller")
    with pytest.raises(
        SandboxError,
        match=rf"cannot enable cgroup controller\(s\) memory in {V2}{unit}: {V2}{unit}/cgroup\.controllers "
        r"offers only \[.*\]; delegate them to plugind \(systemd: Delegate=yes",
    ) as ei:
        cgroups.apply_layout([Enable(unit, ("memory",))], V2)
    assert ei.value.step == "cgroup" and "cgroup.controllers" in ei.value.detail
    assert "memory" not in (_dir(unit) / "cgroup.subtree_control").read_text().split()


def test_effective_parent_from_the_real_proc_self_cgroup(unit: str) -> None:
    # What the daemon calls at start-up, run by a process that really sits in the "unit" group, with
    # a hierarchy that claims v2 controllers so that the v2 path is taken on this hybrid host.
    assert V2 is not None
    claims_v2 = cgroups.Hierarchy(str(V2), frozenset({"memory", "cpu", "pids"}), {})
    forkserver = _sleeper()
    go_r, go_w = os.pipe()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the "daemon": waits until it has been put into the unit, as systemd would
        os.close(r)
        os.close(go_w)
        try:
            os.read(go_r, 1)
            ours = [os.getpid(), forkserver]
            out = {"parent": cgroups.effective_parent("auto", "plugins", ours, claims_v2)}
        except BaseException as exc:  # never return into pytest from a forked child
            out = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            os.write(w, json.dumps(out).encode())
            os._exit(0)
    os.close(w)
    os.close(go_r)
    try:
        (_dir(unit) / "cgroup.procs").write_text(str(forkserver))
        (_dir(unit) / "cgroup.procs").write_text(str(pid))
        os.write(go_w, b"g")
        with os.fdopen(r, "rb") as f:
            out = json.loads(f.read())
        os.waitpid(pid, 0)
        assert out == {"parent": f"{unit}/plugins"}
        assert _v2_path_of(forkserver) == f"{unit}/daemon"
        assert _procs(unit) == [] and _dir(f"{unit}/plugins").is_dir()
    finally:
        os.close(go_w)
        _reap(forkserver)


def test_effective_parent_keeps_v1_none_and_absolute_parents() -> None:
    # No layout (and no write) unless v2 is chosen and the parent is relative. (The refusal outside a
    # delegated group is exercised above, inside a test group: running it from this process's own
    # cgroup would, if the check were ever broken, move pytest itself.)
    assert cgroups.effective_parent("v1", "plugind", [os.getpid()], HIER) == "plugind"
    assert cgroups.effective_parent("none", "plugind", [os.getpid()], HIER) == "plugind"
    if V2 is None:
        return
    claims_v2 = cgroups.Hierarchy(str(V2), frozenset({"memory", "cpu", "pids"}), {})
    assert cgroups.effective_parent("v2", "/srv/plugind", [os.getpid()], claims_v2) == "/srv/plugind"
    assert not (V2 / "srv").exists()
