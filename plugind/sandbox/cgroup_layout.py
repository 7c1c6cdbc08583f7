"""Where plugind's groups live on cgroup v2 (pure): own cgroup + controllers + config -> a plan of ops.

Under systemd with `Delegate=yes` the daemon owns exactly the subtree of its own unit (the `0::`
line of `/proc/self/cgroup`); systemd owns everything else (single-writer rule). cgroup v2 forbids
enabling controllers for the children of a group that holds processes ("no internal processes"),
so the daemon's own processes (daemon and fork-server) move into the leaf `<base>/daemon`, as
systemd's `DelegateSubgroup=daemon` would, and the plugin groups live under `<base>/<parent>`:

    <base>/                cgroup.subtree_control: +memory +pids +cpu +io (those available)
      daemon/              the daemon and its fork-server
      plugins/             cgroup.subtree_control: the same controllers
        <plugin>/          one group per plugin (created at load time)

`<base>` is the daemon's own cgroup, or its parent when the daemon already sits in a leaf named
`daemon` (systemd's `DelegateSubgroup=daemon`, or an earlier run of this plan). The daemon must be
alone in `<base>`: a group holding anyone else's processes is not delegated to it. A `parent`
starting with `/` keeps its old meaning: a path from the hierarchy root, for hosts without
delegation; no process is moved then.

When a plugin group is made, `plan_parent_controllers` decides which groups on the way to its
parent must hand which controllers down: from the highest group plugind may write (`writable_top`:
the delegated base, or the root for an absolute parent elsewhere) to the parent, only where
missing, never above. Everything here is plain data; `plugind.sandbox.cgroups` applies it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from plugind.errors import SandboxError

DAEMON_LEAF = "daemon"
WANTED_CONTROLLERS = ("memory", "pids", "cpu", "io")
REQUIRED_CONTROLLERS = ("memory", "pids", "cpu")  # a plugin group's limits and counters need these
OPTIONAL_CONTROLLERS = ("io",)  # io.weight is best effort
RUN_ALONE = (
    "run plugind as the only process of a cgroup delegated to it: under its unit "
    "(systemd/plugind.service: Delegate=yes, nothing else started in it), or in a scope of its own "
    "(systemd-run --scope -p Delegate=yes plugind serve ...; `make run` does this on a systemd "
    "host), or set [sandboxing.cgroups] parent to an absolute path such as '/plugind' "
    "(no group on its way may hold processes)"
)


@dataclass(frozen=True)
class Mkdir:
    """Create the group `path` (absolute in the v2 hierarchy) if it does not exist."""

    path: str


@dataclass(frozen=True)
class Move:
    """Write `pid` into `path`/cgroup.procs."""

    pid: int
    path: str


@dataclass(frozen=True)
class Enable:
    """Write `+c` for each controller into `path`/cgroup.subtree_control."""

    path: str
    controllers: tuple[str, ...]


Op = Mkdir | Move | Enable


@dataclass(frozen=True)
class Layout:
    """The plugin parent (absolute in the v2 hierarchy) and the ops that make it usable, in order."""

    parent: str
    ops: tuple[Op, ...]


def _err(message: str, detail: str = "") -> SandboxError:
    return SandboxError(message, step="cgroup", detail=detail)


def _parts(path: str, what: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") or "\n" in p for p in parts):
        raise _err(f"invalid {what} {path!r}: '.' and '..' are not allowed")
    return parts


def _join(*parts: str) -> str:
    return "/" + "/".join(p for p in parts if p)


def own_cgroup(proc_self_cgroup: str) -> str:
    """The v2 path of the `0::` line of /proc/self/cgroup text. Raises SandboxError if absent."""
    for line in proc_self_cgroup.splitlines():
        hid, _, rest = line.partition(":")
        controllers, sep, path = rest.partition(":")
        if hid == "0" and sep and controllers == "":
            if not path.startswith("/"):
                raise _err(f"malformed cgroup v2 line in /proc/self/cgroup: {line!r}")
            return _join(*_parts(path, "own cgroup"))
    raise _err(
        "no cgroup v2 line ('0::') in /proc/self/cgroup: this process is not in a cgroup2 hierarchy",
        detail="read(/proc/self/cgroup): no 0:: line",
    )


def delegated_base(own: str) -> str:
    """The group the daemon owns: its own cgroup, or the parent of a `daemon` leaf it already sits in."""
    parts = _parts(own, "own cgroup")
    if parts and parts[-1] == DAEMON_LEAF:
        parts = parts[:-1]
    return _join(*parts)


def parse_controllers(text: str) -> tuple[str, ...]:
    """`cgroup.controllers` / `cgroup.subtree_control` text -> controller names."""
    return tuple(text.split())


def plan_v2_layout(
    parent: str,
    own: str,
    *,
    base_controllers: Iterable[str],
    base_procs: Iterable[int],
    our_pids: Iterable[int],
    wanted: Iterable[str] = WANTED_CONTROLLERS,
) -> Layout:
    """The v2 layout for the configured `parent`, given what the daemon's base group holds now.

    `own` is `own_cgroup(...)`; `base_controllers` the base's `cgroup.controllers`, `base_procs` its
    `cgroup.procs`, `our_pids` the daemon's and the fork-server's pids. An absolute `parent` yields
    no ops (it is used as given, from the hierarchy root). Raises SandboxError (step "cgroup") when
    the parent is invalid or clashes with the daemon leaf, or when the base holds processes that are
    not ours (it is then not delegated to us: moving them or enabling controllers is not ours to do).
    """
    if parent.startswith("/"):
        parts = _parts(parent, "sandboxing.cgroups.parent")
        if not parts:
            raise _err("sandboxing.cgroups.parent '/' is the hierarchy root: name a group below it")
        return Layout(_join(*parts), ())
    rel = _parts(parent, "sandboxing.cgroups.parent")
    if not rel:
        raise _err("sandboxing.cgroups.parent is empty: name a group, for example 'plugins'")
    if rel[0] == DAEMON_LEAF:
        raise _err(
            f"sandboxing.cgroups.parent {parent!r} would put plugins inside the daemon's own leaf "
            f"{DAEMON_LEAF!r}: choose another name, for example 'plugins'"
        )
    base = delegated_base(own)
    ours = set(our_pids)
    strangers = sorted(set(base_procs) - ours)
    if strangers:
        # Making the layout means moving every process out of the base (cgroup v2 hands controllers
        # down only from a group without processes), and others' processes are not ours to move.
        raise _err(
            f"cgroup {base} holds processes that are not plugind's (pids {strangers[:8]}), so it is "
            "not delegated to plugind, and plugind cannot make its groups there (cgroup v2's \"no "
            f"internal processes\" rule would need those processes moved out): {RUN_ALONE}",
            detail=f"read({base}/cgroup.procs): foreign pids",
        )
    available = set(base_controllers)
    enable = tuple(c for c in wanted if c in available)
    leaf = _join(*_parts(base, "base"), DAEMON_LEAF)
    ops: list[Op] = [Mkdir(leaf)]
    ops += [Move(pid, leaf) for pid in sorted(ours)]
    levels = [_join(*_parts(base, "base"), *rel[: i + 1]) for i in range(len(rel))]
    if enable:
        ops.append(Enable(base, enable))
    for level in levels:
        ops.append(Mkdir(level))
        if enable:
            ops.append(Enable(level, enable))
    return Layout(levels[-1], tuple(ops))


# --- controllers on the way to a plugin parent, at load time ---------------------------------------


@dataclass(frozen=True)
class Level:
    """One group on the way down to a plugin parent, as read from cgroupfs."""

    path: str  # absolute in the v2 hierarchy
    offered: tuple[str, ...] | None  # its cgroup.controllers; None: the group does not exist yet
    enabled: tuple[str, ...] = ()  # its cgroup.subtree_control
    procs: tuple[int, ...] = ()  # its own processes, which keep it from handing controllers down
    # (always empty for the hierarchy's real root, which the rule exempts)


def writable_top(parent: str, own: str) -> str:
    """The highest group plugind may write on the way to the absolute `parent`.

    `own` is this process's cgroup (`own_cgroup`). Under the delegated base (`delegated_base(own)`)
    that base is ours and everything above it systemd's; any other absolute parent was configured
    from the hierarchy root, so plugind may write from the root down.
    """
    base = delegated_base(own)
    inside = base != "/" and _join(*_parts(parent, "cgroup parent")).startswith(base + "/")
    return base if inside else "/"


def internal_processes(group: str, pids: Sequence[int], controllers: Iterable[str]) -> str:
    """Why `group` cannot hand `controllers` to its children, and what to do about it."""
    return (
        f"cgroup {group} holds processes (pids {sorted(pids)[:8]}), and cgroup v2 lets a group hand "
        "controllers to its children only while it holds none (the \"no internal processes\" rule), "
        f"so it cannot enable {', '.join(controllers)} for them: {RUN_ALONE}"
    )


def plan_parent_controllers(
    levels: Sequence[Level],
    *,
    required: Iterable[str] = REQUIRED_CONTROLLERS,
    optional: Iterable[str] = OPTIONAL_CONTROLLERS,
) -> tuple[Op, ...]:
    """The mkdir / enable ops that give the children of `levels[-1]` (the plugin parent) the
    controllers they need, top-down from `levels[0]` (`writable_top`: nothing above it is written).

    A controller reaches the children only if every level from the top down enables it in its
    `cgroup.subtree_control`; it is enabled where missing. An optional controller that cannot reach
    them is left out (and nothing is written for it). Raises SandboxError (step "cgroup") naming the
    parent, the required controllers that cannot reach it, why and what to do: not offered at the top
    (not delegated to plugind, or not in this kernel's cgroup2 hierarchy), or a level on the way
    holds processes (the "no internal processes" rule).
    """
    if not levels or levels[0].offered is None:
        raise _err("the top of a cgroup path must exist: nothing above it is plugind's to create")
    top, parent = levels[0], levels[-1].path
    offered_at_top = top.offered or ()
    wanted = (*dict.fromkeys((*required, *optional)),)
    chains: dict[str, tuple[str, ...]] = {}  # controller -> the levels to enable it in, top-down
    blocked: dict[str, Level] = {}  # controller -> the level that cannot hand it down
    for c in wanted:
        # A group enables only what its parent enables, so the levels lacking `c` are a tail of the
        # path: the top's offer decides whether `c` is there at all, then no level may hold processes.
        todo = [lv for lv in levels if c not in lv.enabled]
        busy = next((lv for lv in todo if lv.procs), None)
        if todo and todo[0] is top and c not in offered_at_top:
            blocked[c] = top
        elif busy is not None:
            blocked[c] = busy
        else:
            chains[c] = tuple(lv.path for lv in todo)
    missing = [c for c in dict.fromkeys(required) if c in blocked]
    if missing:
        reasons = []
        not_offered = [c for c in missing if c not in offered_at_top and blocked[c] is top]
        if not_offered:
            reasons.append(
                f"{top.path} is not given {', '.join(not_offered)} (its cgroup.controllers: "
                f"{' '.join(offered_at_top) or 'none'}): {_not_delegated_fix(top.path)}"
            )
        for lv in dict.fromkeys(blocked[c] for c in missing if c not in not_offered):
            reasons.append(internal_processes(lv.path, lv.procs, [c for c in missing if blocked[c] is lv]))
        raise _err(
            f"cannot give the plugin groups under {parent} the cgroup controller(s) {', '.join(missing)}: "
            + "; ".join(reasons),
            detail=f"controllers missing under {parent}: {' '.join(missing)}",
        )
    ops: list[Op] = []
    for lv in levels:
        if lv.offered is None:
            ops.append(Mkdir(lv.path))
        enable = tuple(c for c in wanted if lv.path in chains.get(c, ()))
        if enable:
            ops.append(Enable(lv.path, enable))
    return tuple(ops)


def _not_delegated_fix(top: str) -> str:
    if top == "/":
        return (
            "the root of the cgroup2 hierarchy here does not offer them: on a hybrid host they are bound "
            "to cgroup v1 (set sandboxing.cgroups.backend = 'auto' or 'v1'); in a container, the "
            "container's cgroup was not given them (delegate them to it)"
        )
    return (
        f"delegate them to {top}: under systemd, Delegate=yes in plugind's unit (or at least "
        "Delegate=memory pids cpu io)"
    )


__all__ = [
    "DAEMON_LEAF",
    "OPTIONAL_CONTROLLERS",
    "REQUIRED_CONTROLLERS",
    "RUN_ALONE",
    "WANTED_CONTROLLERS",
    "Enable",
    "Layout",
    "Level",
    "Mkdir",
    "Move",
    "Op",
    "delegated_base",
    "internal_processes",
    "own_cgroup",
    "parse_controllers",
    "plan_parent_controllers",
    "plan_v2_layout",
    "writable_top",
]
