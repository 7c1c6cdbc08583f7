"""The ordered list of isolation steps: `spawn_contained` runs them around one fork, nothing else.

Parent side (the fork-server, single-threaded): create and limit the cgroup, build the seccomp
filters, fork the child as PID 1 of a new pid namespace, wait for it to enter its namespaces, put
it in the cgroup, wire its network, release it. Child side: PDEATHSIG, namespaces, wait, filesystem
(pivot_root), loopback, hostname, rlimits, setsid, no_new_privs, capabilities, fds; then
`run_child(hooks)`, whose `before_plugin_import()` loads seccomp last.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import functools
import json
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import prctl

from plugind.errors import SandboxError
from plugind.priority import SPARE_NICE, may_raise_priority
from plugind.sandbox import _libc, caps, cgroups, mounts, namespaces, network, rlimits, seccomp, steps
from plugind.sandbox.cgroups import cgroup_for
from plugind.sandbox.plan import SandboxPlan
from plugind.sandbox.steps import STEPS

log = logging.getLogger("plugind.sandbox.contain")

ACTIVE, OFF = "active", "off"
DEGRADED = "degraded: "  # what a step that could not be applied (and may degrade) reports, then why
_Step = Callable[[str, Callable[[], object]], None]  # `_stepper`'s: step(name, fn)
_CHILD_FAILED = 121  # exit status of a child that could not finish its steps


@dataclass
class Spawned:
    """The contained child: its pid (host view, our direct child) and each step's state."""

    pid: int
    steps: dict[str, str] = field(default_factory=dict)


class ChildHooks:
    """Handed to `run_child` inside the sandbox; the runtime calls these around the plugin import."""

    def __init__(self, plan: SandboxPlan, filters: list[bytes] | None) -> None:
        self.plan = plan
        self._filters = filters
        self.seccomp_loaded = False

    def before_plugin_import(self) -> None:
        """Load the seccomp filters: the last step. Raises SandboxError if the kernel refuses."""
        if self._filters is None or self.seccomp_loaded:
            return
        try:
            seccomp.load(self._filters)
        except OSError as exc:
            raise SandboxError(
                f"seccomp filter refused by the kernel: {exc}",
                plugin=self.plan.name,
                step="seccomp",
                detail=f"seccomp(SECCOMP_SET_MODE_FILTER): {exc}",
            ) from exc
        self.seccomp_loaded = True

    def after_plugin_import(self) -> None:
        """Strict mode: stack the hook-time kill filter now that the plugin's imports are done."""
        if self._filters is not None and self.plan.mode == "strict":
            seccomp.load([_strict_filter()])


_FILTERS: dict[str, list[bytes]] = {}
_STRICT: list[bytes] = []


def _filters_for(plan: SandboxPlan) -> list[bytes]:
    # Built once per (mode, network) in the parent; the child inherits the compiled filter.
    key = plan.network_mode
    if key not in _FILTERS:
        _FILTERS[key] = seccomp.build(plan.mode, plan.network_mode)
    return _FILTERS[key]


def _strict_filter() -> bytes:
    if not _STRICT:
        _STRICT.append(seccomp.build_strict())
    return _STRICT[0]


_HOST_LINKS: dict[str, str] = {}


def _fail(plan: SandboxPlan, step: str, exc: BaseException) -> SandboxError:
    return step_failed(plan, step, str(exc))


def step_failed(plan: SandboxPlan, step: str, detail: str) -> SandboxError:
    """The error for a failed `step`. When plugind lacks a capability the step needs (the usual
    cause of an EPERM), the message names it and says where to grant it (`steps.CAPABILITIES`)."""
    lacking = [need for _step, need in steps.missing(plan, [step])]
    advice = steps.hint(lacking) or (
        "fix the host or set sandboxing.allow_degraded = true to run without it"
    )
    return SandboxError(
        f"sandbox step {step!r} failed for plugin {plan.name}: {detail}; {advice}",
        plugin=plan.name,
        step=step,
        detail=detail,
        missing_caps=sorted({need.capability for need in lacking}) or None,
    )


def spawn_contained(
    plan: SandboxPlan, run_child: Callable[[ChildHooks], NoReturn], keep_fds: list[int]
) -> Spawned:
    """Fork `run_child` into the sandbox `plan` describes; return once every step but seccomp is done.

    Raises SandboxError(step=..., detail=<call and errno>) when a configured step cannot be applied
    and `plan.allow_degraded` is false (the child is then gone and its cgroup removed).
    """
    if not plan.enabled:
        pid = os.fork()
        if pid == 0:
            _run(run_child, ChildHooks(plan, None), keep_fds)
        return Spawned(pid, dict.fromkeys(STEPS, OFF))
    steps: dict[str, str] = dict.fromkeys(STEPS, OFF)

    def degrade(step: str, exc: BaseException) -> None:
        if not plan.allow_degraded:
            raise _fail(plan, step, exc) from exc
        steps[step] = f"{DEGRADED}{exc}"

    filters = _filters_for(plan)
    if plan.mode == "strict":
        _strict_filter()  # compiled here, before the fork, like the others
    fs = _filesystem_plan(plan)
    group: cgroups.CgroupHandle | None = None
    go_r, go_w = os.pipe()
    rep_r, rep_w = os.pipe()
    try:
        group = _group_ahead(plan, degrade)
        pid, placed = _fork(plan, steps, degrade, group)
    except BaseException:
        for fd in (go_r, go_w, rep_r, rep_w):
            os.close(fd)
        if group is not None:
            group.remove()
        raise
    if pid == 0:
        os.close(go_w)
        os.close(rep_r)
        enter = group if group is not None and group.backend == "v1" and not plan.user_namespace else None
        _child(plan, run_child, keep_fds, go_r, rep_w, fs, ChildHooks(plan, filters), enter)
    os.close(go_r)
    os.close(rep_w)
    if group is not None:
        steps["cgroup"] = _cgroup_step(group)
    with os.fdopen(rep_r, "rb") as reports:
        try:
            _parent(plan, pid, None if placed else group, go_w, reports, steps, degrade)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            if group is not None:
                group.remove()
            raise
        finally:
            with contextlib.suppress(OSError):
                os.close(go_w)
    steps["seccomp"] = ACTIVE
    return Spawned(pid, steps)


