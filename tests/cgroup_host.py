"""What this host's cgroups offer, read from the kernel directly, and a cgroup parent of the tests' own.

The detection reads /proc/self/mountinfo, /proc/cgroups, /proc/self/cgroup and the cgroup files
itself, never through `plugind.sandbox.cgroups`: a test whose expectations came from the code under
test could not catch that code's mistakes (only removing leftovers of a killed session uses it).

    layout    memory, cpu and pids controllers are in        the tests' groups live under
    v1        cgroup v1 hierarchies (legacy or hybrid host)  /<each v1 mount>/plugind-tests-PID
    v2        the cgroup2 hierarchy                          <base>/plugind-tests-PID, see below
    v2-bare   nowhere, but cgroup2 is mounted (a container   <base>/plugind-tests-PID (tests that
              nobody delegated controllers to)                need limits skip, saying so)
    none      nowhere                                        (as v2-bare, without a cgroup2 group)

A cgroup2 mount beside v1 controllers (hybrid) also gets `<base>/plugind-tests-PID`, for the tests
of plugind's v2 code.

On cgroup v2 a group can hand controllers to its children only while it holds no process itself
(the "no internal processes" rule; the hierarchy root is exempt), so the base is, in this order:
the root, when this process sits there; this process's own cgroup, when it holds nothing but this
process, which then moves into a leaf `pytest` inside it (as the daemon moves into `daemon`); else
the parent of its own cgroup (under systemd a slice, which never holds processes), the tests'
groups then sitting beside their own. Controllers the host offers but that do not reach the base
are enabled on the way down from the root, only where missing, as plugind does for an absolute
parent. At the end the tests' parent is removed and the process moves back where it was.

The session fixture (`cgroup_session`, tests/conftest.py) makes that parent once for every test
directory that asks for it. Under it, `unique_parent()` gives a test a plugin parent of its own, and
`daemon_group()` gives a test daemon what a `Delegate=yes` unit gives the real one: on the v2
backend a group of its own that it enters at exec and is alone in, so it makes its own layout
(`<group>/daemon`, `<group>/plugind`) with the default relative parent; on v1 a unique parent.
"""

from __future__ import annotations

import itertools
import os
import pwd
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from plugind.sandbox import cgroups

REQUIRED = frozenset({"memory", "cpu", "pids"})  # what plugind's cgroup step needs
WANTED = ("memory", "pids", "cpu", "io")  # what it enables when offered
LEAF = "pytest"
V1_NAMES = ("cpuset", "cpu", "cpuacct", "blkio", "memory", "devices", "freezer", "net_cls", "perf_event",
            "net_prio", "hugetlb", "pids", "rdma", "misc")


# --- mounts and the host's layout ----------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    point: str
    fstype: str
    super_options: tuple[str, ...]


def mounts(text: str | None = None) -> list[Mount]:
    """The mounts of this process's mount namespace, in mount order."""
    if text is None:
        text = Path("/proc/self/mountinfo").read_text()
    out = []
    for line in text.splitlines():
        pre, _, post = line.partition(" - ")
        fields, after = pre.split(), post.split()
        point = fields[4].replace("\\040", " ")
        out.append(Mount(point, after[0], tuple(after[2].split(",")) if len(after) > 2 else ()))
    return out


def fstype_of(path: str | os.PathLike[str]) -> str:
    """The type of the filesystem that holds `path` on this host (the innermost mount over it)."""
    real = os.path.realpath(path)
    best: Mount | None = None
    for m in mounts():  # a later mount on the same point hides an earlier one
        inside = real == m.point or real.startswith(m.point.rstrip("/") + "/")
        if inside and (best is None or len(m.point) >= len(best.point)):
            best = m
    assert best is not None, f"no mount holds {real}"
    return best.fstype


