"""The cgroup v2 layout as tables: /proc/self/cgroup + controllers + config -> mkdir / move / enable."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugind.errors import SandboxError
from plugind.sandbox.cgroup_layout import (
    Enable,
    Layout,
    Level,
    Mkdir,
    Move,
    Op,
    delegated_base,
    own_cgroup,
    plan_parent_controllers,
    plan_v2_layout,
    writable_top,
)
from plugind.sandbox.cgroups import Hierarchy, cleanup_stale, create_group, write_v2_limits
from plugind.sandbox.plan import CgroupLimits

UNIT = "/system.slice/plugind.service"
ALL = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc")
HYBRID_SELF = "12:pids:/\n4:memory:/user.slice\n1:name=systemd:/x\n0::/system.slice/plugind.service\n"


@pytest.mark.parametrize(
    ("text", "own"),
    [
        pytest.param("0::/system.slice/plugind.service\n", UNIT, id="v2-unit"),
        pytest.param(HYBRID_SELF, UNIT, id="hybrid-0-line-among-v1-lines"),
        pytest.param("0::/\n", "/", id="root"),
        pytest.param("0::/a//b/\n", "/a/b", id="normalised"),
        pytest.param("0::/x/daemon\n", "/x/daemon", id="already-in-leaf"),
    ],
)
def test_own_cgroup(text: str, own: str) -> None:
    assert own_cgroup(text) == own


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param("4:memory:/a\n1:name=systemd:/a\n", r"no cgroup v2 line \('0::'\)", id="v1-only"),
        pytest.param("", r"no cgroup v2 line", id="empty"),
        pytest.param("0::relative\n", r"malformed cgroup v2 line", id="relative"),
        pytest.param("0::/a/../b\n", r"invalid own cgroup '/a/../b'", id="dotdot"),
    ],
)
def test_own_cgroup_errors(text: str, match: str) -> None:
    with pytest.raises(SandboxError, match=match) as ei:
        own_cgroup(text)
    assert ei.value.step == "cgroup"


@pytest.mark.parametrize(
    ("own", "base"),
    [
        pytest.param(UNIT, UNIT, id="unit"),
        pytest.param(f"{UNIT}/daemon", UNIT, id="delegate-subgroup-daemon"),
        pytest.param(f"{UNIT}/main", f"{UNIT}/main", id="other-subgroup-is-the-base"),
        pytest.param("/", "/", id="root"),
        pytest.param("/daemon", "/", id="root-leaf"),
    ],
)
def test_delegated_base(own: str, base: str) -> None:
    assert delegated_base(own) == base


def _plan(parent: str = "plugins", own: str = UNIT, controllers: tuple[str, ...] = ALL,
          procs: tuple[int, ...] = (100, 200), ours: tuple[int, ...] = (100, 200)) -> Layout:
    return plan_v2_layout(parent, own, base_controllers=controllers, base_procs=procs, our_pids=ours)


WANT = ("memory", "pids", "cpu", "io")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param(
            {},
            Layout(f"{UNIT}/plugins", (
                Mkdir(f"{UNIT}/daemon"), Move(100, f"{UNIT}/daemon"), Move(200, f"{UNIT}/daemon"),
                Enable(UNIT, WANT), Mkdir(f"{UNIT}/plugins"), Enable(f"{UNIT}/plugins", WANT),
            )),
            id="systemd-delegate-yes",
        ),
        pytest.param(
            {"own": f"{UNIT}/daemon", "procs": ()},
            Layout(f"{UNIT}/plugins", (
                Mkdir(f"{UNIT}/daemon"), Move(100, f"{UNIT}/daemon"), Move(200, f"{UNIT}/daemon"),
                Enable(UNIT, WANT), Mkdir(f"{UNIT}/plugins"), Enable(f"{UNIT}/plugins", WANT),
            )),
            id="delegate-subgroup-daemon-already-in-leaf",
        ),
        pytest.param(
            {"controllers": ("memory", "pids")},
            Layout(f"{UNIT}/plugins", (
                Mkdir(f"{UNIT}/daemon"), Move(100, f"{UNIT}/daemon"), Move(200, f"{UNIT}/daemon"),
                Enable(UNIT, ("memory", "pids")), Mkdir(f"{UNIT}/plugins"),
                Enable(f"{UNIT}/plugins", ("memory", "pids")),
            )),
            id="only-available-controllers",
        ),
        pytest.param(
            {"controllers": ()},
            Layout(f"{UNIT}/plugins", (
                Mkdir(f"{UNIT}/daemon"), Move(100, f"{UNIT}/daemon"), Move(200, f"{UNIT}/daemon"),
                Mkdir(f"{UNIT}/plugins"),
            )),
            id="no-controllers-no-enable",
        ),
        pytest.param(
            {"parent": "a/b", "controllers": ("io", "memory"), "procs": (100,)},
            Layout(f"{UNIT}/a/b", (
                Mkdir(f"{UNIT}/daemon"), Move(100, f"{UNIT}/daemon"), Move(200, f"{UNIT}/daemon"),
                Enable(UNIT, ("memory", "io")), Mkdir(f"{UNIT}/a"), Enable(f"{UNIT}/a", ("memory", "io")),
                Mkdir(f"{UNIT}/a/b"), Enable(f"{UNIT}/a/b", ("memory", "io")),
            )),
            id="nested-parent-every-level",
        ),
        pytest.param(
            {"own": "/", "procs": (100,), "ours": (100,), "controllers": ("pids",)},
            Layout("/plugins", (
                Mkdir("/daemon"), Move(100, "/daemon"), Enable("/", ("pids",)),
                Mkdir("/plugins"), Enable("/plugins", ("pids",)),
            )),
            id="container-cgroupns-root",
        ),
        pytest.param(
            {"parent": "/plugind", "procs": (1, 2, 3)},
            Layout("/plugind", ()),
            id="absolute-parent-from-root-no-ops",
        ),
        pytest.param(
            {"parent": "//srv//plugind/", "procs": (1,)},
            Layout("/srv/plugind", ()),
            id="absolute-parent-normalised",
        ),
    ],
)
def test_plan_v2_layout(kwargs: dict[str, object], expected: Layout) -> None:
    assert _plan(**kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param(
            {"own": "/user.slice/user-0.slice/session-3.scope", "procs": (100, 200, 4242, 77)},
            r"cgroup /user\.slice/user-0\.slice/session-3\.scope holds processes that are not "
            r"plugind's \(pids \[77, 4242\]\), so it is not delegated to plugind, and plugind cannot make "
            r"its groups there \(cgroup v2's \"no internal processes\" rule would need those processes "
            r"moved out\): run plugind as the only process of a cgroup delegated to it: under its unit "
            r"\(systemd/plugind\.service: Delegate=yes, nothing else started in it\), or in a scope of "
            r"its own \(systemd-run --scope -p Delegate=yes plugind serve \.\.\.; `make run` does this on "
            r"a systemd host\), or set \[sandboxing\.cgroups\] parent to an absolute path such as "
            r"'/plugind'",
            id="foreign-processes-in-base",
        ),
        pytest.param({"parent": ""}, r"sandboxing\.cgroups\.parent is empty", id="empty"),
        pytest.param({"parent": "/"}, r"'/' is the hierarchy root", id="root"),
        pytest.param(
            {"parent": "../escape"}, r"invalid sandboxing\.cgroups\.parent '\.\./escape'", id="dotdot"
        ),
        pytest.param(
            {"parent": "/a/../b"}, r"invalid sandboxing\.cgroups\.parent '/a/\.\./b'", id="abs-dotdot"
        ),
        pytest.param({"parent": "daemon"}, r"inside the daemon's own leaf 'daemon'", id="daemon-leaf"),
        pytest.param({"parent": "daemon/x"}, r"inside the daemon's own leaf", id="under-daemon-leaf"),
    ],
)
def test_plan_v2_layout_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(SandboxError, match=match) as ei:
        _plan(**kwargs)  # type: ignore[arg-type]
    assert ei.value.step == "cgroup"


def test_foreign_processes_are_refused_before_any_op() -> None:
    # Nothing is planned (so nothing moved) when the base is not ours: fail closed, touch nothing.
    with pytest.raises(SandboxError, match="not delegated"):
        _plan(procs=(100, 200, 1))
    assert _plan(procs=(100,)).ops[0] == Mkdir(f"{UNIT}/daemon")


# --- what the writer may touch, on a plain directory tree standing in for cgroupfs ------------------


def test_cleanup_stale_refuses_the_hierarchy_root(tmp_path: Path) -> None:
    # An empty parent would mean "every group of the host"; the foreign group must survive.
    (tmp_path / "system.slice" / "other.service").mkdir(parents=True)
    hier = Hierarchy(str(tmp_path), frozenset(), {})
    for parent in ("", "/", "//", "/./", "a/../.."):
        with pytest.raises(SandboxError, match=r"invalid cgroup parent .*: name a group below") as ei:
            cleanup_stale(parent, hier)
        assert ei.value.step == "cgroup"
    assert (tmp_path / "system.slice" / "other.service").is_dir()


# --- controllers on the way to a plugin parent (load time) ------------------------------------------


@pytest.mark.parametrize(
    ("parent", "own", "top"),
    [
        pytest.param(f"{UNIT}/plugind", f"{UNIT}/daemon", UNIT, id="delegated-layout"),
        pytest.param(f"{UNIT}/a/b", f"{UNIT}/daemon", UNIT, id="delegated-nested"),
        pytest.param(f"{UNIT}/plugind", UNIT, UNIT, id="absolute-inside-own-unit"),
        pytest.param("/plugind", f"{UNIT}/daemon", "/", id="absolute-elsewhere"),
        pytest.param(f"{UNIT}x/plugind", UNIT, "/", id="sibling-with-common-prefix"),
        pytest.param("/srv/plugind", "/", "/", id="daemon-at-root"),
        pytest.param("/plugind", "/daemon", "/", id="root-leaf"),
    ],
)
def test_writable_top(parent: str, own: str, top: str) -> None:
    assert writable_top(parent, own) == top


ROOT_ALL = Level("/", ALL, ("cpu", "io", "memory", "pids"))
MPC = ("memory", "pids", "cpu")


def _lv(path: str, offered: tuple[str, ...] | None, enabled: tuple[str, ...] = (),
        procs: tuple[int, ...] = ()) -> Level:
    return Level(path, offered, enabled, procs)


@pytest.mark.parametrize(
    ("levels", "ops"),
    [
        pytest.param(
            [_lv(UNIT, ALL[:6], WANT), _lv(f"{UNIT}/plugind", WANT, WANT)], (), id="prepared-parent-no-write"
        ),
        pytest.param(
            [_lv(UNIT, MPC, MPC), _lv(f"{UNIT}/plugind", MPC, MPC)], (), id="io-not-delegated-left-out"
        ),
        pytest.param(
            # The review's case: an absolute parent whose own parent hands it nothing.
            [ROOT_ALL, _lv("/srv", ALL, ()), _lv("/srv/plugind", (), ())],
            (Enable("/srv", WANT), Enable("/srv/plugind", WANT)),
            id="absolute-parent-below-a-group-delegating-nothing",
        ),
        pytest.param(
            [ROOT_ALL, _lv("/plugind", None)],
            (Mkdir("/plugind"), Enable("/plugind", WANT)),
            id="absolute-parent-made",
        ),
        pytest.param(
            [_lv("/", ALL, ("memory",)), _lv("/a", ("memory",), ("memory",)), _lv("/a/b", None)],
            (Enable("/", ("pids", "cpu", "io")), Enable("/a", ("pids", "cpu", "io")),
             Mkdir("/a/b"), Enable("/a/b", WANT)),
            id="enabled-only-where-missing",
        ),
        pytest.param(
            [_lv("/", ("memory", "pids", "cpu"), ()), _lv("/p", None)],
            (Enable("/", MPC), Mkdir("/p"), Enable("/p", MPC)),
            id="kernel-without-io",
        ),
        pytest.param(
            [ROOT_ALL, _lv("/srv", ALL, WANT), _lv("/srv/p", WANT, (), ())],
            (Enable("/srv/p", WANT),),
            id="only-the-parent-missing",
        ),
        pytest.param(
            # io is offered to /srv, which cannot pass it on while it holds a process: left out.
            [_lv("/", ALL, WANT), _lv("/srv", WANT, MPC, (42,)), _lv("/srv/p", None)],
            (Mkdir("/srv/p"), Enable("/srv/p", MPC)),
            id="optional-io-blocked-by-processes-left-out",
        ),
        pytest.param(
            # A level that already passes everything on may hold processes (a cgroupns root does).
            [_lv("/", ALL, WANT, (1, 2)), _lv("/p", None)],
            (Mkdir("/p"), Enable("/p", WANT)),
            id="nothing-to-enable-where-processes-are",
        ),
    ],
)
def test_plan_parent_controllers(levels: list[Level], ops: tuple[Op, ...]) -> None:
    assert plan_parent_controllers(levels) == ops


NO_INTERNAL = (
    r"and cgroup v2 lets a group hand controllers to its children only while it holds none \(the "
    r"\"no internal processes\" rule\), so it cannot enable {} for them: run plugind as the only "
    r"process of a cgroup delegated to it: under its unit"
)


@pytest.mark.parametrize(
    ("levels", "match"),
    [
        pytest.param(
            [_lv(UNIT, ("pids",), ("pids",)), _lv(f"{UNIT}/plugind", ("pids",), ("pids",))],
            rf"^cannot give the plugin groups under {UNIT}/plugind the cgroup controller\(s\) memory, cpu: "
            rf"{UNIT} is not given memory, cpu \(its cgroup\.controllers: pids\): delegate them to {UNIT}: "
            r"under systemd, Delegate=yes in plugind's unit \(or at least Delegate=memory pids cpu io\)$",
            id="unit-delegated-pids-only",
        ),
        pytest.param(
            [_lv(UNIT, (), ()), _lv(f"{UNIT}/plugind", (), ())],
            rf"controller\(s\) memory, pids, cpu: {UNIT} is not given memory, pids, cpu \(its "
            r"cgroup\.controllers: none\)",
            id="unit-without-delegate",
        ),
        pytest.param(
            [_lv("/", ("cpuset",), ()), _lv("/plugind", None)],
            r"under /plugind the cgroup controller\(s\) memory, pids, cpu: / is not given memory, pids, "
            r"cpu \(its cgroup\.controllers: cpuset\): the root of the cgroup2 hierarchy here does not "
            r"offer them: on a hybrid host they are bound to cgroup v1 \(set sandboxing\.cgroups\.backend "
            r"= 'auto' or 'v1'\); in a container, the container's cgroup was not given them \(delegate "
            r"them to it\)$",
            id="hybrid-root",
        ),
        pytest.param(
            [ROOT_ALL, _lv("/user.slice/s.scope", ALL, (), (77, 4242)), _lv("/user.slice/s.scope/p", None)],
            r"^cannot give the plugin groups under /user\.slice/s\.scope/p the cgroup controller\(s\) "
            r"memory, pids, cpu: cgroup /user\.slice/s\.scope holds processes \(pids \[77, 4242\]\), "
            + NO_INTERNAL.format("memory, pids, cpu"),
            id="absolute-parent-below-a-group-with-processes",
        ),
        pytest.param(
            [ROOT_ALL, _lv("/srv", ALL, ("memory",)), _lv("/srv/p", ("memory",), ("memory",), (5,))],
            r"controller\(s\) pids, cpu: cgroup /srv/p holds processes \(pids \[5\]\), "
            + NO_INTERNAL.format("pids, cpu"),
            id="the-parent-itself-holds-a-process",
        ),
        pytest.param(
            [_lv(UNIT, ("pids", "cpu"), ("pids", "cpu")), _lv(f"{UNIT}/p", ("pids", "cpu"), (), (9,))],
            rf"controller\(s\) memory, pids, cpu: {UNIT} is not given memory \(its cgroup\.controllers: "
            rf"pids cpu\): delegate them to {UNIT}: .*; cgroup {UNIT}/p holds processes \(pids \[9\]\), "
            + NO_INTERNAL.format("pids, cpu"),
            id="both-reasons",
        ),
        pytest.param([_lv("/gone", None)], r"the top of a cgroup path must exist", id="top-missing"),
    ],
)
def test_plan_parent_controllers_errors(levels: list[Level], match: str) -> None:
    with pytest.raises(SandboxError, match=match) as ei:
        plan_parent_controllers(levels)
    assert ei.value.step == "cgroup"


# --- the writer on a plain directory tree standing in for cgroupfs -----------------------------------


def _fake_v2(root: Path, levels: dict[str, tuple[str, str]]) -> Hierarchy:
    """Groups `path -> (cgroup.controllers, cgroup.subtree_control)` under `root`, none holding a process."""
    for path, (offered, enabled) in levels.items():
        d = root / path.lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.controllers").write_text(offered + "\n")
        (d / "cgroup.subtree_control").write_text(enabled + "\n")
        (d / "cgroup.procs").write_text("")
    return Hierarchy(str(root), frozenset({"cpu", "io", "memory", "pids"}), {})


def test_v2_group_under_a_prepared_parent_writes_nothing_above_it(tmp_path: Path) -> None:
    # systemd is the only writer above the unit: with the delegated layout in place (the parent
    # already passes its controllers on), creating a plugin group must not write any level above it,
    # although io is offered at the root and not passed on.
    hier = _fake_v2(tmp_path, {
        "/": ("cpu io memory pids", "cpu memory pids"),
        "/system.slice": ("cpu memory pids", "cpu memory pids"),
        UNIT: ("cpu memory pids", "cpu memory pids"),
        f"{UNIT}/plugins": ("cpu memory pids", "cpu memory pids"),
    })
    handle = create_group("v2", f"{UNIT}/plugins", "p", CgroupLimits(memory_bytes=1 << 20), hier,
                          proc_self_cgroup=f"0::{UNIT}/daemon\n")
    assert (tmp_path / "cgroup.subtree_control").read_text() == "cpu memory pids\n"
    assert (tmp_path / "system.slice" / "cgroup.subtree_control").read_text() == "cpu memory pids\n"
    assert (tmp_path / UNIT.lstrip("/") / "plugins" / "p" / "memory.max").read_text() == str(1 << 20)
    # cgroupfs would have made memory.swap.max with the memory controller; this tree has none.
    assert handle.gaps == ("memory.swap.max (no swap accounting in this kernel, so its swap use is not "
                           "limited)",)


def test_v2_absolute_parent_is_enabled_where_missing_and_nothing_above(tmp_path: Path) -> None:
    # An absolute parent outside the daemon's own cgroup that hands nothing down yet: enabled there,
    # levels that already pass everything on are not written. (Several levels at once need the
    # kernel to offer what the level above enables: tests/privileged/test_cgroup_v2_layout.py.)
    hier = _fake_v2(tmp_path, {
        "/": ("cpu io memory pids", "cpu io memory pids"),
        "/srv": ("cpu io memory pids", "cpu io memory pids"),
        "/srv/plugind": ("cpu io memory pids", ""),
    })
    create_group("v2", "/srv/plugind", "p", CgroupLimits(), hier, proc_self_cgroup=f"0::{UNIT}/daemon\n")
    assert (tmp_path / "cgroup.subtree_control").read_text() == "cpu io memory pids\n"
    assert (tmp_path / "srv" / "cgroup.subtree_control").read_text() == "cpu io memory pids\n"
    assert (tmp_path / "srv" / "plugind" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu +io"
    assert (tmp_path / "srv" / "plugind" / "p" / "cpu.max").read_text() == "max 100000"


def test_v2_parent_without_controllers_fails_before_any_group_is_made(tmp_path: Path) -> None:
    hier = _fake_v2(tmp_path, {"/": ("cpu io memory pids", "cpu io memory pids"), UNIT: ("pids", "pids")})
    own = f"0::{UNIT}/daemon\n"
    with pytest.raises(SandboxError, match=rf"under {UNIT}/plugind the cgroup controller\(s\) memory, cpu: "
                       rf"{UNIT} is not given memory, cpu") as ei:
        create_group("v2", f"{UNIT}/plugind", "p", CgroupLimits(), hier, proc_self_cgroup=own)
    assert ei.value.step == "cgroup"
    assert ei.value.detail == f"controllers missing under {UNIT}/plugind: memory cpu"
    assert not (tmp_path / UNIT.lstrip("/") / "plugind").exists()
    assert (tmp_path / UNIT.lstrip("/") / "cgroup.subtree_control").read_text() == "pids\n"


LIMITS = CgroupLimits(memory_bytes=64 << 20, cpu_quota_us=50_000, pids_max=32, io_weight=200)


def test_best_effort_limits_are_skipped_only_when_the_kernel_has_no_such_file(tmp_path: Path) -> None:
    group = tmp_path / "p"
    group.mkdir()
    for name in ("memory.max", "cpu.max", "pids.max"):  # what the memory, cpu, pids controllers make
        (group / name).write_text("max\n")
    gaps = write_v2_limits(group, LIMITS)
    assert gaps == ["memory.swap.max (no swap accounting in this kernel, so its swap use is not limited)"]
    assert sorted(p.name for p in group.iterdir()) == ["cpu.max", "memory.max", "pids.max"]
    assert (group / "memory.max").read_text() == str(64 << 20)
    # With the files there, both are written and nothing is reported.
    (group / "memory.swap.max").write_text("max\n")
    (group / "io.weight").write_text("default 100\n")
    assert write_v2_limits(group, LIMITS) == []
    assert (group / "memory.swap.max").read_text() == "0"
    assert (group / "io.weight").read_text() == "default 200"


def test_a_best_effort_file_that_exists_but_cannot_be_written_fails(tmp_path: Path) -> None:
    group = tmp_path / "p"
    group.mkdir()
    (group / "memory.swap.max").symlink_to("/dev/full")  # exists; every write fails with ENOSPC
    with pytest.raises(SandboxError, match=r"cannot write '0' to .*/p/memory\.swap\.max: No space") as ei:
        write_v2_limits(group, LIMITS)
    assert ei.value.step == "cgroup" and ei.value.detail.endswith(": ENOSPC")
