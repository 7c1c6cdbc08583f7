"""Pydantic models of the REST API (docs/integrators.md, "REST API"): what requests carry, replies contain."""

from __future__ import annotations

import base64
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from plugind.logs import redact

# A plugin name, never a path: the same pattern as the bundle manifest.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
# Hook names and context keys come from integrators: short and printable, no path separators.
HOOK_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$"  # as plugind.wire.messages.HOOK_NAME_RE
KEY_PATTERN = r"^[A-Za-z0-9_.:-]{1,200}$"
MAX_HOOK_TIMEOUT_S = 3600  # the schema's bound on a request's timeout_s ([hooks] max_timeout_secs lowers it)


_PLAIN = frozenset((str, int, bool, type(None)))


def jsonable(value: Any) -> Any:
    """`value` (a msgpack value) as something JSON can carry: bytes become {"$bytes": base64},
    NaN and infinities the strings "NaN", "Infinity", "-Infinity", map keys strings."""
    # The usual values first, by exact type (a hook reply's data is mostly these): one lookup each.
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is dict:
        return {k if type(k) is str else str(k): jsonable(v) for k, v in value.items()}
    if kind is list:
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PluginNameRequest(_Request):
    plugin_name: str = Field(pattern=NAME_PATTERN, description="plugin name (not a path)")


class UpgradeRequest(_Request):
    plugin_name: str = Field(pattern=NAME_PATTERN, description="plugin name (not a path)")
    version: str | None = Field(
        None,
        pattern=r"^\d[0-9A-Za-z.+-]{0,63}$",
        description="the version to move to (may be the same or lower); default the highest "
        "admitted version above the running one",
    )


class UpgradeReply(BaseModel):
    success: bool
    message: str
    plugin_name: str
    from_version: str
    to_version: str
    old_pid: int | None = None
    pid: int | None = None
    hash: str
    drained: int = Field(
        description="calls in flight on the old version at the switch, finished before it stopped"
    )
    skipped: dict[str, str] = Field(
        default_factory=dict, description="newer versions not admitted: version -> why"
    )


class ActionReply(BaseModel):
    success: bool
    message: str
    warning: str | None = Field(None, description="done, but something the caller must know (e.g. not saved)")


class ErrorReply(BaseModel):
    success: bool = False
    message: str
    error: str = Field(description="machine label: not_found, untrusted, already_loaded, ...")


class HealthReply(BaseModel):
    status: Literal["ok"]
    plugins_loaded: int
    plugins_total: int
    plugins_failed: int = Field(0, description="configured plugins that do not run (see /ready)")


class ReadyReply(BaseModel):
    ready: bool
    status: Literal["starting", "shutting down", "ready", "degraded", "failed"]
    failed: dict[str, str] = Field(
        default_factory=dict, description="configured plugins that do not run: name -> why"
    )
    state: str | None = Field(
        None, description="why the state file does not hold the operator's intent (unreadable, not saved)"
    )

    @field_validator("failed")
    @classmethod
    def _redacted(cls, value: dict[str, str]) -> dict[str, str]:
        return {name: redact(why) for name, why in value.items()}


class PluginSummary(BaseModel):
    name: str
    version: str
    trust_level: str
    state: str
    pid: int | None = None
    hash: str | None = None
    description: str = ""
    error: str | None = None

    @field_validator("error")
    @classmethod
    def _redacted(cls, value: str | None) -> str | None:
        # Why a load failed can quote the plugin's own error message: redacted as the log is.
        return None if value is None else redact(value)


class PluginMetrics(BaseModel):
    heap_bytes: int = 0
    cpu_time_ms: float = 0
    thread_count: int = 0
    fd_count: int = 0
    connection_count: int = 0
    violation_count: int = 0


class PluginDetail(PluginSummary):
    hooks: dict[str, int] = Field(default_factory=dict)
    restarts: int = 0
    isolation: dict[str, str] = Field(default_factory=dict)
    metrics: PluginMetrics | None = None
    violations: list[dict[str, Any]] = Field(default_factory=list)


class UnmountBehaviorRequest(_Request):
    # Strict: "yes" or 1 is a 422, not a silent true.
    auto_unmount: bool = Field(strict=True, description="unload after violation_threshold violating checks")
    log_violations: bool = Field(strict=True, description="log a warning for each violating check")


class UnmountBehaviorReply(BaseModel):
    plugin: str
    auto_unmount: bool
    log_violations: bool


class CheckReply(BaseModel):
    plugin: str
    violations: list[dict[str, Any]] = Field(description="the limits the sample is over (none: empty)")
    metrics: PluginMetrics


class RescanReply(BaseModel):
    success: bool = True
    added: list[str]
    removed: list[str]
    available: list[str]


class HookRequest(_Request):
    data: Any = None
    policy: Literal["chain", "until_error", "all"] = "chain"
    timeout_s: float | None = Field(None, gt=0, le=MAX_HOOK_TIMEOUT_S)


class HookOutcomeReply(BaseModel):
    plugin: str
    outcome: Literal["ok", "error", "timeout", "crashed", "skipped"]
    output: Any = None
    error: dict[str, str] | None = None
    duration_s: float


class HookReply(BaseModel):
    hook: str
    policy: str
    success: bool
    data: Any = None
    results: list[HookOutcomeReply]
    error: dict[str, str] | None = None
    duration_s: float


class ContextValue(_Request):
    value: Any


class ContextReply(BaseModel):
    key: str
    value: Any = None


class AuditReply(BaseModel):
    entries: list[dict[str, Any]]


__all__ = [
    "HOOK_PATTERN",
    "KEY_PATTERN",
    "NAME_PATTERN",
    "ActionReply",
    "AuditReply",
    "CheckReply",
    "ContextReply",
    "ContextValue",
    "ErrorReply",
    "HealthReply",
    "HookOutcomeReply",
    "HookReply",
    "HookRequest",
    "PluginDetail",
    "PluginMetrics",
    "PluginNameRequest",
    "PluginSummary",
    "ReadyReply",
    "RescanReply",
    "UnmountBehaviorReply",
    "UnmountBehaviorRequest",
    "jsonable",
]
