"""The cgroup v2 layout writer against the real kernel, in groups of the tests' own on this host's
cgroup2 mount (with whatever controllers reach them: none on a hybrid host, memory, cpu, pids and
io on a v2 host).

A unique group made by each test stands in for the daemon's unit cgroup; real processes are moved
with `cgroup.procs` and checked in `/proc/PID/cgroup` and `cgroup.events`. Only groups the test
created are touched, and all of them are removed afterwards.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cgroup_host import HOST, REQUIRED, WANTED, session_parent

from plugind.errors import SandboxError
from plugind.sandbox import cgroups
from plugind.sandbox.cgroup_layout import Enable, own_cgroup
from plugind.sandbox.plan import CgroupLimits

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(HOST.v2_mount is None, reason="no cgroup2 mount on this host"),
]
V2 = HOST.v2_mount or Path("/nonexistent")
_n = itertools.count()


@contextmanager
def _unit(delegate: tuple[str, ...]) -> Iterator[str]:
    """`<tests' v2 parent>/layout-N/svc`, whose parent hands it `delegate` (those that reach it)."""
    sp = session_parent(limits=False)
    assert sp.v2_path is not None
    top = f"{sp.v2_path}/layout-{next(_n)}"
    _dir(top).mkdir()
    offered = _controllers(top)
    enable = [c for c in delegate if c in offered]
    if enable:
        (_dir(top) / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in enable))
    _dir(f"{top}/svc").mkdir()
    try:
        yield f"{top}/svc"
    finally:
        dirs = sorted((p for p in _dir(top).rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*dirs, _dir(top)]:
            cgroups.CgroupHandle("v2", {"pids": d}).remove()
        assert not _dir(top).exists()


@pytest.fixture
def unit() -> Iterator[str]:
    """A unit cgroup given every controller plugind wants that reaches the tests' parent, as
    systemd gives a unit with Delegate=yes."""
    with _unit(WANTED) as u:
        if HOST.layout == "v2":  # else this would prove nothing about the controllers
            assert _controllers(u) >= REQUIRED, _controllers(u)
        yield u


@pytest.fixture
def bare_unit() -> Iterator[str]:
    """A unit cgroup given no controller at all (a unit without Delegate=yes, on any host)."""
    with _unit(()) as u:
        yield u


def _dir(path: str) -> Path:
    return V2 / path.lstrip("/")


def _controllers(path: str) -> set[str]:
    return set((_dir(path) / "cgroup.controllers").read_text().split())


def _subtree(path: str) -> set[str]:
    return set((_dir(path) / "cgroup.subtree_control").read_text().split())


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
    delegated = _controllers(unit) & set(WANTED)  # none on a hybrid host; memory, cpu, pids, io on v2
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
        # Every controller the unit was given is handed down to the plugin groups, and only those.
        assert _subtree(unit) == _controllers(layout.parent) == _subtree(layout.parent) == delegated
        assert _subtree(f"{unit}/daemon") == set()

        # A plugin group under the parent, left populated as a SIGKILLed daemon would leave it.
        group = _dir(layout.parent) / "p1"
        group.mkdir()
        cgroups.CgroupHandle("v2", {"pids": group}).attach(plugin)
        assert _populated(layout.parent) == 1
        assert (group / "memory.max").exists() == ("memory" in delegated)
        assert (group / "pids.max").exists() == ("pids" in delegated)
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
    ours, stranger = _sleeper(), _sleeper()
    try:
        for pid in (ours, stranger):
            (_dir(unit) / "cgroup.procs").write_text(str(pid))
        with pytest.raises(SandboxError, match=rf"cgroup {unit} holds processes that are not plugind's "
                           rf"\(pids \[{stranger}\]\), so it is not delegated .*: run plugind as the only "
                           r"process of a cgroup delegated to it: .*systemd-run --scope -p Delegate=") as ei:
            cgroups.prepare_v2_layout("plugins", [ours], V2, proc_self_cgroup=f"0::{unit}\n")
        assert ei.value.step == "cgroup"
        assert _procs(unit) == sorted([ours, stranger])
        assert not (_dir(unit) / "daemon").exists() and not (_dir(unit) / "plugins").exists()
        assert _subtree(unit) == set()
    finally:
        _reap(ours)
        _reap(stranger)


def test_enabling_a_controller_the_group_is_not_given_is_refused_by_name(bare_unit: str) -> None:
    # Its parent hands it nothing, so memory is not offered there whatever the host has.
    unit = bare_unit
    assert _controllers(unit) == set()
    with pytest.raises(
        SandboxError,
        match=rf"cannot enable cgroup controller\(s\) memory in {V2}{unit}: {V2}{unit}/cgroup\.controllers "
        r"offers only \[\]; delegate them to plugind \(systemd: Delegate=yes",
    ) as ei:
        cgroups.apply_layout([Enable(unit, ("memory",))], V2)
    assert ei.value.step == "cgroup" and "cgroup.controllers" in ei.value.detail
    assert _subtree(unit) == set()


def test_enabling_a_controller_in_a_group_holding_a_process_names_the_rule_and_the_fix(unit: str) -> None:
    # The "no internal processes" rule: a group with a process of its own hands no domain controller
    # (memory, io) down; the kernel says only EBUSY, the error says why and what to do. Threaded
    # controllers (cpu, pids) are exempt: the kernel lets them be enabled there.
    given = sorted(_controllers(unit) & {"memory", "io"})
    if not given:
        pytest.skip(f"no controller reaches the tests' cgroup2 groups here ({HOST.describe()})")
    sleeper = _sleeper()
    try:
        (_dir(unit) / "cgroup.procs").write_text(str(sleeper))
        with pytest.raises(
            SandboxError,
            match=rf"^cannot enable {given[0]} in {V2}{unit}/cgroup\.subtree_control: cgroup {unit} holds "
            rf"processes \(pids \[{sleeper}\]\), and cgroup v2 lets a group hand controllers to its children "
            r"only while it holds none \(the \"no internal processes\" rule\), so it cannot enable "
            rf"{given[0]} for them: run plugind as the only process of a cgroup delegated to it: under its "
            r"unit \(systemd/plugind\.service: Delegate=yes, nothing else started in it\), or in a scope",
        ) as ei:
            cgroups.apply_layout([Enable(unit, (given[0],))], V2)
        assert ei.value.step == "cgroup" and ei.value.detail.endswith(": EBUSY")
        assert _subtree(unit) == set() and _procs(unit) == [sleeper]
    finally:
        _reap(sleeper)


@pytest.fixture
def holder() -> Iterator[str]:
    """A new group under the tests' cgroup2 parent that hands nothing down (its subtree_control empty)."""
    sp = session_parent(limits=False)
    assert sp.v2_path is not None
    top = f"{sp.v2_path}/abs-{next(_n)}"
    _dir(top).mkdir()
    try:
        yield top
    finally:
        for d in sorted((p for p in _dir(top).rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            cgroups.CgroupHandle("v2", {"pids": d}).remove()
        cgroups.CgroupHandle("v2", {"pids": _dir(top)}).remove()
        assert not _dir(top).exists()


def test_an_absolute_parent_below_a_group_handing_nothing_down_gets_its_controllers(holder: str) -> None:
    # An absolute plugin parent `<holder>/plugind` whose own parent hands nothing down: the
    # controllers are enabled where missing on the way (this process's cgroup is not above it, so
    # plugind may write from the root down), or, where they do not reach the tests' groups (a hybrid
    # host), the load fails before any group is made, naming them.
    assert _subtree(holder) == set()
    parent = f"{holder}/plugind"
    hier = cgroups.Hierarchy(str(V2), HOST.v2_controllers, {})
    limits = CgroupLimits(memory_bytes=32 << 20, cpu_quota_us=20_000, pids_max=8)
    if not set(REQUIRED) <= _controllers(holder):
        with pytest.raises(SandboxError, match=rf"^cannot give the plugin groups under {parent} the cgroup "
                           r"controller\(s\) memory, pids, cpu: ") as ei:
            cgroups.create_group("v2", parent, "p", limits, hier)
        assert ei.value.detail == f"controllers missing under {parent}: memory pids cpu"
        assert not _dir(parent).exists()
        return
    group = cgroups.create_group("v2", parent, "p", limits, hier)
    assert _subtree(holder) >= REQUIRED and _subtree(parent) >= REQUIRED
    assert _controllers(f"{parent}/p") >= REQUIRED
    assert (_dir(f"{parent}/p") / "memory.max").read_text().strip() == str(32 << 20)
    assert (_dir(f"{parent}/p") / "cpu.max").read_text().split() == ["20000", "100000"]
    assert (_dir(f"{parent}/p") / "pids.max").read_text().strip() == "8"
    assert group.gaps == (() if (_dir(f"{parent}/p") / "memory.swap.max").exists() else (
        "memory.swap.max (no swap accounting in this kernel, so its swap use is not limited)",))


def test_an_absolute_parent_below_a_group_holding_a_process_is_refused_naming_it(holder: str) -> None:
    if not set(REQUIRED) <= _controllers(holder):
        pytest.skip(f"memory, cpu and pids do not reach the tests' cgroup2 groups here ({HOST.describe()})")
    sleeper = _sleeper()
    try:
        (_dir(holder) / "cgroup.procs").write_text(str(sleeper))
        hier = cgroups.Hierarchy(str(V2), HOST.v2_controllers, {})
        with pytest.raises(SandboxError, match=rf"^cannot give the plugin groups under {holder}/plugind the "
                           rf"cgroup controller\(s\) memory, pids, cpu: cgroup {holder} holds processes "
                           rf"\(pids \[{sleeper}\]\), and cgroup v2 lets a group hand controllers to its "
                           r"children only while it holds none \(the \"no internal processes\" rule\)"):
            cgroups.create_group("v2", f"{holder}/plugind", "p", CgroupLimits(), hier)
        assert _subtree(holder) == set() and not _dir(f"{holder}/plugind").exists()
    finally:
        _reap(sleeper)


def test_effective_parent_from_the_real_proc_self_cgroup(unit: str) -> None:
    # What the daemon calls at start-up, run by a process that really sits in the "unit" group, with
    # a hierarchy that claims v2 controllers so that the v2 path is taken on a hybrid host too.
    delegated = _controllers(unit) & set(WANTED)
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
        assert _controllers(f"{unit}/plugins") == _subtree(f"{unit}/plugins") == delegated
    finally:
        os.close(go_w)
        _reap(forkserver)


def test_effective_parent_keeps_v1_none_and_absolute_parents() -> None:
    # No layout (and no write) unless v2 is chosen and the parent is relative. (The refusal outside a
    # delegated group is exercised above, inside a test group: running it from this process's own
    # cgroup would, if the check were ever broken, move pytest itself.)
    hier = cgroups.detect()
    assert cgroups.effective_parent("v1", "plugind", [os.getpid()], hier) == "plugind"
    assert cgroups.effective_parent("none", "plugind", [os.getpid()], hier) == "plugind"
    claims_v2 = cgroups.Hierarchy(str(V2), frozenset({"memory", "cpu", "pids"}), {})
    srv_existed = (V2 / "srv").exists()
    assert cgroups.effective_parent("v2", "/srv/plugind", [os.getpid()], claims_v2) == "/srv/plugind"
    assert (V2 / "srv").exists() == srv_existed