def own_v2_cgroup(text: str | None = None) -> str | None:
    """This process's cgroup in the v2 hierarchy (the `0::` line of /proc/self/cgroup), if any."""
    if text is None:
        text = Path("/proc/self/cgroup").read_text()
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def _words(path: Path) -> frozenset[str]:
    return frozenset(path.read_text().split())


@dataclass(frozen=True)
class CgroupHost:
    """Where the controllers are on this host, and where this process sits."""

    v2_mount: Path | None
    v2_controllers: frozenset[str]  # what the cgroup2 root (as this process sees it) offers
    v1_mounts: dict[str, Path] = field(default_factory=dict)  # controller -> its v1 mount
    own_v2: str = "/"

    @property
    def layout(self) -> str:
        if set(self.v1_mounts) >= REQUIRED:
            return "v1"
        if self.v2_mount is not None and self.v2_controllers >= REQUIRED:
            return "v2"
        return "v2-bare" if self.v2_mount is not None else "none"

    @property
    def backend(self) -> str | None:
        """The cgroup backend plugind must pick here ('auto'), None if the host offers none."""
        return {"v1": "v1", "v2": "v2"}.get(self.layout)

    @property
    def roots(self) -> list[Path]:
        """Every cgroup mount a test's group can show up in."""
        out = list(dict.fromkeys(self.v1_mounts.values()))
        return out + ([self.v2_mount] if self.v2_mount is not None else [])

    def v2(self, path: str) -> Path:
        """A group's directory from its absolute path in the v2 hierarchy."""
        assert self.v2_mount is not None, "no cgroup2 mount on this host"
        return self.v2_mount / path.lstrip("/")

    def describe(self) -> str:
        v1 = " ".join(sorted(self.v1_mounts)) or "none"
        offered = " ".join(sorted(self.v2_controllers))
        v2 = f"{self.v2_mount} offering [{offered}]" if self.v2_mount else "not mounted"
        return f"cgroup layout {self.layout}: v1 controllers [{v1}]; cgroup2 {v2}; we are in {self.own_v2}"


def detect() -> CgroupHost:
    """Read this host's cgroup layout from /proc/self/mountinfo, /proc/cgroups and /proc/self/cgroup."""
    v2: Path | None = None
    v1: dict[str, Path] = {}
    try:
        known = {ln.split()[0] for ln in Path("/proc/cgroups").read_text().splitlines() if ln[:1] != "#"}
    except OSError:  # a kernel without /proc/cgroups: the v1 controllers by name
        known = set(V1_NAMES)
    for m in mounts():
        if m.fstype == "cgroup2" and v2 is None:
            v2 = Path(m.point)
        elif m.fstype == "cgroup":
            for c in m.super_options:
                if c in known:  # the others are mount options (rw, name=systemd, ...)
                    v1.setdefault(c, Path(m.point))
    controllers = _words(v2 / "cgroup.controllers") if v2 is not None else frozenset()
    return CgroupHost(v2, controllers, v1, own_v2_cgroup() or "/")


HOST = detect()


# --- where the tests may make groups ------------------------------------------------------------


def _parent_of(path: str) -> str:
    return "/" + "/".join([p for p in path.split("/") if p][:-1])


def _procs(d: Path) -> set[int]:
    return {int(x) for x in d.joinpath("cgroup.procs").read_text().split()}


def _is_hierarchy_root(d: Path) -> bool:
    # cgroup.type exists on every group but the real root (a cgroup namespace's root has it too).
    return not d.joinpath("cgroup.type").exists()


@dataclass(frozen=True)
class V2Base:
    """Where the tests' parent goes on cgroup v2, and the leaf this process must move to first."""

    base: str  # absolute in the v2 hierarchy
    leaf: str | None  # then the base (this process's own cgroup) holds no process
    how: str


