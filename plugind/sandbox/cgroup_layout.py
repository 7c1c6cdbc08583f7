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
`daemon` (systemd's `DelegateSubgroup=daemon`, or an earlier run of this plan). A `parent` starting
with `/` keeps its old meaning: a path from the hierarchy root, for hosts without delegation; no
process is moved then. Everything here is plain data; `plugind.sandbox.cgroups` applies it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from plugind.errors import SandboxError

DAEMON_LEAF = "daemon"
WANTED_CONTROLLERS = ("memory", "pids", "cpu", "io")


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
        raise _err(
            f"cgroup {base} holds processes that are not plugind's (pids {strangers[:8]}), so it is "
            "not delegated to plugind: run it under systemd with Delegate=yes, or set "
            "sandboxing.cgroups.parent to an absolute path such as '/plugind'",
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


__all__ = [
    "DAEMON_LEAF",
    "WANTED_CONTROLLERS",
    "Enable",
    "Layout",
    "Mkdir",
    "Move",
    "Op",
    "delegated_base",
    "own_cgroup",
    "parse_controllers",
    "plan_v2_layout",
]
