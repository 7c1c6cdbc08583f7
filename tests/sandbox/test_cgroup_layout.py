"""The cgroup v2 layout as tables: /proc/self/cgroup + controllers + config -> mkdir / move / enable."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugind.errors import SandboxError
from plugind.sandbox.cgroup_layout import (
    Enable,
    Layout,
    Mkdir,
    Move,
    delegated_base,
    own_cgroup,
    plan_v2_layout,
)
from plugind.sandbox.cgroups import Hierarchy, cleanup_stale, create_group
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
            r"plugind's \(pids \[77, 4242\]\), so it is not delegated to plugind: run it under systemd "
            r"with Delegate=yes, or set sandboxing\.cgroups\.parent to an absolute path",
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


def test_v2_group_under_a_prepared_parent_writes_nothing_above_it(tmp_path: Path) -> None:
    # systemd is the only writer above the unit: with the delegated layout in place (the parent
    # already passes its controllers on), creating a plugin group must not write any level above it.
    unit = tmp_path / "system.slice" / "plugind.service"
    parent = unit / "plugins"
    parent.mkdir(parents=True)
    for level, offered, enabled in [
        (tmp_path, "cpu io memory pids", "cpu memory pids"),  # io not passed on by systemd
        (tmp_path / "system.slice", "cpu memory pids", "cpu memory pids"),
        (unit, "cpu memory pids", "cpu memory pids"),
        (parent, "cpu memory pids", "cpu memory pids"),
    ]:
        (level / "cgroup.controllers").write_text(offered + "\n")
        (level / "cgroup.subtree_control").write_text(enabled + "\n")
    hier = Hierarchy(str(tmp_path), frozenset({"cpu", "io", "memory", "pids"}), {})
    create_group("v2", "/system.slice/plugind.service/plugins", "p", CgroupLimits(memory_bytes=1 << 20), hier)
    assert (tmp_path / "cgroup.subtree_control").read_text() == "cpu memory pids\n"
    assert (tmp_path / "system.slice" / "cgroup.subtree_control").read_text() == "cpu memory pids\n"
    assert (parent / "p" / "memory.max").read_text() == str(1 << 20)