def choose_v2_base(host: CgroupHost, pid: int, wanted: Iterable[str] = WANTED) -> V2Base | str:
    """The base for the tests' parent on this host's cgroup2 mount, or why there is none."""
    own = host.own_v2
    if not set(wanted) & host.v2_controllers:
        return V2Base(own, None, f"in this process's cgroup {own} (no controller to hand down here)")
    own_dir = host.v2(own)
    if own == "/" and _is_hierarchy_root(own_dir):
        return V2Base("/", None, "at the hierarchy root, where this process sits (exempt from the rule)")
    if _procs(own_dir) == {pid}:
        leaf = f"{own.rstrip('/')}/{LEAF}"
        return V2Base(own, leaf, f"in this process's own cgroup {own}, the process moved into {leaf}")
    if own != "/":
        parent = _parent_of(own)
        parent_dir = host.v2(parent)
        if not _procs(parent_dir) or _is_hierarchy_root(parent_dir):
            return V2Base(parent, None, f"beside this process's cgroup {own}, which holds other processes")
    return (
        f"cgroup v2: {own} holds other processes besides this one and the group above it cannot be "
        "used, so no group here may hand controllers to its children (no internal processes rule); "
        "run the tests as the only process of a delegated cgroup (systemd-run --scope -p Delegate=yes)"
    )


def enable(d: Path, controllers: Iterable[str]) -> list[str]:
    """Enable, in `d`'s subtree_control, those of `controllers` it offers and has not enabled."""
    offered, enabled = _words(d / "cgroup.controllers"), _words(d / "cgroup.subtree_control")
    missing = [c for c in controllers if c in offered and c not in enabled]
    if missing:
        (d / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in missing))
    return missing


@dataclass
class SessionParent:
    """The session's own cgroup parent: made at the start, removed (checked empty) at the end."""

    host: CgroupHost
    path: str  # for plugin groups, in the hierarchy of the host's backend (v1: in every v1 mount)
    v2_path: str | None  # in the cgroup2 hierarchy, if mounted (on a v2 host the same as `path`)
    how: str
    leaf: str | None = None  # where this process moved on v2, if it did
    enabled: list[tuple[str, list[str]]] = field(default_factory=list)  # (group, controllers) we enabled

    @property
    def summary(self) -> str:
        enabled = ", ".join(f"+{' +'.join(cs)} in {g}" for g, cs in self.enabled) or "none"
        return (f"tests' cgroup parent {self.path} (cgroup2: {self.v2_path}), {self.how}; "
                f"controllers enabled on the way: {enabled}")


def prepare(host: CgroupHost = HOST, wanted: Iterable[str] = WANTED) -> SessionParent | str:
    """Make the tests' parent (see the module's docstring); why not, if v2 leaves no room."""
    wanted = tuple(wanted)
    if os.geteuid() != 0:
        return "needs root to create cgroups"
    name = f"plugind-tests-{os.getpid()}"
    chosen = choose_v2_base(host, os.getpid(), wanted) if host.v2_mount is not None else "no cgroup2 mount"
    if isinstance(chosen, str):
        if host.layout != "v1":
            return chosen
        sp = SessionParent(host, f"/{name}", None, f"in each v1 hierarchy's root ({chosen})")
        remove_stale_sessions(r / name for r in v1_roots(host))
        return sp
    v2_path = f"{chosen.base.rstrip('/')}/{name}"
    path = v2_path if host.layout != "v1" else f"/{name}"
    sp = SessionParent(host, path, v2_path, chosen.how)
    remove_stale_sessions([*(r / path.lstrip("/") for r in v1_roots(host)), host.v2(v2_path)])
    if chosen.leaf is not None:
        host.v2(chosen.leaf).mkdir(exist_ok=True)
        host.v2(chosen.leaf).joinpath("cgroup.procs").write_text(str(os.getpid()))
        sp.leaf = chosen.leaf
    host.v2(v2_path).mkdir()
    # From the root down to the tests' parent: controllers the host offers that do not reach it yet.
    parts = [p for p in v2_path.split("/") if p]
    for depth in range(len(parts) + 1):
        group = "/" + "/".join(parts[:depth])
        done = enable(host.v2(group), wanted)
        if done:
            sp.enabled.append((group, done))
    return sp


