"""Sandboxed cold start next to an unsandboxed fork and `python -c pass`, in one run (root only).

    .venv/bin/python bench/sandbox.py [--rounds 30] [--plugins 100]

"Ready" is the moment the child writes a byte after its last step (seccomp loaded), as the runtime
would before importing the plugin. Ratios are against the unsandboxed fork measured in this run.

It also times moving a process into a fresh group of the backend in use, `--move-gap` seconds
apart: by its parent (a `cgroup.procs` write, as the fork-server moves a child on cgroup v2) and
by the process's own single thread (`CgroupHandle.enter`, as a plugin enters its group on v1). The
first takes a kernel-wide lock whose first taker after a quiet spell waits out an RCU grace period,
unless cgroup2 is mounted with `favordynmods` (the mount's options are printed beside it). Where
cgroup2 is mounted, it also times a fork followed by the parent's move into a fresh cgroup2 group
against a child born there (clone3 with CLONE_INTO_CGROUP, as the fork-server forks a plugin on v2),
which takes only the read side of that lock.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

from plugind.config import Settings
from plugind.sandbox import cgroups
from plugind.sandbox.contain import cleanup, spawn_contained
from plugind.sandbox.plan import SandboxPlan, build_plan


def _ready_child(w: int, stay: bool) -> Any:
    def run(hooks: Any) -> NoReturn:
        hooks.before_plugin_import()
        os.write(w, b"r")
        if stay:
            signal.pause()
        os._exit(0)

    return run


def cpu_seconds() -> float:
    """CPU time of this process plus its reaped children: load on the machine does not inflate it."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def python_pass(rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        out.append(time.perf_counter() - t)
    return out


