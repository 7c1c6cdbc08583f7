"""A child born in its cgroup2 group (clone3 with CLONE_INTO_CGROUP), against the real kernel, on any
host with a cgroup2 mount; and the fork-and-move the sandbox falls back to where a seccomp profile
refuses clone3 (as container runtimes' default profiles do). Only groups under a unique test parent
are touched."""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cgroup_host import HOST

from plugind.sandbox import _libc, cgroups, contain

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(HOST.v2_mount is None, reason="no cgroup2 mount on this host"),
]
_n = itertools.count()


@pytest.fixture
def v2_group(parent: str) -> Iterator[Path]:
    """A new, empty cgroup2 group under the test's parent; removed (with whatever is in it) after."""
    path = HOST.v2(parent) / f"born-{next(_n)}"
    path.mkdir(parents=True)
    yield path
    handle = cgroups.CgroupHandle("v2", {c: path for c in ("memory", "cpu", "pids", "io")})
    handle.remove()
    assert not path.exists()


def _v2_line(pid: int | str) -> str:
    # The process's group in the cgroup2 hierarchy, as the kernel shows it.
    text = Path(f"/proc/{pid}/cgroup").read_text()
    return next(line for line in text.splitlines() if line.startswith("0::")).removeprefix("0::")


def _rel(path: Path) -> str:
    assert HOST.v2_mount is not None
    return "/" + str(path.relative_to(HOST.v2_mount))


