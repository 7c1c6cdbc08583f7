"""Cgroups v2 and v1: detect the backend, compute settings (pure), apply them, read usage, clean up.

Only groups under our own parent (`sandboxing.cgroups.parent`, default `plugind`) are ever created,
written or removed. On v2 a relative parent lives under the daemon's own (delegated) cgroup: see
`plugind.sandbox.cgroup_layout` for the layout and `effective_parent` for where it is applied.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from plugind.errors import SandboxError
from plugind.fsio import LockHeld, hold_lock
from plugind.sandbox import _libc
from plugind.sandbox.cgroup_layout import (
    Enable,
    Layout,
    Level,
    Mkdir,
    Move,
    Op,
    delegated_base,
    internal_processes,
    own_cgroup,
    parse_controllers,
    plan_parent_controllers,
    plan_v2_layout,
    writable_top,
)
from plugind.sandbox.plan import CgroupLimits, SandboxPlan

log = logging.getLogger("plugind.sandbox.cgroups")

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "blkio")


# --- detection (pure parsing + one read) ------------------------------------------------------------


@dataclass(frozen=True)
class Hierarchy:
    """What the host offers: a cgroup2 mount (with its controllers) and v1 controller mounts."""

    v2_path: str | None
    v2_controllers: frozenset[str]
    v1_paths: Mapping[str, str]
    v2_options: frozenset[str] = frozenset()  # the cgroup2 mount's own options (favordynmods, ...)

    @property
    def kind(self) -> str:
        """'v2' (unified only), 'hybrid' (v1 controllers plus a cgroup2 mount), 'v1' or 'none'."""
        if self.v2_path and not self.v1_paths:
            return "v2"
        if self.v1_paths:
            return "hybrid" if self.v2_path else "v1"
        return "none"


def parse_mountinfo(text: str) -> Hierarchy:
    """Find cgroup mounts in /proc/self/mountinfo text."""
    v2_path: str | None = None
    v2_options: frozenset[str] = frozenset()
    v1: dict[str, str] = {}
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        fields, after = pre.split(), post.split()
        if len(fields) < 5 or len(after) < 3:
            continue
        mountpoint, fstype, options = fields[4], after[0], after[2].split(",")
        if fstype == "cgroup2" and v2_path is None:
            v2_path, v2_options = mountpoint, frozenset(options)
        elif fstype == "cgroup":
            for opt in options:
                if opt in V1_CONTROLLERS and opt not in v1:
                    v1[opt] = mountpoint
    controllers: frozenset[str] = frozenset()
    if v2_path is not None:
        try:
            controllers = frozenset(Path(v2_path, "cgroup.controllers").read_text().split())
        except OSError:
            controllers = frozenset()
    return Hierarchy(v2_path, controllers, v1, v2_options)


def detect() -> Hierarchy:
    """The cgroup hierarchies of this host."""
    return parse_mountinfo(Path("/proc/self/mountinfo").read_text())


_HIER: list[Hierarchy] = []


def detect_cached() -> Hierarchy:
    """`detect()` once per process: cgroup mounts do not move under a running daemon."""
    if not _HIER:
        _HIER.append(detect())
    return _HIER[0]


def choose_backend(configured: str, hier: Hierarchy) -> str | None:
    """Pick 'v2', 'v1' or None (no cgroups) for the configured backend.

    'auto' prefers v2 when the unified hierarchy has the memory, cpu and pids controllers, else v1.
    Raises SandboxError (step "cgroup") when the configured backend is not usable here.
    """
    v2_ok = hier.v2_path is not None and {"memory", "cpu", "pids"} <= hier.v2_controllers
    v1_ok = {"memory", "cpu", "pids"} <= set(hier.v1_paths)
    if configured == "none":
        return None
    if configured == "v2" or (configured == "auto" and v2_ok):
        if not v2_ok:
            raise SandboxError(
                f"cgroup v2 is not usable: the unified hierarchy ({hier.v2_path or 'not mounted'}) "
                f"offers controllers {sorted(hier.v2_controllers)}, need memory, cpu, pids; "
                "set sandboxing.cgroups.backend = 'v1' or 'auto' on this host",
                step="cgroup",
                detail=f"host cgroup layout: {hier.kind}",
            )
        return "v2"
    if v1_ok:
        return "v1"
    raise SandboxError(
        f"cgroup v1 is not usable: controllers mounted {sorted(hier.v1_paths)}, need memory, cpu, pids",
        step="cgroup",
        detail=f"host cgroup layout: {hier.kind}",
    )


# --- settings (pure) --------------------------------------------------------------------------------


def v2_settings(limits: CgroupLimits) -> dict[str, str]:
    """File -> value for a v2 group, in the order to write them."""
    out: dict[str, str] = {}
    if limits.memory_bytes is not None:
        out["memory.max"] = str(limits.memory_bytes)
        out["memory.swap.max"] = "0"
    quota = "max" if limits.cpu_quota_us is None else str(limits.cpu_quota_us)
    out["cpu.max"] = f"{quota} {limits.cpu_period_us}"
    out["pids.max"] = "max" if limits.pids_max is None else str(limits.pids_max)
    if limits.io_weight is not None:
        out["io.weight"] = f"default {max(1, min(10000, limits.io_weight))}"
    return out


# Settings a host may lack without the group losing its point: skipped when the kernel makes no such
# file (an error writing one that exists still fails the load). Those that leave a limit unapplied
# are reported in the plugin's isolation report; a missing I/O weight (a share, not a limit) is not.
NO_SWAP_ACCOUNTING = "no swap accounting in this kernel, so its swap use is not limited"
BEST_EFFORT = {
    "memory.swap.max": NO_SWAP_ACCOUNTING,
    "memory.memsw.limit_in_bytes": NO_SWAP_ACCOUNTING,
    "io.weight": "",
    "blkio.bfq.weight": "",
}


def v1_settings(limits: CgroupLimits) -> list[tuple[str, str, str]]:
    """(controller, file, value) for v1 groups, in the order to write them.

    v1 I/O weight is BFQ's `blkio.bfq.weight` (1-1000, default 100, like v2's default), so the
    v2-style weight (1-10000) is clamped; CFQ's `blkio.weight` is gone since Linux 5.0.
    """
    out: list[tuple[str, str, str]] = []
    if limits.memory_bytes is not None:
        out.append(("memory", "memory.limit_in_bytes", str(limits.memory_bytes)))
        out.append(("memory", "memory.memsw.limit_in_bytes", str(limits.memory_bytes)))
    out.append(("memory", "memory.oom_control", "0"))  # keep the OOM killer on: die, never hang
    out.append(("cpu", "cpu.cfs_period_us", str(limits.cpu_period_us)))
    out.append(("cpu", "cpu.cfs_quota_us", "-1" if limits.cpu_quota_us is None else str(limits.cpu_quota_us)))
    out.append(("pids", "pids.max", "max" if limits.pids_max is None else str(limits.pids_max)))
    if limits.io_weight is not None:
        out.append(("blkio", "blkio.bfq.weight", str(max(1, min(1000, limits.io_weight)))))
    return out


def parse_flat_keyed(text: str) -> dict[str, int]:
    """`key value` lines (memory.events, memory.oom_control, cpu.stat) -> dict."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def parse_max(text: str) -> int | None:
    """'max' or a number; huge v1 'unlimited' values count as no limit."""
    text = text.strip()
    if text == "max" or not text.lstrip("-").isdigit():
        return None
    value = int(text)
    return None if value < 0 or value >= 1 << 62 else value