def v1_roots(host: CgroupHost) -> list[Path]:
    return list(dict.fromkeys(host.v1_mounts.values()))


def _groups_under(d: Path) -> list[Path]:
    """`d` and every group below it, deepest first."""
    return [*sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)), d]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def remove_stale_sessions(ours: Iterable[Path]) -> list[Path]:
    """Remove what a killed session left beside ours: `plugind-tests-PID` groups of dead PIDs."""
    removed = []
    for top in ours:
        for d in top.parent.glob("plugind-tests-*"):
            pid = d.name.removeprefix("plugind-tests-")
            if d == top or not pid.isdigit() or _alive(int(pid)):
                continue
            for g in _groups_under(d):  # killing what that session left running in them
                cgroups.CgroupHandle("v1", {"pids": g}).remove()
                removed.append(g)
    return removed


def teardown(sp: SessionParent) -> list[Path]:
    """Remove the tests' parent (the tests empty it) and put this process back; returns leftovers."""
    tops = [root / sp.path.lstrip("/") for root in v1_roots(sp.host)]
    if sp.v2_path is not None:
        tops.append(sp.host.v2(sp.v2_path))
    left: list[Path] = []
    for top in tops:
        for d in _groups_under(top) if top.exists() else []:
            try:
                d.rmdir()
            except OSError:
                left.append(d)
    if sp.leaf is not None:
        own = _parent_of(sp.leaf)
        ours = [c for g, cs in sp.enabled if g == own for c in cs]
        if ours:  # a group with controllers enabled for its children takes no process
            sp.host.v2(own).joinpath("cgroup.subtree_control").write_text(" ".join(f"-{c}" for c in ours))
        sp.host.v2(own).joinpath("cgroup.procs").write_text(str(os.getpid()))
        sp.host.v2(sp.leaf).rmdir()
    return left


_SESSION: list[SessionParent | str] = []
DONE: list[SessionParent | str] = []  # for the end-of-run summary


def session() -> Iterator[SessionParent | str]:
    """The body of the session fixture: prepare, yield, tear down (failing if anything was left)."""
    sp = prepare()
    _SESSION.append(sp)
    DONE.append(sp)
    try:
        yield sp
    finally:
        _SESSION.clear()
        if not isinstance(sp, str):
            left = teardown(sp)
            assert not left, f"cgroups left behind under the tests' parent: {left}"


def session_parent(*, limits: bool = True) -> SessionParent:
    """The session's cgroup parent. Skips the calling test, saying why, if the host leaves no room
    for one, or (with `limits`) offers no controller to limit a plugin with."""
    import pytest

    if not _SESSION:
        raise RuntimeError("the tests' cgroup parent is made by the cgroup_session fixture (tests/conftest)")
    sp = _SESSION[0]
    if isinstance(sp, str):
        pytest.skip(sp)
    if limits and sp.host.backend is None:
        pytest.skip(f"no cgroup controllers to limit a plugin with on this host: {sp.host.describe()}")
    return sp


# --- groups of one test's own under the session's parent ---------------------------------------

_counter = itertools.count()


def unique_parent(*, limits: bool = True) -> str:
    """A fresh cgroup parent under the session's own, absolute in its hierarchy; the test skips,
    saying why, on a host without cgroup controllers unless `limits` is false."""
    return f"{session_parent(limits=limits).path}/t{next(_counter)}"


def group_dirs(parent: str) -> list[Path]:
    """Every directory of `parent` in every mounted hierarchy (what must be gone afterwards)."""
    return [r / parent.lstrip("/") for r in HOST.roots if (r / parent.lstrip("/")).exists()]


