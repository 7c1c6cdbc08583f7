"""plugind.monitor: resource sampling, typed violations and the Prometheus metrics of plugind."""

from __future__ import annotations

from plugind.monitor.resource import (
    PluginMetrics,
    ResourceCheck,
    ResourceMonitor,
    UnmountBehavior,
)
from plugind.monitor.sampling import MonitoredPlugin, Sample
from plugind.monitor.violations import (
    Connections,
    CpuTime,
    FileDescriptors,
    HeapMemory,
    OomKill,
    ResourceLimits,
    Threads,
    Violation,
)

__all__ = [
    "Connections",
    "CpuTime",
    "FileDescriptors",
    "HeapMemory",
    "MonitoredPlugin",
    "OomKill",
    "PluginMetrics",
    "ResourceCheck",
    "ResourceLimits",
    "ResourceMonitor",
    "Sample",
    "Threads",
    "UnmountBehavior",
    "Violation",
]