def _group_ahead(
    plan: SandboxPlan, degrade: Callable[[str, BaseException], None]
) -> cgroups.CgroupHandle | None:
    # The plugin's group with its limits (None: no cgroup step, or it degraded), made before the
    # fork so that the child is in it before it runs any code of its own, and without the move by
    # the parent (a `cgroup.procs` write) that waits out an RCU grace period when no group move
    # happened for a while (10-20 ms): on v1 the child enters it itself, by its one thread
    # (CgroupHandle.enter); on v2 it is born in it (`_fork_child`).
    try:
        backend = cgroups.choose_backend(plan.cgroup_backend, cgroups.detect_cached())
        return None if backend is None else _plugin_group(plan, backend)
    except SandboxError as exc:
        degrade("cgroup", exc)
        return None


def _plugin_group(plan: SandboxPlan, backend: str) -> cgroups.CgroupHandle:
    _remove_stale_group(plan, backend)
    return cgroups.create_group(backend, plan.cgroup_parent, plan.group, plan.limits)


def _remove_stale_group(plan: SandboxPlan, backend: str) -> None:
    existing = cgroups.open_group(backend, plan.cgroup_parent, plan.group)
    if existing is not None:
        existing.remove()  # a previous run of this plugin that nobody cleaned up


def _cgroup_step(group: cgroups.CgroupHandle) -> str:
    # A limit this host could not apply (no swap accounting) is said, not hidden behind ACTIVE.
    return f"{DEGRADED}without {'; '.join(group.gaps)}" if group.gaps else ACTIVE


def _fork(
    plan: SandboxPlan,
    steps: dict[str, str],
    degrade: Callable[[str, BaseException], None],
    group: cgroups.CgroupHandle | None = None,
) -> tuple[int, bool]:
    # Fork the plugin; returns its pid (0 in it) and whether it is in `group` already: born there
    # (v2, `_fork_child`) or entering it itself before anything else (v1: `_child`, or on the
    # user-namespace path the intermediate, before it leaves the host's user namespace). If not
    # (v2 where the kernel refuses clone3), `_parent` moves it.
    if plan.user_namespace:
        try:
            return _fork_in_user_namespace(plan, steps, group)
        except OSError as exc:
            raise _fail(plan, "user_ns", exc) from exc  # never degraded: it changes who the plugin is
    if "pid" not in plan.namespaces:
        return _fork_child(group)
    try:
        saved = namespaces.enter_pid_namespace_for_children()
    except OSError as exc:
        degrade("pid_ns", exc)
        return _fork_child(group)
    try:
        pid, placed = _fork_child(group)
    except BaseException:
        namespaces.restore_pid_namespace(saved)
        raise
    if pid == 0:
        os.close(saved)  # the child stays where it is: PID 1 of the new namespace
        return 0, placed
    namespaces.restore_pid_namespace(saved)
    steps["pid_ns"] = ACTIVE
    return pid, placed


# Set once the kernel refused clone3 (older than 5.7, or a seccomp profile that answers ENOSYS, as
# container runtimes' default profiles do): from then on v2 children are forked and moved.
_NO_CLONE3: list[str] = []
_CLONE3_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EPERM, errno.E2BIG, errno.EINVAL})


