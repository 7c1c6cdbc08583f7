"""The cgroup writers against the real kernel, with the backend this host offers (v1 controllers on a
v1 or hybrid host, the unified hierarchy's on a v2 host), and the v2 handle on any cgroup2 mount.
Only groups under a unique test parent are touched."""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from cgroup_host import HOST, session_parent

from plugind.errors import SandboxError
from plugind.sandbox import cgroups
from plugind.sandbox.plan import CgroupLimits

pytestmark = pytest.mark.root
_n = itertools.count()

LIMITS = CgroupLimits(memory_bytes=96 << 20, cpu_quota_us=25_000, cpu_period_us=100_000, pids_max=12,
                      io_weight=300)
# What the kernel must show for LIMITS, per backend: (controller, file) -> value. Written out here, not
# computed by the code under test. The weights exist only with some kernel set-ups (the BFQ
# scheduler, an io controller handed down): absent is fine, a wrong value is not, with or without
# the `default` that some kernels show before the number.
EXPECTED: dict[str, dict[tuple[str, str], str]] = {
    "v1": {
        ("memory", "memory.limit_in_bytes"): str(96 << 20),
        ("memory", "memory.oom_control"): "oom_kill_disable 0",  # the OOM killer stays on
        ("cpu", "cpu.cfs_period_us"): "100000",
        ("cpu", "cpu.cfs_quota_us"): "25000",
        ("pids", "pids.max"): "12",
        ("blkio", "blkio.bfq.weight"): "300",
    },
    "v2": {
        ("memory", "memory.max"): str(96 << 20),
        ("memory", "memory.swap.max"): "0",
        ("cpu", "cpu.max"): "25000 100000",
        ("pids", "pids.max"): "12",
        ("io", "io.weight"): "default 300",
    },
}
OPTIONAL = {"blkio.bfq.weight", "io.weight"}



def _sleeper() -> int:
    pid = os.fork()
    if pid == 0:
        signal.pause()
        os._exit(0)
    return pid


def _allocator() -> tuple[int, int, int]:
    """A child that allocates 8 MiB when poked (after it has been moved into the group)."""
    poke_r, poke_w = os.pipe()
    ack_r, ack_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(poke_r, 1)
        block = b"\x01" * (8 << 20)
        os.write(ack_w, b"a")
        signal.pause()
        del block
        os._exit(0)
    os.close(poke_r)
    os.close(ack_w)
    return pid, poke_w, ack_r


@pytest.mark.skipif(HOST.backend is None, reason=f"no cgroup controllers to limit with: {HOST.describe()}")
def test_group_gets_the_limits_and_counts_usage(parent: str) -> None:
    backend = HOST.backend
    assert backend is not None
    group = cgroups.create_group(backend, parent, "writer", LIMITS)
    pid, poke, ack = _allocator()
    attached = False
    try:
        for (controller, fname), value in EXPECTED[backend].items():
            path = group.dirs[controller] / fname if controller in group.dirs else None
            if fname in OPTIONAL and (path is None or not path.exists()):
                continue
            assert path is not None, f"{backend} group has no {controller} directory"
            text = path.read_text()
            shown = [line.strip() for line in text.splitlines()]
            assert value in shown or (fname in OPTIONAL and shown[-1].split()[-1] == value.split()[-1]), (
                fname, text)
        group.attach(pid)
        attached = True
        assert group.pids() == [pid]
        os.write(poke, b"p")
        assert os.read(ack, 1) == b"a"
        usage = group.usage()
        assert usage.memory_limit == 96 << 20
        assert usage.pids == 1 and usage.oom_kills == 0
        assert usage.memory_bytes >= 8 << 20  # charged after the move
        assert cgroups.open_group(backend, parent, "writer") is not None
    finally:
        group.remove()
        if not attached:  # failed before the move: remove() cannot have reached it
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(poke)
        os.close(ack)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL  # remove() empties it first
    assert cgroups.open_group(backend, parent, "writer") is None


def _enterer(parent: str, name: str, threads: int) -> tuple[cgroups.CgroupHandle, int, str]:
    """A new group `name`, and a child with `threads` threads in all that calls its `enter()`, then
    says what came of it and waits to be killed: (the group, the child's pid, what it said)."""
    assert HOST.backend is not None
    group = cgroups.make_group(HOST.backend, parent, name)
    said_r, said_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            import threading

            stop = threading.Event()
            for _ in range(threads - 1):
                threading.Thread(target=stop.wait, daemon=True).start()
            try:
                group.enter()
                said = "entered"
            except SandboxError as exc:
                said = f"refused: {exc}"
            os.write(said_w, said.encode())
            signal.pause()
        finally:
            os._exit(0)
    os.close(said_w)
    try:
        return group, pid, os.read(said_r, 4096).decode()
    finally:
        os.close(said_r)


def _members(group: cgroups.CgroupHandle) -> dict[str, list[int]]:
    # Each controller's directory -> the processes in it, read by the test from the kernel's files.
    return {c: sorted(int(x) for x in (d / "cgroup.procs").read_text().split())
            for c, d in group.dirs.items()}


@pytest.mark.skipif(HOST.backend is None, reason=f"no cgroup controllers to limit with: {HOST.describe()}")
def test_enter_moves_a_single_threaded_caller_into_every_controller(parent: str) -> None:
    group, pid, said = _enterer(parent, "enterer", threads=1)
    try:
        assert said == "entered"
        assert _members(group) == {c: [pid] for c in group.dirs}
    finally:
        group.remove()
    _, status = os.waitpid(pid, 0)
    assert os.WTERMSIG(status) == signal.SIGKILL  # remove() found it in the group