def plain_fork(rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        r, w = os.pipe()
        t = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.write(w, b"r")
            os._exit(0)
        os.read(r, 1)
        out.append(time.perf_counter() - t)
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
    return out


def sandboxed(plan: SandboxPlan, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        r, w = os.pipe()
        t = time.perf_counter()
        sp = spawn_contained(plan, _ready_child(w, False), [w])
        os.read(r, 1)
        out.append(time.perf_counter() - t)
        os.waitpid(sp.pid, 0)
        cleanup(plan)
        os.close(r)
        os.close(w)
    return out


def group_moves(backend: str, parent: str, rounds: int, gap: float) -> tuple[list[float], list[float]]:
    """Seconds per move into a fresh group: (by the parent through cgroup.procs, by the process's
    own thread through CgroupHandle.enter), the two kinds in turns."""
    by_parent: list[float] = []
    by_itself: list[float] = []
    for i in range(rounds):
        for own in (False, True):
            group = cgroups.make_group(backend, parent, f"move-{i}-{int(own)}")
            r, w = os.pipe()
            go_r, go_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                if own:
                    t = time.perf_counter()
                    group.enter()
                    os.write(w, repr(time.perf_counter() - t).encode())
                else:
                    os.write(w, b"0")
                os.read(go_r, 1)
                os._exit(0)
            said = os.read(r, 64)
            if own:
                by_itself.append(float(said))
            else:
                t = time.perf_counter()
                group.attach(pid)
                by_parent.append(time.perf_counter() - t)
            os.write(go_w, b"g")
            os.waitpid(pid, 0)
            for fd in (r, w, go_r, go_w):
                os.close(fd)
            group.remove()
            time.sleep(gap)
    return by_parent, by_itself


def v2_births(parent: str, rounds: int, gap: float) -> tuple[list[float], list[float]] | None:
    """Seconds from the fork to the child in a fresh cgroup2 group: (fork, then the parent's move;
    born there through clone3), the two kinds in turns; None without a cgroup2 mount."""
    from plugind.sandbox import _libc

    v2_path = cgroups.detect_cached().v2_path
    if v2_path is None:
        return None
    base = Path(v2_path, parent.strip("/"), "births")
    made = [d for d in (base, *base.parents) if not d.exists()]  # removed at the end, deepest first
    moved: list[float] = []
    born: list[float] = []
    for i in range(rounds):
        for clone in (False, True):
            group = base / f"g{i}-{int(clone)}"
            group.mkdir(parents=True)
            fd = os.open(group, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            t = time.perf_counter()
            pid = _libc.fork_into_cgroup(fd) if clone else os.fork()
            if pid == 0:
                os._exit(0)
            if not clone:
                (group / "cgroup.procs").write_text(str(pid))
            (born if clone else moved).append(time.perf_counter() - t)
            os.waitpid(pid, 0)
            os.close(fd)
            group.rmdir()
            time.sleep(gap)
    for d in made:
        d.rmdir()
    return moved, born


def _cgroup2_options() -> str:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] == "cgroup2":
            return f"cgroup2 at {fields[1]}: {fields[3]}"
    return "no cgroup2 mount"


def many(settings: Settings, tree: str, n: int) -> float:
    plans = [build_plan(settings, f"bench-{i}", tree) for i in range(n)]
    pids, pipes = [], []
    t = time.perf_counter()
    try:
        for plan in plans:
            r, w = os.pipe()
            pids.append(spawn_contained(plan, _ready_child(w, True), [w]).pid)
            os.close(w)
            pipes.append(r)
        for r in pipes:
            os.read(r, 1)
        return time.perf_counter() - t
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for plan in plans:
            cleanup(plan)
        for r in pipes:
            os.close(r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--plugins", type=int, default=100)
    ap.add_argument("--move-gap", type=float, default=0.03, help="seconds between two group moves")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/sandbox.py needs root (namespaces, cgroups)")
    parent = f"plugind/bench-{os.getpid()}"
    settings = Settings()
    settings.sandboxing.cgroups.parent = parent
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        (tree / "plugin.py").write_text("VALUE = 1\n")
        plan = build_plan(settings, "bench", str(tree))
        try:
            sandboxed(plan, 3)  # warm-up: parent cgroups created, filters compiled
            py = statistics.median(python_pass(max(5, args.rounds // 3)))
            c0 = cpu_seconds()
            fork = statistics.median(plain_fork(args.rounds))
            c1 = cpu_seconds()
            sb = statistics.median(sandboxed(plan, args.rounds))
            c2 = cpu_seconds()
            total = many(settings, str(tree), args.plugins)
            backend = cgroups.choose_backend(plan.cgroup_backend, cgroups.detect_cached())
            moves = group_moves(backend, parent, args.rounds, args.move_gap) if backend else None
            births = v2_births(parent, args.rounds, args.move_gap)
        finally:
            cgroups.remove_tree(parent)
    ms = 1000.0
    print(f"python -c pass        {py * ms:8.2f} ms  ({py / fork:6.1f}x fork)")
    print(f"unsandboxed fork      {fork * ms:8.2f} ms  (floor)")
    print(f"sandboxed cold start  {sb * ms:8.2f} ms  ({sb / fork:6.1f}x fork)")
    print(f"sandbox overhead      {(sb - fork) * ms:8.2f} ms per plugin (target < 10 ms)")
    fork_cpu, sb_cpu = (c1 - c0) / args.rounds, (c2 - c1) / args.rounds
    print(f"CPU per start         {fork_cpu * ms:8.2f} ms fork, {sb_cpu * ms:.2f} ms sandboxed "
          f"(+{(sb_cpu - fork_cpu) * ms:.2f} ms, incl. cgroup removal; load {os.getloadavg()[0]:.1f})")
    each = total / args.plugins * ms
    print(f"{args.plugins} sandboxed plugins {total:8.2f} s  ({each:.2f} ms each; target < 5 s)")
    if moves is not None:
        by_parent, by_itself = (statistics.median(m) for m in moves)
        print(f"group move ({backend}), {args.move_gap * ms:.0f} ms apart: by the parent (cgroup.procs) "
              f"{by_parent * ms:.2f} ms, by itself ({'tasks' if backend == 'v1' else 'cgroup.procs'}) "
              f"{by_itself * ms:.2f} ms "
              f"({by_parent / by_itself:.1f}x); {_cgroup2_options()}")
    if births is not None:
        moved, born = (statistics.median(b) for b in births)
        print(f"cgroup2 child, {args.move_gap * ms:.0f} ms apart: fork then moved by the parent "
              f"{moved * ms:.2f} ms, born in its group (clone3) {born * ms:.2f} ms ({born / moved:.2f}x)")


if __name__ == "__main__":
    main()