def _fork_child(group: cgroups.CgroupHandle | None) -> tuple[int, bool]:
    # os.fork(); with a v2 `group`, the child born in it (clone3 with CLONE_INTO_CGROUP) where the
    # kernel allows it. Returns (pid, whether the child is in `group`, or enters it itself: v1).
    if group is None or group.backend != "v2":
        return os.fork(), group is not None
    if _NO_CLONE3:
        return os.fork(), False
    fd = os.open(group.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _libc.fork_into_cgroup(fd), True
    except RuntimeError:  # a caller with threads (not the fork-server): the C library's fork, moved
        return os.fork(), False
    except _libc.KernelCallError as exc:
        # Not fatal: the parent moves the child instead (and reports any fault of the group's).
        if exc.errno in _CLONE3_UNSUPPORTED:
            _NO_CLONE3.append(str(exc))
            log.info("children are moved into their cgroup after the fork: %s", exc)
        return os.fork(), False
    finally:
        os.close(fd)


NOBODY = 65534
_SUBREAPER: list[bool] = []


def _fork_in_user_namespace(plan: SandboxPlan, steps: dict[str, str],
                            group: cgroups.CgroupHandle | None = None) -> tuple[int, bool]:
    """The user-namespace path: an intermediate process enters the user namespace (we write its
    id maps), then forks the plugin as PID 1 of a pid namespace owned by that user namespace (so the
    plugin may mount /proc) and exits; being a child subreaper, we inherit the plugin.

    Plugin root maps to host `nobody` when we are root, else to our own uid; the plugin switches
    to it after its mounts. The intermediate is in `group` before it forks (born there on v2,
    entering it on v1, while it is still host root: inside, the plugin is host nobody and could
    not write the host's cgroup files), and so the plugin is born there. Returns the plugin's pid
    and whether it is in `group`. Raises OSError.
    """
    if not _SUBREAPER:
        prctl.set_child_subreaper(1)
        _SUBREAPER.append(True)
    up_r, up_w = os.pipe()
    maps_r, maps_w = os.pipe()
    mid, placed = _fork_child(group)
    if mid == 0:
        os.close(up_r)
        os.close(maps_w)
        try:
            prctl.set_pdeathsig(signal.SIGKILL)
            if group is not None and group.backend == "v1":
                group.enter()
            if os.geteuid() == 0:
                os.setgroups([])  # setgroups is denied inside: drop host root's groups now
            _libc.unshare(_libc.CLONE_NEWUSER)
            os.write(up_w, b"u")
            if os.read(maps_r, 1) != b"m":
                os._exit(_CHILD_FAILED)
            if "pid" in plan.namespaces:
                _libc.unshare(_libc.CLONE_NEWPID)
            pid = os.fork()
            if pid == 0:
                os.close(up_w)
                os.close(maps_r)
                return 0, placed  # the plugin: on to the child steps
            os.write(up_w, str(pid).encode())
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(up_w, b"e" + str(exc).encode()[:1000])
        os._exit(0)
    os.close(up_w)
    os.close(maps_r)
    try:
        if os.read(up_r, 1) != b"u":
            raise _libc.KernelCallError("unshare(CLONE_NEWUSER): " + _drain(up_r).decode(errors="replace"), 1)
        uid, gid = (NOBODY, NOBODY) if os.geteuid() == 0 else (os.geteuid(), os.getegid())
        namespaces.write_id_maps(mid, 0, uid, gid)
        os.write(maps_w, b"m")
        data = _drain(up_r)
    finally:
        os.close(up_r)
        os.close(maps_w)
        with contextlib.suppress(ChildProcessError):  # a caller's SIGCHLD reaper may have been first
            os.waitpid(mid, 0)
    if not data.isdigit():
        raise _libc.KernelCallError(f"user namespace set-up: {data.decode(errors='replace')}", 1)
    steps["user_ns"] = ACTIVE
    if "pid" in plan.namespaces:
        steps["pid_ns"] = ACTIVE
    return int(data), placed


def _drain(fd: int) -> bytes:
    out = b""
    while chunk := os.read(fd, 4096):
        out += chunk
    return out.lstrip(b"e")


def _parent(
    plan: SandboxPlan,
    pid: int,
    move_into: cgroups.CgroupHandle | None,
    go_w: int,
    reports: Any,
    steps: dict[str, str],
    degrade: Callable[[str, BaseException], None],
) -> None:
    # While the child sets itself up, we move it into its cgroup where it was not born there (v2
    # where the kernel refuses clone3: `_fork_child`), and wire its network; it runs no code of its
    # own before our "go", which comes only after both are done.
    if move_into is not None:
        try:
            move_into.attach(pid)
        except SandboxError as exc:
            degrade("cgroup", exc)
    first = _read_report(plan, reports)  # the child's namespaces exist now
    if plan.network_mode == "restricted":
        try:
            _HOST_LINKS[plan.group] = network.setup_restricted(pid, plan.allowed_targets)
            steps["network"] = ACTIVE
        except OSError as exc:
            degrade("network", exc)
    second = _read_report(plan, reports)  # every child step is done (or it failed: raises)
    steps.update(first["steps"])
    steps.update(second["steps"])
    with contextlib.suppress(BrokenPipeError):  # killed in between: the caller reaps it as usual
        os.write(go_w, b"g")
    os.close(go_w)


def _read_report(plan: SandboxPlan, reports: Any) -> dict[str, Any]:
    line = reports.readline()
    if not line:
        raise SandboxError(
            f"sandboxed child of plugin {plan.name} died during set-up",
            plugin=plan.name,
            step="spawn",
            detail="child exited before reporting",
        )
    msg: dict[str, Any] = json.loads(line)
    if "error" in msg:
        err = msg["error"]
        raise step_failed(plan, err["step"], err["detail"])
    return msg


# --- the child ----------------------------------------------------------------------------------


class _StepFailed(Exception):
    def __init__(self, step: str, detail: str) -> None:
        super().__init__(detail)
        self.step = step
        self.detail = detail


def _stepper(plan: SandboxPlan, steps: dict[str, str]) -> _Step:
    # A step done in parts (the born-style hand-off: the root sealed in the spare, `/proc` mounted
    # in the plugin) is degraded when any part is: a later part that succeeds never hides it.
    def step(name: str, fn: Callable[[], object]) -> None:
        try:
            fn()
            if not steps.get(name, "").startswith(DEGRADED):
                steps[name] = ACTIVE
        except Exception as exc:
            if not plan.allow_degraded:
                raise _StepFailed(name, str(exc)) from exc
            steps[name] = f"{DEGRADED}{exc}"

    return step


def _child(
    plan: SandboxPlan,
    run_child: Callable[[ChildHooks], NoReturn],
    keep_fds: list[int],
    go_r: int,
    rep_w: int,
    fs: _Filesystem,
    hooks: ChildHooks,
    enter: cgroups.CgroupHandle | None = None,
) -> NoReturn:
    steps: dict[str, str] = {}
    step = _stepper(plan, steps)

    def report() -> None:
        os.write(rep_w, json.dumps({"steps": steps}).encode() + b"\n")

    try:
        if enter is not None:  # first: all it does from here on is counted and limited there
            try:
                enter.enter()
            except SandboxError as exc:  # never degraded: the parent reports the group as in place
                raise _StepFailed("cgroup", exc.detail or str(exc)) from exc
        if not plan.user_namespace:  # else our parent is the exiting intermediate: set it after "go"
            prctl.set_pdeathsig(signal.SIGKILL)
        _enter_namespaces(plan, steps, step, with_mount=fs.template_fd is None)
        report()
        _plugin_steps(plan, steps, step, [*keep_fds, go_r, rep_w], lambda: _build_root(plan, fs, steps),
                      fresh=True)
        report()
        os.close(rep_w)
        if os.read(go_r, 1) != b"g":
            os._exit(_CHILD_FAILED)  # the parent died or gave up: never run unconfined
        os.close(go_r)
        prctl.set_pdeathsig(signal.SIGKILL)  # again: reparenting (user namespace path) and uid changes
    except _StepFailed as exc:
        _send_error(rep_w, exc.step, exc.detail)
        os._exit(_CHILD_FAILED)
    except BaseException as exc:
        _send_error(rep_w, "spawn", f"{type(exc).__name__}: {exc}")
        os._exit(_CHILD_FAILED)
    _run(run_child, hooks, keep_fds)


def _plugin_steps(
    plan: SandboxPlan,
    steps: dict[str, str],
    step: _Step,
    keep_fds: list[int],
    build_root: Callable[[], None],
    *,
    fresh: bool,
) -> None:
    # The child's steps after its namespaces, in order: filesystem (pivot_root), loopback, hostname,
    # fds, rlimits, environment, setsid, no_new_privs, capabilities, not dumpable; seccomp is loaded
    # later by the runtime. A pre-contained spare (`fresh=False`) brought its loopback up, scrubbed
    # its environment and left the daemon's session ahead, and `build_root` only finishes the root
    # it built ahead.
    _root_steps(plan, steps, step, keep_fds, build_root, fresh=fresh)
    _last_steps(plan, steps, step, fresh=fresh)


def _root_steps(
    plan: SandboxPlan,
    steps: dict[str, str],
    step: _Step,
    keep_fds: list[int],
    build_root: Callable[[], None],
    *,
    fresh: bool,
) -> None:
    # `_plugin_steps` up to the fds: filesystem, loopback, hostname, fds.
    if "mount" in plan.namespaces:
        step("filesystem", build_root)
    if fresh and plan.network_mode == "none" and "net" in plan.namespaces:
        step("network", network.loopback_up)
    if plan.user_namespace and os.getresuid() != (0, 0, 0):  # no mount namespace: not done yet
        _become_namespace_root()
    if "uts" in plan.namespaces:
        _libc.sethostname(f"plugin-{plan.name}")
    # Every fd the plugin does not get closed before RLIMIT_NOFILE is lowered: a spawner with
    # more fds open than the plugin's limit would otherwise leave it unable to open any file.
    _close_fds(keep_fds)


def _last_steps(plan: SandboxPlan, steps: dict[str, str], step: _Step, *, fresh: bool) -> None:
    # `_plugin_steps` from the rlimits on.
    step("rlimits", lambda: rlimits.apply(plan))
    if fresh:
        _scrub_environment()
        os.setsid()  # no controlling terminal: no TIOCSTI into the daemon's tty
    allowed = caps.cap_numbers(plan.allowed_caps)
    step("no_new_privs", caps.no_new_privs)
    step("capabilities", lambda: caps.drop(allowed))
    prctl.set_dumpable(False)  # /proc/<pid>/mem and ptrace closed even to its own children


# --- the pre-contained spare ----------------------------------------------------------------------
#
# An idle fork-server forks, ahead of the next sandboxed spawn, a child that does (at nice 19 where
# the fork-server may give it its priority back, `may_raise_priority`) every
# step that does not depend on the plugin: PID 1 of its own pid namespace, in its own ipc, uts and
# network namespaces with loopback up, its root prebuilt from the mount template and pivoted into,
# its environment scrubbed, a session of its own, what of the capability step needs no capability
# (`caps.prepare_drop`: ambient and inheritable sets cleared, the bounding set cut to the caps the
# prototype allows, securebits locked), no_new_privs and the seccomp guard filter
# (SPARE_FILTERS_AHEAD), and (cgroup v1) a group of its own that it makes
# under plugind's parent, `.spare-PID` (a name no plugin's group can have). At hand-off (`use_spare`) the
# fork-server renames that group to the plugin's and writes the plan's limits, and the spare does
# the plugin's own steps (`_plugin_steps`: the tree's mount and the root made read-only, hostname,
# fds, rlimits, no_new_privs, capabilities) while the fork-server does the cgroup, reports them,
# waits for the fork-server's go (sent once the cgroup and its limits are in place) and runs the
# plugin, which loads seccomp last. It is used only for a plan it fits (`spare_fits`), once;
# anything else forks anew.
#
# cgroup v2 refuses rename(2), and moving the spare into the plugin's group would wait out an RCU
# grace period on the load's path (see `_group_ahead`; not under `favordynmods`, where the spare
# is moved: `born_style`). So there the spare is `born`-style: it is
# not PID 1 of a pid namespace but made one for its children, its root is prebuilt without /proc,
# and it has no group of its own. At hand-off the fork-server makes the plugin's group and sends an
# fd of it with the request; the spare mounts the tree, seals the root, sets the hostname and sheds
# its fds, then forks the plugin into that group (clone3 with CLONE_INTO_CGROUP | CLONE_PARENT:
# PID 1 of the new pid namespace, the fork-server's child, in its namespaces and root), says its
# pid and exits. The plugin mounts /proc, does the rest of its steps, reports them and runs (its
# cgroup was in place at its birth: no go to wait for).

# The spare loads this many of seccomp.build's filters while it waits: the guard (default allow; it
# kills kexec, module and reboot calls and refuses TIOCSTI/TIOCLINUX, none of which a hand-off
# makes). The stack ends as a fresh child's: guard, then the allowlist, loaded last at hand-off.
SPARE_FILTERS_AHEAD = 1
_GO = b"go"  # use_spare -> spare, once the plugin's cgroup is in place: it may run the plugin
SPARE_GROUP_PREFIX = ".spare-"  # a plugin's group never starts with '.' (config.PLUGIN_NAME_RE)
_SPARE_PACKET = 256 * 1024
SPARE_REPORT_TIMEOUT_S = 10.0  # a spare that does not report by then is discarded (a bound, not a pace)


@dataclass
class ContainedSpare:
    """The fork-server's handle on a prepared spare (its pid, our end of its socket, its group)."""

    pid: int
    chan: socket.socket
    proto: SandboxPlan
    backend: str | None
    group: cgroups.CgroupHandle | None
    steps: dict[str, str] = field(default_factory=dict)
    root: Any = None  # mounts.plugin_independent(...) of the root it built ahead (mount namespace)
    nice: int = 0  # the fork-server's priority, which a plugin gets (the spare waits at nice 19)
    reniced: bool = False  # it waits at nice 19, and use_spare gives it `nice` back
    ready: bool = False  # its report of the prepared steps was read
    born: bool = False  # (cgroup v2) it forks the plugin into its group at hand-off (see above)
    plugin_pid: int | None = None  # that plugin, once the spare said its pid


def spare_capable(plan: SandboxPlan) -> bool:
    """Whether a spare can be prepared from `plan`'s plugin-independent settings."""
    return (plan.enabled and not plan.user_namespace and "pid" in plan.namespaces
            and plan.network_mode == "none")


def spare_fits(spare: ContainedSpare, plan: SandboxPlan) -> bool:
    """Whether `plan` asks for exactly what `spare` prepared (else the spawn forks anew): the same
    namespaces, network mode, seccomp mode, cgroup backend and parent, no capability the
    prototype's plan did not allow, and a root that differs from the one it built ahead only by
    the plugin's tree."""
    proto = spare.proto
    if not _caps_within(plan.allowed_caps, proto.allowed_caps):
        return False  # its bounding set holds only the prototype's (caps.prepare_drop)
    if not (spare_capable(plan) and plan.namespaces == proto.namespaces
            and plan.network_mode == proto.network_mode and plan.mode == proto.mode
            and plan.cgroup_backend == proto.cgroup_backend and plan.cgroup_parent == proto.cgroup_parent):
        return False
    return "mount" not in plan.namespaces or _root_of(plan) == spare.root


def _caps_within(names: tuple[str, ...], within: tuple[str, ...]) -> bool:
    # Whether every capability `names` allows is among those `within` allows (False for a name that
    # is not a capability: the fresh fork then reports it).
    if names == within:
        return True
    try:
        return set(caps.cap_numbers(names)) <= set(caps.cap_numbers(within))
    except SandboxError:
        return False


@functools.lru_cache(maxsize=256)
def _root_of(plan: SandboxPlan) -> Any:
    # The plugin-independent part of `plan`'s root; None when it has no shared template path
    # (pure, and a plan is frozen: cached, as a plugin is loaded again and again with one plan).
    split = mounts.split_ops(mounts.mount_ops(plan), plan.tree)
    return None if split is None else mounts.plugin_independent(split, plan.tree)


def born_style(backend: str | None, hier: cgroups.Hierarchy) -> bool:
    """Whether a spare prepared now forks its plugin into the plugin's group at hand-off (see
    above): on cgroup v2 where clone3 is allowed, unless cgroup2 is mounted with `favordynmods`.
    With it, a move into a group is cheap (no grace period), and a hand-off that moves the spare
    (2.2 ms from the request to the plugin's first byte on the test machine, whose move is cheap)
    beats the extra fork and the /proc mounts of a born-style one (4.8-6.0 ms there)."""
    return backend == "v2" and not _NO_CLONE3 and "favordynmods" not in hier.v2_options


def prepare_spare(
    proto: SandboxPlan,
    child_setup: Callable[[], None],
    run: Callable[[bytes, int, ChildHooks], NoReturn],
    warm: Callable[[], None] | None = None,
) -> ContainedSpare:
    """Fork a spare for plans like `proto` (see above) and return at once: it prepares itself, at
    the lowest CPU priority (nice 19, so that it never competes with a plugin starting up; only
    where its priority can be given back, `may_raise_priority`), and waits for `use_spare`, which restores
    its priority first.

    In the spare, `child_setup()` runs first (the fork-server sheds its fds and signal plumbing);
    `warm()`, when given, runs once it has reported ready, while it waits (it must not raise);
    at hand-off, `run(payload, sock_fd, hooks)` runs the plugin. Raises SandboxError or OSError
    (nothing is left behind then).
    """
    if not spare_capable(proto):
        raise ValueError("this plan cannot be served by a spare")
    _filters_for(proto)  # compiled here, before the fork, like a fresh child's
    if proto.mode == "strict":
        _strict_filter()
    fs = _filesystem_plan(proto)
    if "mount" in proto.namespaces and (fs.template_fd is None or fs.split is None):
        raise ValueError("no shared mount template: no spare")
    hier = cgroups.detect_cached()
    backend = cgroups.choose_backend(proto.cgroup_backend, hier)
    born = born_style(backend, hier)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    steps: dict[str, str] = dict.fromkeys(STEPS, OFF)

    def never_degraded(step: str, exc: BaseException) -> None:
        raise _fail(proto, step, exc) from exc

    try:
        # A born-style spare stays in our pid namespace: it makes its plugin's itself (_spare_child).
        pid = os.fork() if born else _fork(proto, steps, never_degraded)[0]
    except BaseException:
        ours.close()
        theirs.close()
        raise
    if pid == 0:
        ours.close()
        _spare_child(proto, fs, backend, theirs, child_setup, run, warm, born=born)
    theirs.close()
    ours.settimeout(SPARE_REPORT_TIMEOUT_S)
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    spare = ContainedSpare(pid, ours, proto, backend, None, steps, _root_of(proto), nice=nice, born=born)
    if nice < SPARE_NICE and may_raise_priority(nice):
        try:
            os.setpriority(os.PRIO_PROCESS, pid, SPARE_NICE)  # by us, not by it: use_spare cannot race it
        except BaseException:
            discard_spare(spare)
            raise
        spare.reniced = True
    return spare


def _spare_group(spare: ContainedSpare) -> cgroups.CgroupHandle | None:
    return cgroups.open_group("v1", spare.proto.cgroup_parent, f"{SPARE_GROUP_PREFIX}{spare.pid}")


def _spare_group_name() -> str:
    # In the spare (still in the host's mount namespace): its group is named by its host pid, which
    # /proc/self (the host's procfs) gives; getpid() is 1 in its own pid namespace.
    return f"{SPARE_GROUP_PREFIX}{os.readlink('/proc/self')}"


def _spare_report(plan: SandboxPlan, chan: socket.socket) -> dict[str, Any]:
    data = chan.recv(_SPARE_PACKET)
    if not data:
        raise SandboxError(f"the spare for plugin {plan.name} died during set-up", plugin=plan.name,
                           step="spawn", detail="spare exited before reporting")
    msg: dict[str, Any] = json.loads(data)
    if "error" in msg:
        raise step_failed(plan, msg["error"]["step"], msg["error"]["detail"])
    return msg


def take_report(spare: ContainedSpare) -> None:
    """Read `spare`'s report of its prepared steps (blocking up to SPARE_REPORT_TIMEOUT_S; the
    fork-server calls this as soon as the report is there, while idle, else `use_spare` does) and,
    on cgroup v1, find the group it made. Raises SandboxError if its preparation failed."""
    spare.steps.update(_spare_report(spare.proto, spare.chan)["steps"])
    spare.ready = True
    if spare.backend == "v1":
        spare.group = _spare_group(spare)


def use_spare(spare: ContainedSpare, plan: SandboxPlan, payload: bytes, sock_fd: int) -> Spawned:
    """Hand `plan`'s spawn (`payload` and the plugin's socket) to `spare`; return once every step
    but seccomp is done. Raises ValueError if `plan` does not fit, SandboxError or OSError if the
    hand-off fails: the caller then discards the spare (`discard_spare`) and forks anew."""
    if not spare_fits(spare, plan):
        raise ValueError("the spare does not fit this plan")
    if spare.reniced:
        os.setpriority(os.PRIO_PROCESS, spare.pid, spare.nice)  # a plugin's priority; and it may finish
    if not spare.ready:  # its own preparation (normally long done, and its report read: take_report)
        take_report(spare)
    if spare.backend == "v1" and spare.group is None:  # it made and entered its group itself
        raise SandboxError("the spare's cgroup is missing", step="cgroup", detail="open_group: ENOENT")
    steps = dict(spare.steps)
    fds = [sock_fd]
    try:
        if "mount" in plan.namespaces:
            fds.append(mounts.open_tree_ro(plan.tree))
        if spare.born:  # the plugin's group, with its limits, for the spare to fork the plugin into
            spare.group = _plugin_group(plan, "v2")
            steps["cgroup"] = _cgroup_step(spare.group)
            fds.append(os.open(spare.group.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        socket.send_fds(spare.chan, [payload], fds)
    finally:
        for fd in fds[1:]:
            os.close(fd)
    if spare.born:
        report = _born_report(spare, plan)
        steps.update(report["steps"])
        steps["seccomp"] = ACTIVE
        spare.chan.close()
        assert spare.plugin_pid is not None
        return Spawned(spare.plugin_pid, steps)
    # The spare does the plugin's steps meanwhile, reports, and waits for our go (_GO) before it
    # runs anything of the plugin's: the go comes only once its cgroup and limits are in place (if
    # they fail, we raise, the caller kills it, and it never had a go).
    if spare.backend is not None:
        if spare.group is not None:  # v1: the spare is in its group already
            _remove_stale_group(plan, spare.backend)
            spare.group = cgroups.rename_group(spare.group, plan.group)
            cgroups.apply_limits(spare.group, plan.limits)
        else:  # v2 where the kernel refuses clone3: made now, and the spare moved there
            spare.group = _plugin_group(plan, spare.backend)
            spare.group.attach(spare.pid)
        steps["cgroup"] = _cgroup_step(spare.group)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it failed: its report says why
        spare.chan.send(_GO)
    report = _spare_report(plan, spare.chan)
    steps.update(report["steps"])
    steps["seccomp"] = ACTIVE
    spare.chan.close()
    return Spawned(spare.pid, steps)


def _born_report(spare: ContainedSpare, plan: SandboxPlan) -> dict[str, Any]:
    # A born-style hand-off: the spare says the pid of the plugin it forked, and the plugin its
    # steps, two packets in either order (either may say it failed instead: raises).
    report = None
    while spare.plugin_pid is None or report is None:
        msg = _spare_report(plan, spare.chan)
        if "born" in msg:
            spare.plugin_pid = int(msg["born"])
        else:
            report = msg
    return report


def discard_spare(spare: ContainedSpare, *, reaped: bool = False) -> None:
    """Kill and reap an unused (or failed) spare, unless the caller `reaped` it already (its pid may
    be another process's now), and the plugin it forked if it did (born-style), and remove its
    cgroup. Best effort, never raises."""
    with contextlib.suppress(OSError):
        spare.chan.close()
    if spare.plugin_pid is not None:  # our child (CLONE_PARENT), not reaped: its pid is still its
        with contextlib.suppress(ProcessLookupError):
            os.kill(spare.plugin_pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(spare.plugin_pid, 0)
    if not reaped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(spare.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(spare.pid, 0)
    if spare.group is None and spare.backend == "v1":  # the group it may have made itself
        with contextlib.suppress(Exception):
            spare.group = _spare_group(spare)
    if spare.group is not None:
        with contextlib.suppress(Exception):
            spare.group.remove()


def _spare_child(
    proto: SandboxPlan,
    fs: _Filesystem,
    backend: str | None,
    chan: socket.socket,
    child_setup: Callable[[], None],
    run: Callable[[bytes, int, ChildHooks], NoReturn],
    warm: Callable[[], None] | None = None,
    *,
    born: bool = False,
) -> NoReturn:
    # In the spare: the plugin-independent steps, a report, then wait for the hand-off.
    steps: dict[str, str] = {}
    # Never degraded, whatever `proto` allows: the plan it serves may not allow it. A step that
    # fails here discards the spare; the spawn then forks anew and degrades (or fails) as the plan says.
    step = _stepper(dataclasses.replace(proto, allow_degraded=False), steps)
    try:
        prctl.set_pdeathsig(signal.SIGKILL)
        child_setup()
        if backend == "v1":  # a group of its own (no limits until hand-off), entered by its one thread
            cgroups.make_group(backend, proto.cgroup_parent, _spare_group_name()).enter()
        if born:  # the pid namespace its plugin is forked into, as PID 1
            step("pid_ns", lambda: _libc.unshare(_libc.CLONE_NEWPID))
        _enter_namespaces(proto, steps, step, with_mount=False)  # mount: from the template, later
        if "net" in proto.namespaces:
            step("network", network.loopback_up)
        _scrub_environment()  # (it reads /proc/self, which a born-style spare's new root lacks)
        if "mount" in proto.namespaces:
            assert fs.template_fd is not None and fs.split is not None
            mounts.prebuild_from_template(fs.template_fd, fs.split, proto.tree, with_proc=not born)
        os.setsid()  # no controlling terminal: no TIOCSTI into the daemon's tty
        # What of the capability step it needs no capability for. caps.drop does it all again at
        # hand-off, where the plan says whether a failure fails or degrades the step (a host that
        # refuses it, e.g. without CAP_SETPCAP, is told then, as for a fresh child): here, no error.
        with contextlib.suppress(OSError, SandboxError):
            caps.prepare_drop(caps.cap_numbers(proto.allowed_caps))
        try:  # the guard filter, first of the stack as ever: it refuses nothing the hand-off does
            caps.no_new_privs()
            seccomp.load(_filters_for(proto)[:SPARE_FILTERS_AHEAD])
        except OSError as exc:
            raise _StepFailed("seccomp", str(exc)) from exc
        chan.send(json.dumps({"steps": steps}).encode())
    except BaseException as exc:
        with contextlib.suppress(OSError):
            chan.send(json.dumps({"error": {"step": getattr(exc, "step", "spawn"),
                                            "detail": f"{type(exc).__name__}: {exc}"}}).encode())
        os._exit(_CHILD_FAILED)
    _rehearse_hand_off(proto)
    if warm is not None:
        warm()
    try:
        data, fds, _flags, _addr = socket.recv_fds(chan, _SPARE_PACKET, 3)
    except BaseException:
        os._exit(_CHILD_FAILED)
    if not data or not fds:  # the fork-server gave up on us
        os._exit(0)
    hand_off: list[Any] = []
    try:
        import msgpack

        req = msgpack.unpackb(data, raw=False)
        plan = SandboxPlan.from_wire(req["plan"])
        if not spare_capable(plan) or plan.namespaces != proto.namespaces:
            raise _StepFailed("spawn", "the spare does not fit this plan")
        sock_fd = fds[0]
        if len(fds) != 1 + ("mount" in plan.namespaces) + born:
            raise _StepFailed("spawn", f"the spare was handed {len(fds)} fds")
        steps = {}
        step = _stepper(plan, steps)

        def finish_root() -> None:
            mounts.finish_with_tree(plan.tree, fds[1])
            steps["mount_ns"] = ACTIVE

        if born:  # from here on in the plugin (the spare exited), its steps done and reported
            _born_hand_off(plan, fs, chan, steps, step, sock_fd, fds[-1], finish_root)
        else:
            _plugin_steps(plan, steps, step, [sock_fd, chan.fileno()], finish_root, fresh=False)
            chan.send(json.dumps({"steps": steps}).encode())
        hand_off += [plan, sock_fd]
    except _StepFailed as exc:
        _send_error(chan.fileno(), exc.step, exc.detail)
        os._exit(_CHILD_FAILED)
    except BaseException as exc:
        _send_error(chan.fileno(), "spawn", f"{type(exc).__name__}: {exc}")
        os._exit(_CHILD_FAILED)
    plan, sock_fd = hand_off
    if not born:
        try:  # nothing of the plugin's runs before the fork-server's go: its cgroup is in place then
            go = chan.recv(len(_GO) + 1)
            chan.close()
        except BaseException:
            os._exit(_CHILD_FAILED)
        if go != _GO:  # the fork-server gave up on us (or died): never run unconfined
            os._exit(_CHILD_FAILED)
    # The guard is loaded already (the same program: spare_fits asks for the prototype's network
    # mode, the filters' only input); the allowlist is loaded last, by the runtime, as in a fresh child.
    rest = _filters_for(plan)[SPARE_FILTERS_AHEAD:]
    _run(lambda hooks: run(data, sock_fd, hooks), ChildHooks(plan, rest), [sock_fd])


def _born_hand_off(
    plan: SandboxPlan,
    fs: _Filesystem,
    chan: socket.socket,
    steps: dict[str, str],
    step: _Step,
    sock_fd: int,
    cgroup_fd: int,
    finish_root: Callable[[], None],
) -> None:
    # In a born-style spare (see above): the steps that need no pid namespace of the plugin's,
    # then the plugin forked into its cgroup as PID 1 of the pid namespace made ahead and as the
    # fork-server's child; the spare says its pid and exits. Returns in the plugin, its steps
    # reported: the caller runs it. Raises _StepFailed (in the spare or in the plugin).
    _root_steps(plan, steps, step, [sock_fd, chan.fileno(), cgroup_fd], finish_root, fresh=False)
    try:
        pid = _libc.fork_into_cgroup(cgroup_fd, sibling=True)
    except (OSError, RuntimeError) as exc:
        raise _StepFailed("cgroup", str(exc)) from exc
    if pid != 0:
        chan.send(json.dumps({"born": pid}).encode())
        os._exit(0)
    os.close(cgroup_fd)
    prctl.set_pdeathsig(signal.SIGKILL)  # of the fork-server, our parent now
    os.setsid()  # a session of its own again (the spare's was its, and it is gone)
    if "mount" in plan.namespaces:
        split = fs.split
        assert split is not None
        step("filesystem", lambda: mounts.mount_proc(split))
    _last_steps(plan, steps, step, fresh=False)
    chan.send(json.dumps({"steps": steps}).encode())
    chan.close()


def _rehearse_hand_off(proto: SandboxPlan) -> None:
    # In the spare, once it has reported ready: run, on throwaway values, the Python its hand-off
    # runs (the request decoded, the plan rebuilt and checked, the steps reported, the seccomp
    # programs' buffers), so that the fork-server's pages these touch are copied now, while it
    # waits, and not on the load's path (each copy-on-write fault costs microseconds). Changes no
    # kernel state and nothing the hand-off reads; never raises (a rehearsal that fails warms less).
    with contextlib.suppress(Exception):
        import msgpack

        wire = msgpack.packb({"op": "spawn", "plan": proto.to_wire()}, use_bin_type=True)
        plan = SandboxPlan.from_wire(msgpack.unpackb(wire, raw=False)["plan"])
        steps: dict[str, str] = {"rehearsal": OFF}
        step = _stepper(plan, steps)
        step("rehearsal", lambda: spare_capable(plan) and plan.namespaces == proto.namespaces)
        caps.cap_numbers(plan.allowed_caps)
        rlimits.limits_for(plan)
        json.dumps({"steps": steps}).encode()
        seccomp.sock_fprogs(_filters_for(plan)[SPARE_FILTERS_AHEAD:])
        ChildHooks(plan, _filters_for(plan)[SPARE_FILTERS_AHEAD:])


@dataclass
class _Filesystem:
    ops: list[mounts.MountOp]
    newroot: str
    split: mounts.Split | None = None
    template_fd: int | None = None


def _filesystem_plan(plan: SandboxPlan) -> _Filesystem:
    # Parent side: the mount plan, and the shared template namespace when it applies.
    if "mount" not in plan.namespaces:
        return _Filesystem([], "")
    fs = _Filesystem(mounts.mount_ops(plan), mounts.newroot_dir())
    # The template's mount namespace belongs to our user namespace: a child in its own cannot join.
    split = None if plan.user_namespace else mounts.split_ops(fs.ops, plan.tree)
    if split is not None:
        try:
            fs.template_fd = mounts.template_for(split)
            fs.split = split
        except OSError as exc:
            log.warning("no shared mount template (%s); building each root from scratch", exc)
    return fs


def _become_namespace_root() -> None:
    # The user namespace's root is host nobody (or the daemon's own uid when it is not root).
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def _build_root(plan: SandboxPlan, fs: _Filesystem, steps: dict[str, str]) -> None:
    if fs.template_fd is None or fs.split is None:
        become = _become_namespace_root if plan.user_namespace else None
        mounts.apply(fs.ops, fs.newroot, become)
        return
    tree_fd = mounts.open_tree_ro(plan.tree)  # while we still see the host's tree
    mounts.apply_from_template(fs.template_fd, fs.split, plan.tree, tree_fd)
    steps["mount_ns"] = ACTIVE


def _enter_namespaces(
    plan: SandboxPlan,
    steps: dict[str, str],
    step: _Step,
    *,
    with_mount: bool,
) -> None:
    # With the mount template, the mount namespace is entered later, by setns + unshare.
    names = [n for n in plan.namespaces if n != "pid" and (with_mount or n != "mount")]
    flags = 0
    for name in names:
        flags |= namespaces.FLAGS[name]
    try:
        namespaces.unshare(flags)
        for name in names:
            steps[f"{name}_ns"] = ACTIVE
    except OSError:
        # Try one at a time so the report (or the error) names the namespace the host refuses.
        for name in names:
            step(f"{name}_ns", lambda n=name: namespaces.unshare(namespaces.FLAGS[n]))  # type: ignore[misc]


SAFE_ENV = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONDONTWRITEBYTECODE")


def _scrub_environment() -> None:
    """Only harmless variables reach the plugin, in os.environ and in /proc/self/environ."""
    keep = {k: os.environ[k] for k in SAFE_ENV if k in os.environ}
    os.environ.clear()
    os.environ.update(keep)
    os.environ.update({"HOME": "/tmp", "TMPDIR": "/tmp", "PATH": "/usr/local/bin:/usr/bin:/bin"})
    # /proc/self/environ shows the block our ancestor exec'd with, which unsetenv never touches:
    # zero it, so a secret the caller was started with cannot be read back from there either.
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    env_start, env_end = int(fields[47]), int(fields[48])  # fields 50 and 51 of proc(5)
    if 0 < env_start < env_end:
        ctypes.memset(env_start, 0, env_end - env_start)


def _send_error(fd: int, step: str, detail: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, json.dumps({"error": {"step": step, "detail": detail}}).encode() + b"\n")


def _close_fds(keep: list[int]) -> None:
    """Every fd but `keep` closed; 0-2 point at /dev/null unless kept."""
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        if fd not in keep and fd != null:
            os.dup2(null, fd)
    keep_set = {0, 1, 2, *keep}
    if null not in keep_set:
        os.close(null)
    prev = -1
    for fd in sorted(keep_set):
        if fd > prev + 1:
            os.closerange(prev + 1, fd)
        prev = fd
    os.closerange(prev + 1, 1 << 20)
    for fd in keep:
        os.set_inheritable(fd, True)


def _terminate(signum: int, frame: object) -> None:
    # PID 1 of a pid namespace ignores signals it has no handler for; SIGTERM must still stop it.
    os._exit(128 + signum)


def _run(run_child: Callable[[ChildHooks], NoReturn], hooks: ChildHooks, keep_fds: list[int]) -> NoReturn:
    try:
        _close_fds(keep_fds)
        signal.signal(signal.SIGTERM, _terminate)
        run_child(hooks)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        os._exit(code)
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc(file=sys.stderr)
        os._exit(_CHILD_FAILED)
    os._exit(0)


def cleanup(plan: SandboxPlan) -> None:
    """After the child is reaped: remove its cgroup and host veth (only what we made)."""
    if not plan.enabled:
        return
    ifname = _HOST_LINKS.pop(plan.group, None)
    if ifname:
        with contextlib.suppress(OSError):
            network.remove_host_link(ifname)
    try:
        backend = cgroups.choose_backend(plan.cgroup_backend, cgroups.detect_cached())
    except SandboxError:
        return
    if backend is not None:
        group = cgroups.open_group(backend, plan.cgroup_parent, plan.group)
        if group is not None:
            group.remove()


def oom_killed(plan: SandboxPlan) -> bool:
    """Whether the kernel OOM-killed anything in the plugin's cgroup (ask before `cleanup`)."""
    group = cgroup_for(plan)
    return group is not None and group.oom_kills() > 0


__all__ = [
    "STEPS",
    "ChildHooks",
    "ContainedSpare",
    "Spawned",
    "cgroup_for",
    "cleanup",
    "discard_spare",
    "oom_killed",
    "prepare_spare",
    "spare_capable",
    "spare_fits",
    "spawn_contained",
    "take_report",
    "use_spare",
]
