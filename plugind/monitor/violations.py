"""Resource limits and typed violations: the pure decision "is this sample over a limit?".

No I/O here: `evaluate(sample, limits, ...)` is table-tested; the sampling lives in
`plugind.monitor.sampling` and the reaction (counting, unloading) in `plugind.monitor.resource`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from plugind.config import Settings

MIB = 1024 * 1024


@dataclass(frozen=True)
class ResourceLimits:
    """What one plugin may use. `cpu_time_ms` is per check interval; 0 there means no limit."""

    memory_bytes: int
    cpu_time_ms: int
    threads: int
    fds: int
    connections: int

    @classmethod
    def from_settings(cls, settings: Settings, name: str | None = None) -> ResourceLimits:
        """`[monitoring.limits]`, narrowed (never widened) by `[plugin.NAME] memory_limit_mb`."""
        lim = settings.monitoring.limits
        memory_mb = lim.max_memory_mb
        if name is not None:
            override = settings.override_for(name).memory_limit_mb
            if override:  # 0 / None: no narrower limit for this plugin
                memory_mb = min(memory_mb, override)
        return cls(
            memory_bytes=memory_mb * MIB,
            cpu_time_ms=lim.max_cpu_time_ms,
            threads=lim.max_threads,
            fds=lim.max_fds,
            connections=lim.max_connections,
        )


@dataclass(frozen=True)
class Violation:
    """One sample over one limit. `type` is the metric label (memory, cpu, ...)."""

    type: ClassVar[str] = "violation"

    def describe(self) -> str:
        """A short human line, for logs and the unload reason."""
        raise NotImplementedError

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the audit log and the API."""
        return {"type": self.type, **asdict(self), "message": self.describe()}


@dataclass(frozen=True)
class HeapMemory(Violation):
    used: int
    limit: int
    type: ClassVar[str] = "memory"

    def describe(self) -> str:
        return f"memory {self.used / MIB:.1f} MiB over the limit of {self.limit / MIB:.1f} MiB"


@dataclass(frozen=True)
class CpuTime(Violation):
    used_ms: int
    limit_ms: int
    type: ClassVar[str] = "cpu"

    def describe(self) -> str:
        return f"cpu {self.used_ms} ms in one check interval, over the limit of {self.limit_ms} ms"


@dataclass(frozen=True)
class Threads(Violation):
    count: int
    limit: int
    type: ClassVar[str] = "threads"

    def describe(self) -> str:
        return f"{self.count} threads, over the limit of {self.limit}"


@dataclass(frozen=True)
class FileDescriptors(Violation):
    count: int
    limit: int
    type: ClassVar[str] = "fds"

    def describe(self) -> str:
        return f"{self.count} open file descriptors, over the limit of {self.limit}"


@dataclass(frozen=True)
class Connections(Violation):
    count: int
    limit: int
    type: ClassVar[str] = "connections"

    def describe(self) -> str:
        return f"{self.count} network connections, over the limit of {self.limit}"


@dataclass(frozen=True)
class OomKill(Violation):
    count: int
    type: ClassVar[str] = "oom_kill"

    def describe(self) -> str:
        return f"{self.count} process(es) killed by the kernel OOM killer"


@dataclass(frozen=True)
class Budget(Violation):
    """A request refused for being over one of the plugin's budgets (plugind.host.budgets):
    `refused` requests since the last report of this budget."""

    budget: str
    limit: int
    refused: int
    type: ClassVar[str] = "budget"

    def describe(self) -> str:
        times = "once" if self.refused == 1 else f"{self.refused} times"
        return f"over its {self.budget} budget of {self.limit} ({times})"


@dataclass(frozen=True)
class Usage:
    """The numbers `evaluate` judges (a subset of a sample, so the tables stay readable)."""

    memory_bytes: int
    threads: int
    fds: int
    connections: int


def evaluate(
    usage: Usage, limits: ResourceLimits, *, cpu_ms_per_interval: int | None = None, new_oom_kills: int = 0
) -> list[Violation]:
    """Every limit `usage` is over, in a fixed order. Limits are inclusive: at the limit is fine.

    `cpu_ms_per_interval` is None when there is no earlier sample to compare with (no cpu verdict);
    `new_oom_kills` counts OOM kills since the previous sample.
    """
    out: list[Violation] = []
    if usage.memory_bytes > limits.memory_bytes:
        out.append(HeapMemory(used=usage.memory_bytes, limit=limits.memory_bytes))
    if limits.cpu_time_ms and cpu_ms_per_interval is not None and cpu_ms_per_interval > limits.cpu_time_ms:
        out.append(CpuTime(used_ms=cpu_ms_per_interval, limit_ms=limits.cpu_time_ms))
    if usage.threads > limits.threads:
        out.append(Threads(count=usage.threads, limit=limits.threads))
    if usage.fds > limits.fds:
        out.append(FileDescriptors(count=usage.fds, limit=limits.fds))
    # 0 connections allowed is a real limit (a plugin that must not talk to the network).
    if usage.connections > limits.connections:
        out.append(Connections(count=usage.connections, limit=limits.connections))
    if new_oom_kills > 0:
        out.append(OomKill(count=new_oom_kills))
    return out


__all__ = [
    "Budget",
    "Connections",
    "CpuTime",
    "FileDescriptors",
    "HeapMemory",
    "OomKill",
    "ResourceLimits",
    "Threads",
    "Usage",
    "Violation",
    "evaluate",
]
