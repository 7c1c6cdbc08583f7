"""The error hierarchy of plugind: one root, each error carrying its context.

::

    PluginError                      root; .plugin (name or None)
    ├── ConfigError                  .key, .path
    ├── SecurityError
    │   ├── UntrustedPlugin          .level (TrustLevel value)
    │   ├── SignatureInvalid         .bundle
    │   ├── InvalidKey               malformed hex key, wrong length
    │   ├── TrustListError           .path: wrong key, truncated, altered, unknown version
    │   └── BundleError              .bundle, .entry: traversal, links, zip bomb, bad manifest
    ├── LoadError                    .reason (short machine label for metrics)
    │   ├── PluginNotFound
    │   ├── AlreadyLoaded
    │   ├── NotLoaded
    │   ├── PluginBusy               another upgrade or unload of the plugin is under way
    │   └── InitializationError      the plugin failed in on_load / never said hello
    ├── SandboxError                 .step, .detail, .missing_caps: a configured isolation step failed
    ├── HookError                    .hook
    │   ├── HookTimeout              .timeout_s
    │   └── HookFailed               .error_type, .remote_traceback: raised inside the plugin
    ├── ProtocolViolation            .detail: malformed, oversized or unexpected frame
    ├── PluginCrashed                .exit_code, .signal
    ├── ContextError                 .key: denied or invalid context access
    └── BudgetExceeded               .budget, .limit: over a per-plugin (or integrators') budget

Errors cross the wire as data (`to_wire` / `from_wire`) and are rebuilt on the other side.
"""

from __future__ import annotations

from typing import Any, ClassVar


