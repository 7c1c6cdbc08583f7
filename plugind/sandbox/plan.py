"""The sandbox plan: pure data built from the settings, merged with `[plugin.NAME]`, never wider.

`build_plan` runs in the daemon; the plan crosses to the fork-server as `to_wire()` plain data.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plugind.errors import ConfigError, SandboxError
from plugind.names import PLUGIN_NAME_RE

if TYPE_CHECKING:  # the fork-server imports this module: no pydantic in its heap (plugind.names)
    from plugind.config import Settings

MIB = 1024 * 1024
NAMESPACES = ("mount", "pid", "ipc", "uts", "net")
_INSTANCE_RE = re.compile(r"^[0-9a-z]{0,16}$")

# Host paths a Python interpreter needs, bound read-only; missing ones are skipped at plan time.
SYSTEM_PATHS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/mime.types",
)
ETC_NETWORK = ("/etc/resolv.conf", "/etc/ssl", "/etc/ca-certificates")


@dataclass(frozen=True)
class CgroupLimits:
    """Resource limits for the plugin's cgroup; None means no limit."""

    memory_bytes: int | None = None
    cpu_quota_us: int | None = None
    cpu_period_us: int = 100_000
    pids_max: int | None = None
    io_weight: int | None = None


@dataclass(frozen=True)
class Bind:
    """One bind mount: host `source` at `target` inside the sandbox."""

    source: str
    target: str
    writable: bool = False
    symlink: str | None = None  # when set, create this symlink at `target` instead of binding


@dataclass(frozen=True)
class Target:
    """One allowed network destination: a network (a single host is a /32 or /128) and a port."""

    network: str
    port: int | None = None
    origin: str = ""

    def covers(self, other: Target) -> bool:
        """Whether everything `other` allows is also allowed by self."""
        mine, theirs = ipaddress.ip_network(self.network), ipaddress.ip_network(other.network)
        if mine.version != theirs.version or not theirs.subnet_of(mine):  # type: ignore[arg-type]
            return False
        return self.port is None or self.port == other.port


@dataclass(frozen=True)
class SandboxPlan:
    """Everything spawn_contained needs, as plain data."""

    name: str
    tree: str
    enabled: bool = True
    mode: str = "default"  # default | strict
    allow_degraded: bool = False
    namespaces: tuple[str, ...] = NAMESPACES
    user_namespace: bool = False
    cgroup_backend: str = "auto"  # auto | v2 | v1 | none
    cgroup_parent: str = "plugind"
    limits: CgroupLimits = field(default_factory=CgroupLimits)
    tmp_size_bytes: int = 16 * MIB
    binds: tuple[Bind, ...] = ()
    network_mode: str = "none"  # none | restricted | host
    allowed_targets: tuple[Target, ...] = ()
    rlimit_nofile: int = 256
    rlimit_fsize_bytes: int = 64 * MIB
    rlimit_core: int = 0
    allowed_caps: tuple[str, ...] = ()
    # Set for a second instance of the same plugin (an upgrade starts the new version next to the
    # old): its cgroup and host link are named per instance so neither instance touches the other's.
    instance: str = ""

    @property
    def group(self) -> str:
        """The leaf name of this instance's cgroup: `NAME`, or `NAME@INSTANCE` ('@' is never in a
        plugin name, so no other plugin's group can have it)."""
        return f"{self.name}@{self.instance}" if self.instance else self.name

    @property
    def cgroup_name(self) -> str:
        """The plugin's group, relative to the backend's root."""
        return f"{self.cgroup_parent.strip('/')}/{self.group}"

    def to_wire(self) -> dict[str, Any]:
        """A msgpack-able dict; `from_wire` rebuilds the plan. The same as `dataclasses.asdict(self)`
        (tests/sandbox check it), field by field: asdict's generic deep copy was a tenth of the
        daemon's CPU per sandboxed load."""
        out = {name: getattr(self, name) for name in _PLAN_FIELDS}
        out["limits"] = {name: getattr(self.limits, name) for name in _LIMIT_FIELDS}
        out["binds"] = tuple({"source": b.source, "target": b.target, "writable": b.writable,
                              "symlink": b.symlink} for b in self.binds)
        out["allowed_targets"] = tuple({"network": t.network, "port": t.port, "origin": t.origin}
                                       for t in self.allowed_targets)
        out["namespaces"] = tuple(self.namespaces)
        out["allowed_caps"] = tuple(self.allowed_caps)
        return out

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> SandboxPlan:
        """Rebuild a plan from `to_wire` output. Raises SandboxError on malformed data."""
        try:
            d = dict(data)
            d["limits"] = CgroupLimits(**d["limits"])
            d["binds"] = tuple(Bind(**b) for b in d["binds"])
            d["allowed_targets"] = tuple(Target(**t) for t in d["allowed_targets"])
            d["namespaces"] = tuple(d["namespaces"])
            d["allowed_caps"] = tuple(d["allowed_caps"])
            plan = cls(**d)
        except (KeyError, TypeError, ValueError) as exc:
            raise SandboxError(f"malformed sandbox plan: {exc}", step="plan", detail=str(exc)) from exc
        _validate(plan)
        return plan