@pytest.mark.skipif(HOST.backend is None, reason=f"no cgroup controllers to limit with: {HOST.describe()}")
def test_enter_refuses_a_caller_with_threads_and_moves_none_of_them(parent: str) -> None:
    # On v1 a move by one thread would leave the others outside the group's limits: refused whole.
    group, pid, said = _enterer(parent, "threaded", threads=3)
    try:
        assert said.startswith("refused: cannot enter cgroup ")
        assert said.endswith(": the process has 3 threads")
        assert _members(group) == {c: [] for c in group.dirs}
        tasks = [d / "tasks" for d in group.dirs.values() if (d / "tasks").exists()]
        assert all(t.read_text() == "" for t in tasks)  # (v1) not one of its threads either
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        group.remove()


@pytest.fixture
def bare_view() -> Iterator[Path]:
    """A group of ours whose parent hands it no controller: the cgroup2 root a container sees when
    nothing was delegated to it (its cgroup namespace's root), on any host with cgroup2."""
    sp = session_parent(limits=False)
    if sp.v2_path is None:
        pytest.skip("no cgroup2 mount on this host")
    holder = HOST.v2(f"{sp.v2_path}/bare-{next(_n)}")
    (holder / "view").mkdir(parents=True)
    yield holder / "view"
    for d in sorted((p for p in holder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        d.rmdir()
    holder.rmdir()


def test_a_limit_the_hierarchy_cannot_apply_fails_closed_and_leaves_no_group(bare_view: Path) -> None:
    # Limits where the controllers are not delegated must fail, never be silently skipped; and before
    # any group is made, naming what is missing and where.
    assert (bare_view / "cgroup.controllers").read_text().split() == []
    view = cgroups.Hierarchy(str(bare_view), frozenset(), {})
    with pytest.raises(
        SandboxError,
        match=r"^cannot give the plugin groups under /p the cgroup controller\(s\) memory, pids, cpu: / "
        r"is not given memory, pids, cpu \(its cgroup\.controllers: none\): the root of the cgroup2 "
        r"hierarchy here does not offer them: .* in a container, the container's cgroup was not given them",
    ) as ei:
        cgroups.create_group("v2", "p", "nomem", CgroupLimits(memory_bytes=1 << 20), view)
    assert ei.value.step == "cgroup" and ei.value.detail == "controllers missing under /p: memory pids cpu"
    assert not (bare_view / "p").exists()


@pytest.mark.skipif(HOST.v2_mount is None, reason="no cgroup2 mount on this host")
def test_v2_handle_attach_kill_and_stale_cleanup(parent: str) -> None:
    path = HOST.v2(parent) / "v2group"
    path.mkdir(parents=True)
    handle = cgroups.CgroupHandle("v2", {c: path for c in ("memory", "cpu", "pids", "io")})
    pids = [_sleeper(), _sleeper()]
    for pid in pids:
        handle.attach(pid)
    assert sorted(handle.pids()) == sorted(pids)
    # Leave it populated, as a SIGKILLed daemon would, and let the start-up clean-up deal with it.
    removed = cgroups.cleanup_stale(parent, cgroups.detect())
    assert str(path) in removed
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.WTERMSIG(status) == signal.SIGKILL
    assert not path.exists()


def test_detection_and_auto_backend_match_what_the_host_offers() -> None:
    # plugind's detection against the tests' own reading of /proc/self/mountinfo.
    hier = cgroups.detect()
    assert hier.v2_path == (str(HOST.v2_mount) if HOST.v2_mount else None)
    assert hier.v2_controllers == HOST.v2_controllers
    assert {c: Path(p) for c, p in hier.v1_paths.items()} == {
        c: p for c, p in HOST.v1_mounts.items() if c in cgroups.V1_CONTROLLERS
    }
    if HOST.backend is None:
        with pytest.raises(SandboxError, match=r"cgroup v1 is not usable: controllers mounted \[.*\], "
                           "need memory, cpu, pids"):
            cgroups.choose_backend("auto", hier)
    else:
        assert cgroups.choose_backend("auto", hier) == HOST.backend


@pytest.mark.skipif(HOST.backend != "v1", reason=f"rename(2) of a group is v1's only: {HOST.describe()}")
def test_a_rename_that_fails_in_one_controller_leaves_the_group_whole_under_its_old_name(parent: str) -> None:
    # The spare's hand-off renames its group to the plugin's, one hierarchy at a time; one that
    # refuses (here: the name is taken in the last one, EEXIST) must not leave the group split
    # between two names, which the spare's discard (by its old name) would leave behind.
    group = cgroups.make_group("v1", parent, ".spare-1")
    last = list(group.dirs.values())[-1]
    taken = last.with_name("beta")
    taken.mkdir()
    try:
        with pytest.raises(SandboxError, match=r"cannot rename cgroup .* to beta"):
            cgroups.rename_group(group, "beta")
        assert all(d.is_dir() for d in group.dirs.values())
        others = [d.parent for d in group.dirs.values() if d.parent != taken.parent]
        assert [p for p in others if (p / "beta").exists()] == []
    finally:
        group.remove()
        taken.rmdir()
    assert cgroups.open_group("v1", parent, ".spare-1") is None