class PluginError(Exception):
    """Root of every plugind error. `plugin` names the plugin concerned, if any."""

    code: ClassVar[str] = "plugin_error"

    def __init__(self, message: str, *, plugin: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.plugin = plugin

    def __str__(self) -> str:
        return self.message

    def context(self) -> dict[str, Any]:
        """The error's attributes beyond the message, for logs and the API."""
        return {k: v for k, v in vars(self).items() if k != "message" and v is not None}

    def to_wire(self) -> dict[str, Any]:
        """A msgpack-able description of this error."""
        return {"type": type(self).__name__, "message": self.message, "context": _plain(self.context())}


class ConfigError(PluginError):
    code = "config_error"

    def __init__(self, message: str, *, key: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.path = path


class SecurityError(PluginError):
    code = "security_error"


class UntrustedPlugin(SecurityError):
    code = "untrusted"

    def __init__(self, message: str, *, plugin: str | None = None, level: str | None = None) -> None:
        super().__init__(message, plugin=plugin)
        self.level = level


class SignatureInvalid(SecurityError):
    code = "signature_invalid"

    def __init__(self, message: str, *, plugin: str | None = None, bundle: str | None = None) -> None:
        super().__init__(message, plugin=plugin)
        self.bundle = bundle


class InvalidKey(SecurityError):
    code = "invalid_key"


class TrustListError(SecurityError):
    code = "trust_list_error"

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class BundleError(SecurityError):
    code = "bad_bundle"

    def __init__(
        self,
        message: str,
        *,
        plugin: str | None = None,
        bundle: str | None = None,
        entry: str | None = None,
    ) -> None:
        super().__init__(message, plugin=plugin)
        self.bundle = bundle
        self.entry = entry


class LoadError(PluginError):
    code = "load_failed"

    def __init__(self, message: str, *, plugin: str | None = None, reason: str | None = None) -> None:
        super().__init__(message, plugin=plugin)
        self.reason = reason or self.code


class PluginNotFound(LoadError):
    code = "not_found"


class AlreadyLoaded(LoadError):
    code = "already_loaded"


class NotLoaded(LoadError):
    code = "not_loaded"


class PluginBusy(LoadError):
    code = "busy"


class InitializationError(LoadError):
    code = "init_failed"


class SandboxError(PluginError):
    code = "sandbox_error"

    def __init__(
        self,
        message: str,
        *,
        plugin: str | None = None,
        step: str | None = None,
        detail: str | None = None,
        missing_caps: list[str] | None = None,
    ) -> None:
        super().__init__(message, plugin=plugin)
        self.step = step
        self.detail = detail
        self.missing_caps = missing_caps


class HookError(PluginError):
    code = "hook_error"

    def __init__(self, message: str, *, plugin: str | None = None, hook: str | None = None) -> None:
        super().__init__(message, plugin=plugin)
        self.hook = hook


class HookTimeout(HookError):
    code = "timeout"

    def __init__(
        self,
        message: str,
        *,
        plugin: str | None = None,
        hook: str | None = None,
        timeout_s: float | None = None,
    ) -> None:
        super().__init__(message, plugin=plugin, hook=hook)
        self.timeout_s = timeout_s


class HookFailed(HookError):
    code = "failed"

    def __init__(
        self,
        message: str,
        *,
        plugin: str | None = None,
        hook: str | None = None,
        error_type: str | None = None,
        remote_traceback: str | None = None,
    ) -> None:
        super().__init__(message, plugin=plugin, hook=hook)
        self.error_type = error_type
        self.remote_traceback = remote_traceback


class ProtocolViolation(PluginError):
    code = "protocol_violation"

    def __init__(self, message: str, *, plugin: str | None = None, detail: str | None = None) -> None:
        super().__init__(message, plugin=plugin)
        self.detail = detail


class PluginCrashed(PluginError):
    code = "crashed"

    def __init__(
        self,
        message: str,
        *,
        plugin: str | None = None,
        exit_code: int | None = None,
        signal: int | None = None,
    ) -> None:
        super().__init__(message, plugin=plugin)
        self.exit_code = exit_code
        self.signal = signal


class ContextError(PluginError):
    code = "context_error"

    def __init__(self, message: str, *, plugin: str | None = None, key: str | None = None) -> None:
        super().__init__(message, plugin=plugin)
        self.key = key


class BudgetExceeded(PluginError):
    """Over a budget the daemon keeps per plugin (or for integrators): `budget` names it
    (context_keys, context_bytes, log_bytes, pending_calls, buffered_bytes), `limit` is its size."""

    code = "budget_exceeded"

    def __init__(
        self, message: str, *, plugin: str | None = None, budget: str | None = None, limit: int | None = None
    ) -> None:
        super().__init__(message, plugin=plugin)
        self.budget = budget
        self.limit = limit


_BY_NAME: dict[str, type[PluginError]] = {}


def _register(cls: type[PluginError]) -> None:
    _BY_NAME[cls.__name__] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(PluginError)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    return str(value)


def from_wire(data: Any) -> PluginError:
    """Rebuild an error sent by `PluginError.to_wire`. Unknown or malformed input gives a PluginError."""
    if not isinstance(data, dict):
        return ProtocolViolation("malformed error object on the wire", detail=repr(data)[:200])
    name = data.get("type")
    raw_message = data.get("message", "")
    # Not str() of whatever a peer sent: a deeply nested value would raise RecursionError.
    message = (raw_message if isinstance(raw_message, str)
               else f"(malformed error message: {type(raw_message).__name__})")[:4000]
    raw_context = data.get("context")
    context: dict[Any, Any] = raw_context if isinstance(raw_context, dict) else {}
    cls = _BY_NAME.get(name) if isinstance(name, str) else None
    if cls is None:
        return PluginError(message)
    err = cls.__new__(cls)
    PluginError.__init__(err, message)
    for key, value in context.items():
        # The context adds attributes; it never replaces the message (a peer's list there reached
        # the API's reply and made it a 500) nor anything the class defines (`args`, `code`, methods),
        # and holds plain values only: a scalar, or a short flat list of them (a peer's value nested
        # a thousand deep made str() of it raise RecursionError in the host).
        if (isinstance(key, str) and key.isidentifier() and not key.startswith("_")
                and key != "message" and not hasattr(cls, key) and _flat(value)):
            setattr(err, key, value)
    return err


_SCALARS = (type(None), bool, int, float, str)
_MAX_CONTEXT_ITEMS = 64
_MAX_CONTEXT_CHARS = 16384


def _flat(value: Any) -> bool:
    if type(value) is list:
        return len(value) <= _MAX_CONTEXT_ITEMS and all(
            type(v) in _SCALARS and (type(v) is not str or len(v) <= _MAX_CONTEXT_CHARS) for v in value)
    return type(value) in _SCALARS and (type(value) is not str or len(value) <= _MAX_CONTEXT_CHARS)


__all__ = [
    "AlreadyLoaded",
    "BudgetExceeded",
    "BundleError",
    "ConfigError",
    "ContextError",
    "HookError",
    "HookFailed",
    "HookTimeout",
    "InitializationError",
    "InvalidKey",
    "LoadError",
    "NotLoaded",
    "PluginBusy",
    "PluginCrashed",
    "PluginError",
    "PluginNotFound",
    "ProtocolViolation",
    "SandboxError",
    "SecurityError",
    "SignatureInvalid",
    "TrustListError",
    "UntrustedPlugin",
    "from_wire",
]