_PLAN_FIELDS = tuple(f.name for f in fields(SandboxPlan))
_LIMIT_FIELDS = tuple(f.name for f in fields(CgroupLimits))
if {f.name for f in fields(Bind)} != {"source", "target", "writable", "symlink"} or {
    f.name for f in fields(Target)
} != {"network", "port", "origin"}:  # to_wire spells them out
    raise AssertionError("SandboxPlan.to_wire does not know every field of Bind and Target")


def _validate(plan: SandboxPlan) -> None:
    if not PLUGIN_NAME_RE.match(plan.name):
        raise SandboxError(f"invalid plugin name {plan.name!r} in sandbox plan", step="plan")
    if not _INSTANCE_RE.match(plan.instance):
        raise SandboxError(f"invalid instance {plan.instance!r} in sandbox plan", step="plan")
    if not os.path.isabs(plan.tree):
        raise SandboxError(f"plugin tree must be an absolute path, got {plan.tree!r}", step="plan")
    parts = Path(plan.cgroup_parent.strip("/")).parts
    if not parts or any(p in (".", "..") for p in parts):
        raise SandboxError(f"invalid cgroup parent {plan.cgroup_parent!r}", step="plan")
    for b in plan.binds:
        if not os.path.isabs(b.target) or ".." in b.target.split("/"):
            raise SandboxError(f"bind target must be absolute without '..': {b.target!r}", step="plan")


# --- pure decisions -------------------------------------------------------------------------------


def narrower(global_value: float | None, override: float | None) -> float | None:
    """The tighter of two limits where None or 0 means 'no limit'."""
    g = global_value or None
    o = override or None
    if g is None:
        return o
    if o is None:
        return g
    return min(g, o)


def cpu_quota_us(percent: float | None, period_us: int) -> int | None:
    """Percent of one CPU -> CFS quota in microseconds (kernel minimum 1000 us); None = unlimited."""
    if not percent:
        return None
    return max(1000, round(period_us * percent / 100.0))


def parse_target(text: str, resolve: Callable[[str], list[str]]) -> list[Target]:
    """`host:port`, `CIDR`, `CIDR:port`, `[v6]:port` or `domain:port` -> targets.

    Domains are resolved now (by the host, at load time). Raises ConfigError on malformed input.
    """
    raw = text.strip()
    host, port = raw, None
    if raw.startswith("["):
        host, _, rest = raw[1:].partition("]")
        port = _port(rest.lstrip(":"), raw) if rest else None
    elif raw.count(":") == 1:
        host, _, p = raw.partition(":")
        port = _port(p, raw)
    try:
        net = ipaddress.ip_network(host, strict=False)
        return [Target(str(net), port, raw)]
    except ValueError:
        pass
    if not host or not all(part.replace("-", "").isalnum() for part in host.split(".")):
        raise ConfigError(
            f"allowed target {raw!r}: not a host:port, CIDR or domain:port", key="allowed_targets"
        )
    if port is None:
        raise ConfigError(
            f"allowed target {raw!r}: a domain needs a port (domain:port, e.g. {host}:443)",
            key="allowed_targets",
        )
    addrs = resolve(host)
    if not addrs:
        raise ConfigError(f"allowed target {raw!r}: {host} does not resolve", key="allowed_targets")
    return [Target(str(ipaddress.ip_network(a)), port, raw) for a in sorted(set(addrs))]


def _port(text: str, raw: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"allowed target {raw!r}: port must be 1-65535", key="allowed_targets")
    return int(text)