def _remove_under(d: Path) -> None:
    # Deepest first, killing whatever is left in each group (a daemon that died without cleaning up).
    for g in _groups_under(d) if d.exists() else []:
        cgroups.CgroupHandle("v1", {"pids": g}).remove()


@dataclass(frozen=True)
class DaemonGroup:
    """Where one test daemon goes and where its plugins' groups appear (see `daemon_group`)."""

    host: CgroupHost
    parent: str  # its [sandboxing.cgroups] parent
    unit: str | None  # v2 backend: the daemon's own group (absolute in the v2 hierarchy)
    plugins: str  # where its plugin groups appear, absolute in each hierarchy of the backend

    def enter(self) -> None:
        """Run in the daemon's process before exec (a `preexec_fn`): join its own group, as systemd
        starts a unit's main process; when an earlier daemon left the `daemon` leaf there (a
        restart), join that leaf, as systemd's DelegateSubgroup=daemon does (the group itself hands
        controllers down by then, so it takes no process)."""
        if self.unit is None:
            return
        unit = self.host.v2(self.unit)
        leaf = unit / "daemon"
        (leaf if leaf.is_dir() else unit).joinpath("cgroup.procs").write_text(str(os.getpid()))

    def plugin_dirs(self, name: str) -> list[Path]:
        """The directories of plugin `name`'s group that exist now, in every hierarchy of the backend."""
        roots = [self.host.v2_mount] if self.unit is not None else v1_roots(self.host)
        return [d for r in roots if r is not None and (d := r / self.plugins.lstrip("/") / name).is_dir()]

    def remove(self) -> list[Path]:
        """Remove everything of this daemon's (after it is gone); returns what is left, if anything."""
        if self.unit is not None:
            _remove_under(self.host.v2(self.unit))
            return [self.host.v2(self.unit)] if self.host.v2(self.unit).exists() else []
        cgroups.remove_tree(self.plugins)
        return group_dirs(self.plugins)


def daemon_group(sp: SessionParent) -> DaemonGroup:
    """A place of its own for one test daemon under the session parent `sp`.

    On the v2 backend: a new group `<sp>/dN` that the daemon enters at exec (`DaemonGroup.enter`) and
    is alone in, as in a unit with Delegate=yes; with the default relative parent it moves itself into
    `dN/daemon` and puts its plugins under `dN/plugind`. Elsewhere: the unique parent `<sp>/dN`, where
    the v1 backend (or none) needs no move.
    """
    label = f"d{next(_counter)}"
    if sp.host.backend == "v2" and sp.v2_path is not None:
        unit = f"{sp.v2_path}/{label}"
        sp.host.v2(unit).mkdir()
        return DaemonGroup(sp.host, "plugind", unit, f"{unit}/plugind")
    return DaemonGroup(sp.host, f"{sp.path}/{label}", None, f"{sp.path}/{label}")


# --- the sandbox's view of the host's files ------------------------------------------------------


def root_home() -> Path:
    """Root's home directory on this host (where a host secret of root's would live)."""
    return Path(pwd.getpwuid(0).pw_dir)


def runtime_dirs() -> list[str]:
    """What the plugin runtime runs from: the interpreter's prefix, the venv, the plugind package."""
    import plugind

    paths = [sys.base_prefix, sys.prefix, os.path.dirname(os.path.abspath(plugind.__file__))]
    paths += [p for p in sys.path if p.endswith("site-packages")]
    return sorted({os.path.realpath(p) for p in paths if p and os.path.isdir(p)})


def entries_needed_in(directory: str | os.PathLike[str], paths: Iterable[str]) -> list[str] | None:
    """The names in `directory` that lie on the way to one of `paths` (None: not even the directory)."""
    d = os.path.realpath(directory).rstrip("/") + "/"
    names = {p[len(d):].split("/")[0] for p in paths if p.startswith(d)}
    if not names and not any(d.startswith(p.rstrip("/") + "/") for p in paths):
        return None
    return sorted(names)