# --- the thin writer --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CgroupUsage:
    """One sample of a plugin's cgroup counters."""

    memory_bytes: int
    memory_limit: int | None
    cpu_usec: int
    pids: int
    oom_kills: int


def _write(path: Path | str, value: str) -> None:
    # open(path, "w") in bare syscalls (the fork-server writes about a dozen of these per sandboxed
    # spawn): no text wrapper, codec or buffer objects.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise SandboxError(
            f"cannot write {value!r} to {path}: {exc.strerror}",
            step="cgroup",
            detail=f"write({path}, {value!r}): {errno.errorcode.get(exc.errno or 0, '?')}",
        ) from exc


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(exist_ok=True)
    except OSError as exc:
        raise SandboxError(
            f"cannot create cgroup {path}: {exc.strerror}",
            step="cgroup",
            detail=f"mkdir({path}): {errno.errorcode.get(exc.errno or 0, '?')}",
        ) from exc


def _read_file(path: str) -> str:
    """A cgroup file's text, read with bare syscalls: the resource monitor reads six of these per
    plugin per sweep, and Path.read_text's objects (a path, a text wrapper, a codec) cost three
    times the syscalls (~50 us a file, ~0.3 ms a plugin a sweep). Raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


def _thread_count() -> int:
    try:
        return _libc.thread_count()
    except OSError as exc:
        raise SandboxError(
            f"cannot count this process's threads: {exc.strerror}",
            step="cgroup",
            detail=f"listdir(/proc/self/task): {errno.errorcode.get(exc.errno or 0, '?')}",
        ) from exc


class CgroupHandle:
    """A plugin's group: one directory (v2) or one per controller (v1)."""

    def __init__(self, backend: str, dirs: Mapping[str, Path]) -> None:
        self.backend = backend
        self.dirs = dict(dirs)
        # Limits that could not be applied on this host, e.g. "memory.swap.max (no swap accounting
        # ...)": `create_group` fills it, the isolation report shows it.
        self.gaps: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        """A display path (the memory controller's directory)."""
        return str(self.dirs.get("memory") or next(iter(self.dirs.values())))

    def _procs_dir(self) -> Path:
        return self.dirs.get("pids") or next(iter(self.dirs.values()))

    def attach(self, pid: int) -> None:
        """Move `pid` into the group (every controller). Raises SandboxError."""
        for d in dict.fromkeys(self.dirs.values()):
            _write(f"{d}/cgroup.procs", str(pid))

    def enter(self) -> None:
        """Move the calling process, which must have a single thread, into the group (every
        controller). Raises SandboxError, having moved nothing, if it has more than one.

        On v1 the move is a move of the calling thread (`tasks`, "0"): the kernel makes that one
        without taking the global thread-group lock that a `cgroup.procs` write takes, whose first
        taker after a quiet spell waits out an RCU grace period (measured on a v1 host: 12.9 ms p50
        per move through `cgroup.procs`, 0.5 ms through `tasks`), and so holds up every cgroup change
        of the host meanwhile. A single-threaded process moved by its thread is moved whole. On v2
        a thread cannot leave its domain that way: the move goes through `cgroup.procs`."""
        threads = _thread_count()
        if threads != 1:
            raise SandboxError(
                f"cannot enter cgroup {self.path} by one thread: the process has {threads} threads",
                step="cgroup",
                detail=f"enter: {threads} threads",
            )
        name = "tasks" if self.backend == "v1" else "cgroup.procs"
        for d in dict.fromkeys(self.dirs.values()):
            _write(f"{d}/{name}", "0")

    def pids(self) -> list[int]:
        """Processes in the group now."""
        try:
            return [int(x) for x in _read_file(f"{self._procs_dir()}/cgroup.procs").split()]
        except OSError:
            return []

    def _read(self, controller: str, name: str) -> str | None:
        d = self.dirs.get(controller)
        if d is None:
            return None
        try:
            return _read_file(f"{d}/{name}")
        except OSError:
            return None

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in this group."""
        if self.backend == "v2":
            text = self._read("memory", "memory.events") or ""
        else:
            text = self._read("memory", "memory.oom_control") or ""
        return parse_flat_keyed(text).get("oom_kill", 0)

    def usage(self) -> CgroupUsage:
        """Current counters (0 for anything unreadable)."""
        if self.backend == "v2":
            mem = parse_max(self._read("memory", "memory.current") or "0") or 0
            limit = parse_max(self._read("memory", "memory.max") or "max")
            cpu = parse_flat_keyed(self._read("cpu", "cpu.stat") or "").get("usage_usec", 0)
        else:
            mem = parse_max(self._read("memory", "memory.usage_in_bytes") or "0") or 0
            limit = parse_max(self._read("memory", "memory.limit_in_bytes") or "max")
            cpu = (parse_max(self._read("cpuacct", "cpuacct.usage") or "0") or 0) // 1000
        pids = parse_max(self._read("pids", "pids.current") or "0") or 0
        return CgroupUsage(mem, limit, cpu, pids, self.oom_kills())

    def kill_all(self, timeout_s: float = 5.0) -> None:
        """SIGKILL everything in the group until it is empty (fork bombs included)."""
        if self.backend == "v2" and (self._procs_dir() / "cgroup.kill").exists():
            _write(self._procs_dir() / "cgroup.kill", "1")
        deadline = time.monotonic() + timeout_s
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.002)  # the kernel needs a moment to drop killed tasks from the group

    def remove(self, timeout_s: float = 5.0) -> None:
        """Kill what is left and rmdir the group. Raises SandboxError if it stays busy."""
        self.kill_all(timeout_s)
        deadline = time.monotonic() + timeout_s
        for d in dict.fromkeys(self.dirs.values()):
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise SandboxError(
                            f"cannot remove cgroup {d}: {exc.strerror}",
                            step="cgroup",
                            detail=f"rmdir({d}): {errno.errorcode.get(exc.errno or 0, '?')}",
                        ) from exc
                    time.sleep(0.002)


def _v1_dirs(hier: Hierarchy, rel: str) -> dict[str, Path]:
    return {c: Path(hier.v1_paths[c], rel) for c in V1_CONTROLLERS if c in hier.v1_paths}


def _ensure_parents(base: Path, rel: str) -> Path:
    path = base
    for part in Path(rel).parts:
        path = path / part
        _mkdir(path)
    return path


def _read_level(root: Path, path: str) -> Level:
    d = root / path.lstrip("/")
    if not d.is_dir():
        return Level(path, None)
    # The hierarchy's real root (the only group without cgroup.type) is exempt from the rule.
    exempt = path == "/" and not (d / "cgroup.type").exists()
    return Level(
        path,
        parse_controllers(_read_text(d / "cgroup.controllers")),
        parse_controllers(_read_text(d / "cgroup.subtree_control")),
        () if exempt else tuple(int(x) for x in _read_text(d / "cgroup.procs").split()),
    )


def _v2_prepare_parent(root: Path, parent: str, proc_self_cgroup: str | None) -> None:
    """Make the absolute v2 `parent` and give its children their controllers (`plan_parent_controllers`),
    writing nothing above `writable_top`. Raises SandboxError."""
    if proc_self_cgroup is None:
        proc_self_cgroup = _read_text(Path("/proc/self/cgroup"))
    try:
        own = own_cgroup(proc_self_cgroup)
    except SandboxError:
        own = "/"  # not in this hierarchy's view: no delegated base of ours to stay inside
    top = writable_top(parent, own)
    parts = [p for p in parent.split("/") if p]
    skip = len([p for p in top.split("/") if p])
    paths = ["/" + "/".join(parts[:i]) for i in range(skip, len(parts) + 1)]
    levels: list[Level] = []
    for path in paths:
        made_on_the_way = bool(levels) and levels[-1].offered is None
        levels.append(Level(path, None) if made_on_the_way else _read_level(root, path))
    apply_layout(plan_parent_controllers(levels), root)


def _write_v2_limit(path: Path, value: str) -> None:
    try:
        _write(path, value)
    except SandboxError as exc:
        if path.exists():
            raise
        # cgroupfs makes no files: without the controller the write fails with a bare EACCES.
        controller = path.name.partition(".")[0]
        raise SandboxError(
            f"cgroup v2 file {path.name} is missing in {path.parent}: the {controller} controller is "
            "not enabled for plugind's groups; delegate it to plugind (systemd: Delegate=yes in the unit)",
            step="cgroup",
            detail=exc.detail,
        ) from exc


def _gap(fname: str) -> str | None:
    why = BEST_EFFORT.get(fname)
    return f"{fname} ({why})" if why else None


def write_v2_limits(path: Path, limits: CgroupLimits) -> list[str]:
    """Write the v2 limits into the group `path`; returns the gaps (see `CgroupHandle.gaps`).

    A best-effort file (`BEST_EFFORT`) the kernel does not make is skipped; any other missing file,
    and any write that fails, raises SandboxError.
    """
    gaps = []
    for fname, value in v2_settings(limits).items():
        if fname in BEST_EFFORT and not (path / fname).exists():
            if gap := _gap(fname):
                gaps.append(gap)
            continue
        _write_v2_limit(path / fname, value)
    return gaps


def create_group(
    backend: str,
    parent: str,
    name: str,
    limits: CgroupLimits,
    hier: Hierarchy | None = None,
    *,
    proc_self_cgroup: str | None = None,
) -> CgroupHandle:
    """Create `<parent>/<name>` with the limits applied. Raises SandboxError (step "cgroup").

    v2: the controllers its limits need are enabled on the way to `parent` where missing and allowed
    (`cgroup_layout.plan_parent_controllers`; `proc_self_cgroup`, this process's by default, tells
    which part of the hierarchy is plugind's to write).
    """
    handle = make_group(backend, parent, name, hier, proc_self_cgroup=proc_self_cgroup)
    try:
        apply_limits(handle, limits)
    except SandboxError:
        handle.remove()  # a group without its limits is never left behind
        raise
    return handle


def make_group(
    backend: str,
    parent: str,
    name: str,
    hier: Hierarchy | None = None,
    *,
    proc_self_cgroup: str | None = None,
) -> CgroupHandle:
    """Create `<parent>/<name>` (v1: in every controller) without writing any limit yet; see
    `create_group`. Raises SandboxError (step "cgroup")."""
    hier = hier or detect_cached()
    rel = f"{parent.strip('/')}/{name}"
    if backend == "v2":
        assert hier.v2_path is not None
        root = Path(hier.v2_path)
        _v2_prepare_parent(root, "/" + parent.strip("/"), proc_self_cgroup)
        path = root / rel
        _mkdir(path)
        return CgroupHandle("v2", {c: path for c in ("memory", "cpu", "pids", "io")})
    dirs = _v1_dirs(hier, rel)
    for controller, leaf in dirs.items():
        try:  # the parents are there for every group but the first: one mkdir per controller
            os.mkdir(leaf)
        except OSError:  # a parent is missing, or the group exists: as before, part by part
            _ensure_parents(Path(hier.v1_paths[controller]), rel)
    return CgroupHandle("v1", dirs)


def apply_limits(handle: CgroupHandle, limits: CgroupLimits) -> None:
    """Write `limits` into the group and set `handle.gaps`. Raises SandboxError (step "cgroup"); the
    caller removes the group then."""
    if handle.backend == "v2":
        handle.gaps = tuple(write_v2_limits(next(iter(handle.dirs.values())), limits))
        return
    dirs = handle.dirs
    gaps = []
    for controller, fname, value in v1_settings(limits):
        d = dirs.get(controller)
        path = f"{d}/{fname}"
        if d is None or not os.path.exists(path):
            if fname in BEST_EFFORT:  # no BFQ scheduler, no swap accounting
                if gap := _gap(fname):
                    gaps.append(gap)
                continue
            raise SandboxError(
                f"cgroup v1 file {controller}/{fname} is missing on this host",
                step="cgroup",
                detail=f"open({d}/{fname}): ENOENT",
            )
        _write(path, value)
    handle.gaps = tuple(gaps)


def rename_group(handle: CgroupHandle, name: str) -> CgroupHandle:
    """v1 only: rename the group, processes and all, to `name` within its parent (rename(2) in each
    controller's hierarchy); returns the handle of the renamed group. cgroup2 refuses rename(2)
    (EPERM). All or nothing: when one controller's rename fails, those done are renamed back, so
    the group stays whole under its old name (and `handle` still names all of it). Raises
    SandboxError (step "cgroup")."""
    if handle.backend != "v1":
        raise SandboxError("cgroup v2 groups cannot be renamed", step="cgroup", detail="rename: EPERM")
    dirs = {c: d.with_name(name) for c, d in handle.dirs.items()}
    done: list[tuple[Path, Path]] = []
    for c, d in handle.dirs.items():
        try:
            os.rename(d, dirs[c])
            done.append((dirs[c], d))
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and dirs[c].is_dir():
                continue  # one directory under two names (co-mounted controllers): renamed already
            for renamed, old in reversed(done):
                with contextlib.suppress(OSError):
                    os.rename(renamed, old)
            raise SandboxError(
                f"cannot rename cgroup {d} to {name}: {exc.strerror}",
                step="cgroup",
                detail=f"rename({d}, {dirs[c]}): {errno.errorcode.get(exc.errno or 0, '?')}",
            ) from exc
    return CgroupHandle("v1", dirs)


def open_group(backend: str, parent: str, name: str, hier: Hierarchy | None = None) -> CgroupHandle | None:
    """The handle of an existing group, or None if it does not exist."""
    hier = hier or detect_cached()
    rel = f"{parent.strip('/')}/{name}"
    if backend == "v2":
        if hier.v2_path is None or not Path(hier.v2_path, rel).is_dir():
            return None
        path = Path(hier.v2_path, rel)
        return CgroupHandle("v2", {c: path for c in ("memory", "cpu", "pids", "io")})
    dirs = {c: Path(base, rel) for c in V1_CONTROLLERS
            if (base := hier.v1_paths.get(c)) is not None and os.path.isdir(os.path.join(base, rel))}
    return CgroupHandle("v1", dirs) if dirs else None


def cleanup_stale(parent: str, hier: Hierarchy | None = None) -> list[str]:
    """Kill and remove every group left under `parent` (v1 and v2), deepest first.

    Run at daemon start, before any plugin is loaded. Returns the removed group paths.
    Raises SandboxError if a group cannot be removed.
    """
    hier = hier or detect()
    _check_parent(parent)
    roots = [Path(p) for p in dict.fromkeys(hier.v1_paths.values())]
    if hier.v2_path:
        roots.append(Path(hier.v2_path))
    removed: list[str] = []
    for root in roots:
        top = root / parent.strip("/")
        if not top.is_dir():
            continue
        children = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in children:
            backend = "v2" if hier.v2_path and root == Path(hier.v2_path) else "v1"
            CgroupHandle(backend, {"pids": d}).remove()
            removed.append(str(d))
    if removed:
        log.info("removed %d stale cgroups under %s", len(removed), parent)
    return removed


def lock_root(hier: Hierarchy) -> Path | None:
    """The hierarchy in which `lock_parent` takes its lock, chosen from the host's mounts alone (so
    every daemon on one host picks the same whatever its backend): the unified one on pure v2, else
    the pids controller's, else the first v1 mount, else cgroup2; None without any."""
    if hier.v1_paths:
        return Path(hier.v1_paths.get("pids") or min(hier.v1_paths.values()))
    return Path(hier.v2_path) if hier.v2_path else None


def lock_parent(parent: str, hier: Hierarchy | None = None) -> int | None:
    """Hold an exclusive flock on `parent`'s directory (made if missing) in `lock_root`'s hierarchy
    for as long as the returned fd is open, which the daemon keeps until it exits. Two daemons
    never share a parent: each would take the other's plugin groups for stale ones at start-up
    (`cleanup_stale` kills their processes) and make groups of the same names.

    None when there is no hierarchy or the directory cannot be made (this process may not write
    there, so it cannot make or remove groups there either). Raises SandboxError (step "cgroup")
    when another process holds the lock."""
    hier = hier or detect()
    _check_parent(parent)
    root = lock_root(hier)
    if root is None:
        return None
    directory = root / parent.strip("/")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return hold_lock(directory, directory=True)
    except LockHeld as exc:
        holder = f" (pid {exc.holder})" if exc.holder else ""
        raise SandboxError(
            f"cgroup parent {parent} is in use by another process{holder}, most likely another "
            f"plugind: it holds the lock on {directory}. Stop it first, or give this daemon its own "
            "[sandboxing.cgroups] parent",
            step="cgroup",
            detail=f"flock {directory}: held{holder}",
        ) from None
    except OSError as exc:
        log.debug("no lock on cgroup parent %s: %s", directory, exc)
        return None


def _check_parent(parent: str) -> None:
    # An empty parent would be the hierarchy root: every group on the host, not ours to remove.
    parts = [p for p in parent.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise SandboxError(
            f"invalid cgroup parent {parent!r}: name a group below the hierarchy root, without '..'",
            step="cgroup",
        )


# --- the v2 layout under a delegated subtree (decisions in cgroup_layout) -------------------------


def apply_layout(ops: Iterable[Op], root: Path) -> None:
    """Apply `cgroup_layout` ops under the v2 mount `root`. Raises SandboxError (step "cgroup").

    An Enable is checked against the group's `cgroup.controllers` first: a controller that is not
    offered there is refused by name instead of leaving the kernel's bare EINVAL; one refused with
    EBUSY because the group holds processes is reported with the rule that forbids it and the fix.
    """
    for op in ops:
        path = root / op.path.lstrip("/")
        if isinstance(op, Mkdir):
            _mkdir(path)
        elif isinstance(op, Move):
            _write(path / "cgroup.procs", str(op.pid))
        elif isinstance(op, Enable):
            available = parse_controllers(_read_text(path / "cgroup.controllers"))
            missing = [c for c in op.controllers if c not in available]
            if missing:
                raise SandboxError(
                    f"cannot enable cgroup controller(s) {', '.join(missing)} in {path}: "
                    f"{path}/cgroup.controllers offers only {list(available)}; delegate them to "
                    "plugind (systemd: Delegate=yes in the unit)",
                    step="cgroup",
                    detail=f"read({path}/cgroup.controllers): {' '.join(available) or '(empty)'}",
                )
            _enable(path, op.path, op.controllers)


def _enable(path: Path, group: str, controllers: Iterable[str]) -> None:
    controllers = tuple(controllers)
    try:
        _write(path / "cgroup.subtree_control", " ".join(f"+{c}" for c in controllers))
    except SandboxError as exc:
        cause = exc.__cause__
        if not (isinstance(cause, OSError) and cause.errno == errno.EBUSY):
            raise
        # The kernel says only EBUSY; the reason is the group's own processes.
        pids = [int(p) for p in _read_text(path / "cgroup.procs").split()]
        if not pids:
            raise
        raise SandboxError(
            f"cannot enable {', '.join(controllers)} in {path}/cgroup.subtree_control: "
            + internal_processes(group, pids, controllers),
            step="cgroup",
            detail=exc.detail,
        ) from cause


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise SandboxError(
            f"cannot read {path}: {exc.strerror}",
            step="cgroup",
            detail=f"read({path}): {errno.errorcode.get(exc.errno or 0, '?')}",
        ) from exc


def prepare_v2_layout(
    parent: str, our_pids: Iterable[int], root: Path, *, proc_self_cgroup: str | None = None
) -> Layout:
    """Compute and apply the v2 layout for `parent` (see `cgroup_layout`); returns it.

    `proc_self_cgroup` defaults to this process's /proc/self/cgroup. Raises SandboxError.
    """
    if parent.startswith("/"):
        return plan_v2_layout(parent, "/", base_controllers=(), base_procs=(), our_pids=())
    if proc_self_cgroup is None:
        proc_self_cgroup = _read_text(Path("/proc/self/cgroup"))
    own = own_cgroup(proc_self_cgroup)
    base = root / delegated_base(own).lstrip("/")
    layout = plan_v2_layout(
        parent,
        own,
        base_controllers=parse_controllers(_read_text(base / "cgroup.controllers")),
        base_procs=[int(x) for x in _read_text(base / "cgroup.procs").split()],
        our_pids=our_pids,
    )
    apply_layout(layout.ops, root)
    log.info("cgroup v2 layout: daemon in %s/daemon, plugins under %s", base, layout.parent)
    return layout


def effective_parent(
    configured_backend: str, parent: str, our_pids: Iterable[int], hier: Hierarchy | None = None
) -> str:
    """The plugin parent to use from now on; on v2, after making the delegated layout.

    Call once at daemon start-up, after the fork-server started and before `cleanup_stale`, with
    the daemon's and the fork-server's pids. v1, `none`, or a backend not usable here (the load
    reports that, as before): `parent` unchanged. v2: the absolute path of the plugin parent.
    Raises SandboxError when the v2 layout cannot be made (fail closed: no plugin outside it).
    """
    hier = hier or detect()
    try:
        backend = choose_backend(configured_backend, hier)
    except SandboxError:
        return parent
    if backend != "v2" or hier.v2_path is None:
        return parent
    return prepare_v2_layout(parent, our_pids, Path(hier.v2_path)).parent


def remove_tree(parent: str, hier: Hierarchy | None = None) -> None:
    """Remove `parent` itself after `cleanup_stale` (tests use a unique parent per run)."""
    hier = hier or detect()
    cleanup_stale(parent, hier)
    roots = [Path(p) for p in dict.fromkeys(hier.v1_paths.values())]
    if hier.v2_path:
        roots.append(Path(hier.v2_path))
    for root in roots:
        d = root / parent.strip("/")
        if d.is_dir():
            CgroupHandle("v1", {"pids": d}).remove()


def cgroup_for(plan: SandboxPlan) -> CgroupHandle | None:
    """The plugin's live cgroup handle (for the monitor and OOM reporting), if any."""
    try:
        backend = choose_backend(plan.cgroup_backend, detect_cached())
    except SandboxError:
        return None
    return None if backend is None else open_group(backend, plan.cgroup_parent, plan.group)


__all__ = [
    "BEST_EFFORT",
    "CgroupHandle",
    "CgroupUsage",
    "Hierarchy",
    "apply_layout",
    "apply_limits",
    "cgroup_for",
    "choose_backend",
    "cleanup_stale",
    "create_group",
    "detect",
    "detect_cached",
    "effective_parent",
    "lock_parent",
    "lock_root",
    "make_group",
    "open_group",
    "parse_flat_keyed",
    "parse_mountinfo",
    "prepare_v2_layout",
    "rename_group",
    "v1_settings",
    "v2_settings",
    "write_v2_limits",
]