def resolve_host(host: str) -> list[str]:
    """The addresses of `host` as the daemon's resolver sees them (empty when it does not resolve)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return []
    return [str(info[4][0]) for info in infos]


def merge_targets(
    global_targets: Iterable[str],
    override: Iterable[str] | None,
    resolve: Callable[[str], list[str]],
) -> tuple[Target, ...]:
    """The operator's targets, narrowed by a per-plugin list; each override must be covered.

    Raises ConfigError naming the target when an override is wider than the global list.
    """
    allowed = [t for g in global_targets for t in parse_target(g, resolve)]
    if override is None:
        return tuple(allowed)
    result: list[Target] = []
    for text in override:
        for t in parse_target(text, resolve):
            if not any(g.covers(t) for g in allowed):
                raise ConfigError(
                    f"[plugin] allowed target {text!r} is not within the operator's "
                    "sandboxing.network.allowed_targets",
                    key="allowed_targets",
                )
            result.append(t)
    return tuple(result)


def interpreter_paths() -> list[str]:
    """The directories this interpreter runs from: its prefix, the venv, and the plugind package.

    Kept while `sys.prefix`, `sys.base_prefix` and `sys.path` stay the same: these are the daemon's
    own installation, which nobody but its owner can change (and who can, runs the daemon's code)."""
    key = (sys.base_prefix, sys.prefix, tuple(sys.path))
    cached = _interpreter_cache.get(key)
    if cached is None:
        import plugind

        paths = [sys.base_prefix, sys.prefix, os.path.dirname(os.path.abspath(plugind.__file__))]
        paths += [p for p in sys.path if p.endswith("site-packages")]
        cached = _dedupe_nested(os.path.realpath(p) for p in paths if p and os.path.isdir(p))
        _interpreter_cache.clear()
        _interpreter_cache[key] = cached
    return list(cached)


_interpreter_cache: dict[tuple[Any, ...], list[str]] = {}


def _dedupe_nested(paths: Iterable[str]) -> list[str]:
    out: list[str] = []
    for p in sorted(set(paths), key=len):
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            out.append(p)
    return out


def _dir_identity(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)  # /etc may be a link: the directory whose entries are checked
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def system_binds(network_mode: str, exists: Callable[[str], bool] | None = None) -> list[Bind]:
    """Read-only binds of the interpreter's needs; top-level symlinks (/bin -> usr/bin) kept as links.

    What it checks (whether each system path exists, is a symlink, and where it points) is about
    entries of `/` and `/etc`, which only root changes, and any change of them (a file created,
    removed, replaced, a link made) changes the directory's mtime: the answer is kept while both
    directories keep their identity and mtime, and worked out again otherwise (two lstat calls
    instead of some thirty checks per load). The fork-server opens every source again when it
    mounts it; the plugin's own tree and the operator's paths are never cached (`build_plan`)."""
    if exists is not None:
        return _system_binds(network_mode, exists)
    key = (network_mode, _dir_identity("/"), _dir_identity("/etc"), tuple(sys.path), sys.prefix)
    cached = _system_cache.get(network_mode)
    if cached is None or cached[0] != key:
        cached = (key, tuple(_system_binds(network_mode, os.path.lexists)))
        _system_cache[network_mode] = cached
    return list(cached[1])


_system_cache: dict[str, tuple[tuple[Any, ...], tuple[Bind, ...]]] = {}


def _system_binds(network_mode: str, exists: Callable[[str], bool]) -> list[Bind]:
    binds: list[Bind] = []
    extra_etc = ETC_NETWORK if network_mode != "none" else ()
    for p in (*SYSTEM_PATHS, *ETC_FILES, *extra_etc):
        if not exists(p):
            continue
        if os.path.islink(p) and p in SYSTEM_PATHS:
            binds.append(Bind(p, p, symlink=os.readlink(p)))
        else:
            binds.append(Bind(p, p))
    covered = [b.source for b in binds if b.symlink is None]
    for p in interpreter_paths():
        if not any(p == c or p.startswith(c.rstrip("/") + "/") for c in covered):
            binds.append(Bind(p, p))
    return binds


def _covered(path: str, binds: Iterable[Bind]) -> bool:
    """True when a read-only bind of `path` or of a directory above it is already planned."""
    return any(
        b.symlink is None and not b.writable and b.source == b.target
        and (path == b.target or path.startswith(b.target.rstrip("/") + "/"))
        for b in binds
    )


def user_binds(
    planned: list[Bind],
    paths: Iterable[str | os.PathLike[str]],
    *,
    writable: bool,
    realpath: Callable[[str], str] = os.path.realpath,
    readlink: Callable[[str], str] = os.readlink,
) -> list[Bind]:
    """Binds for `read_only_paths` / `writable_paths`, following symlinks to their targets.

    A path that is or goes through a symlink (`/lib -> usr/lib` on a merged-/usr host) is bound at
    its real location, since a mount never follows a symlink at its destination (ELOOP), and the
    link itself is recreated when its parent is a real directory, so the plugin sees the same paths
    as the host. A read-only path the plan already binds (the system paths) is not bound twice.
    """
    out: list[Bind] = []
    for raw in paths:
        path = os.path.normpath(os.fspath(raw))
        real = realpath(path)
        link_here = real != path and realpath(os.path.dirname(path)) == os.path.dirname(path)
        if link_here and not any(b.target == path for b in (*planned, *out)):
            out.append(Bind(path, path, symlink=readlink(path)))
        if not writable and _covered(real, (*planned, *out)):
            continue
        out.append(Bind(real, real, writable=writable))
    return out


def build_plan(
    settings: Settings,
    name: str,
    tree: str | os.PathLike[str],
    requires: Mapping[str, Any] | None = None,
    *,
    resolve: Callable[[str], list[str]] = resolve_host,
    instance: str = "",
) -> SandboxPlan:
    """Merge the global sandboxing settings with `[plugin.NAME]`; the result is never wider.

    `instance` names a second instance of the plugin (its cgroup becomes `NAME@INSTANCE`).

    `requires` is the manifest's `requires` table (`memory_mb`, `network`). Raises SandboxError
    (step "plan") when the plugin needs more than the operator allows, ConfigError for bad targets.
    """
    sb = settings.sandboxing
    ov = settings.override_for(name)
    requires = requires or {}
    cg = sb.cgroups
    mem_mb = narrower(cg.memory_limit_mb, ov.memory_limit_mb)
    need_mb = requires.get("memory_mb")
    if need_mb and mem_mb and need_mb > mem_mb:
        raise SandboxError(
            f"plugin {name} requires {need_mb} MiB of memory but at most {int(mem_mb)} MiB is allowed; "
            "raise sandboxing.cgroups.memory_limit_mb or [plugin.NAME] memory_limit_mb",
            plugin=name,
            step="plan",
        )
    percent = narrower(cg.cpu_quota_percent, ov.cpu_quota_percent)
    pids = narrower(cg.max_pids, ov.max_pids)
    limits = CgroupLimits(
        memory_bytes=int(mem_mb) * MIB if mem_mb else None,
        cpu_quota_us=cpu_quota_us(percent, cg.cpu_period_us),
        cpu_period_us=cg.cpu_period_us,
        pids_max=int(pids) if pids else None,
        io_weight=cg.io_weight or None,
    )
    net = sb.network
    targets: tuple[Target, ...] = ()
    if net.mode == "restricted":
        targets = merge_targets(net.allowed_targets, ov.allowed_targets, resolve)
    elif ov.allowed_targets:
        raise ConfigError(
            f"[plugin.{name}] allowed_targets needs sandboxing.network.mode = 'restricted'",
            key=f"plugin.{name}.allowed_targets",
        )
    tree_path = os.path.realpath(os.fspath(tree))
    fs = sb.filesystem
    binds = system_binds(net.mode)
    binds += user_binds(binds, fs.read_only_paths, writable=False)
    binds += user_binds(binds, fs.writable_paths, writable=True)
    binds += [Bind(str(b.source), str(b.target), writable=b.writable) for b in fs.bind_mounts]
    binds.append(Bind(tree_path, tree_path))
    ns_cfg = sb.namespaces
    namespaces = tuple(n for n in NAMESPACES if getattr(ns_cfg, n))
    if net.mode == "host":
        namespaces = tuple(n for n in namespaces if n != "net")
    elif "net" not in namespaces:
        raise ConfigError(
            f"sandboxing.network.mode = {net.mode!r} needs sandboxing.namespaces.net = true",
            key="sandboxing.namespaces.net",
        )
    plan = SandboxPlan(
        name=name,
        tree=tree_path,
        enabled=sb.enabled,
        mode=sb.mode,
        allow_degraded=sb.allow_degraded,
        namespaces=namespaces,
        user_namespace=sb.enable_user_namespace or ns_cfg.user,
        cgroup_backend=cg.backend,
        cgroup_parent=cg.parent,
        limits=limits,
        tmp_size_bytes=sb.filesystem.tmp_size_mb * MIB,
        binds=tuple(binds),
        network_mode=net.mode,
        allowed_targets=targets,
        rlimit_nofile=sb.rlimits.nofile,
        rlimit_fsize_bytes=sb.rlimits.fsize_mb * MIB,
        rlimit_core=sb.rlimits.core,
        allowed_caps=tuple(c.lower().removeprefix("cap_") for c in sb.allowed_caps),
        instance=instance,
    )
    _validate(plan)
    return plan


__all__ = [
    "Bind",
    "CgroupLimits",
    "SandboxPlan",
    "Target",
    "build_plan",
    "cpu_quota_us",
    "merge_targets",
    "narrower",
    "parse_target",
    "system_binds",
    "user_binds",
]