def _in_worker(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`work()`'s report, run in a forked, single-threaded worker (as the fork-server is; the test
    process may have threads of other tests' servers)."""
    report_r, report_w = os.pipe()
    worker = os.fork()
    if worker == 0:
        try:
            out = work()
        except BaseException as exc:  # reported to the test, which fails with it
            out = {"error": repr(exc)}
        os.write(report_w, json.dumps(out).encode())
        os._exit(0)
    os.close(report_w)
    try:
        report: dict[str, Any] = json.loads(os.read(report_r, 65536))
    finally:
        os.close(report_r)
        os.waitpid(worker, 0)
    assert "error" not in report, report["error"]
    return report


def _born_child(fork: Callable[[], Any], group: Path) -> dict[str, Any]:
    # In the worker: `fork()`; the child's very first act is to say its own cgroup, then it waits
    # to be killed, and is reaped as any child (exit signal SIGCHLD).
    said_r, said_w = os.pipe()
    forked = fork()
    pid = forked[0] if isinstance(forked, tuple) else forked
    if pid == 0:
        try:
            os.write(said_w, _v2_line("self").encode())
            signal.pause()
        finally:
            os._exit(0)
    os.close(said_w)
    said = os.read(said_r, 4096).decode()
    out = {"said": said, "forked": forked if isinstance(forked, tuple) else None,
           "alone_there": (group / "cgroup.procs").read_text().split() == [str(pid)],
           "worker": _v2_line("self")}
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    out["killed"] = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return out


def test_the_child_is_in_its_group_from_its_first_instruction(v2_group: Path) -> None:
    def work() -> dict[str, Any]:
        fd = os.open(v2_group, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return _born_child(lambda: _libc.fork_into_cgroup(fd), v2_group)
        finally:
            os.close(fd)

    report = _in_worker(work)
    assert report["said"] == _rel(v2_group)
    assert report["alone_there"]
    assert report["worker"] == _v2_line("self")  # the forking process stayed where it was
    assert report["killed"]


def test_a_process_with_threads_is_refused_and_forks_nothing(v2_group: Path) -> None:
    # The raw clone3 skips the C library's per-thread bookkeeping: only a single-threaded caller.
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    fd = os.open(v2_group, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with pytest.raises(RuntimeError, match=r"^clone3\(CLONE_INTO_CGROUP\) from a process of \d+ threads: "
                           "refused"):
            _libc.fork_into_cgroup(fd)
    finally:
        os.close(fd)
        stop.set()
        thread.join()
    assert (v2_group / "cgroup.procs").read_text() == ""


@pytest.mark.skipif(not HOST.v1_mounts, reason="no cgroup v1 hierarchy on this host")
def test_a_group_outside_cgroup2_is_refused_by_the_kernel(parent: str) -> None:
    # A directory of a v1 hierarchy (or any other) cannot be a CLONE_INTO_CGROUP target.
    def work() -> dict[str, Any]:
        fd = os.open(next(iter(HOST.v1_mounts.values())), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            pid = _libc.fork_into_cgroup(fd)
        except _libc.KernelCallError as exc:
            return {"errno": exc.errno, "message": str(exc)}
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        return {"forked": pid}

    report = _in_worker(work)
    assert report["errno"] == errno.EBADF
    assert re.fullmatch(r"clone3\(CLONE_INTO_CGROUP, cgroup fd \d+\): EBADF \(Bad file descriptor\)",
                        report["message"])


def test_where_seccomp_refuses_clone3_children_are_forked_and_moved(v2_group: Path) -> None:
    # In a process whose seccomp profile answers clone3 with ENOSYS (the default of Docker's and
    # Podman's), the sandbox's fork falls back to fork(), says the child is not in its group yet
    # (the parent then moves it), and does not try clone3 again.
    def work() -> dict[str, Any]:
        import pyseccomp

        profile = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
        profile.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
        profile.load()
        handle = cgroups.CgroupHandle("v2", {c: v2_group for c in ("memory", "cpu", "pids", "io")})
        out: dict[str, Any] = {}
        for attempt in ("first", "second"):
            pid, placed = contain._fork_child(handle)
            if pid == 0:
                signal.pause()
                os._exit(0)
            out[attempt] = {"placed": placed, "group": _v2_line(pid)}
            handle.attach(pid)  # what contain._parent does with such a child
            out[f"{attempt}_moved"] = _v2_line(pid)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        out["refusals"] = list(contain._NO_CLONE3)
        return out

    report = _in_worker(work)
    outside = _v2_line("self")
    for attempt in ("first", "second"):
        assert report[attempt] == {"placed": False, "group": outside}
        assert report[f"{attempt}_moved"] == _rel(v2_group)
    assert len(report["refusals"]) == 1  # tried once, then remembered
    assert report["refusals"][0].startswith("clone3(CLONE_INTO_CGROUP, cgroup fd ")
    assert report["refusals"][0].endswith(": ENOSYS (Function not implemented)")


def test_a_v2_child_of_the_sandbox_fork_is_placed_at_birth(v2_group: Path) -> None:
    # contain._fork_child, where clone3 works: the child is in the group when it first looks.
    handle = cgroups.CgroupHandle("v2", {c: v2_group for c in ("memory", "cpu", "pids", "io")})
    report = _in_worker(lambda: _born_child(lambda: contain._fork_child(handle), v2_group))
    assert report["said"] == _rel(v2_group)
    assert report["forked"][1] is True
    assert report["alone_there"]
    assert report["killed"]


def test_a_caller_with_threads_gets_the_c_librarys_fork_and_a_move(v2_group: Path) -> None:
    # Only the fork-server is single-threaded by design; a spawner with threads (an embedding
    # host, a test) still gets its child, through fork() and a move, and clone3 is not given up on.
    def work() -> dict[str, Any]:
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait, daemon=True)
        thread.start()
        handle = cgroups.CgroupHandle("v2", {c: v2_group for c in ("memory", "cpu", "pids", "io")})
        pid, placed = contain._fork_child(handle)
        if pid == 0:
            signal.pause()
            os._exit(0)
        out = {"placed": placed, "group": _v2_line(pid), "refusals": list(contain._NO_CLONE3)}
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        stop.set()
        return out

    report = _in_worker(work)
    assert report == {"placed": False, "group": _v2_line("self"), "refusals": []}
