"""Configuration: `config/plugins.toml` parsed with pydantic-settings, overridable by PLUGIND_* env vars.

Environment overrides use `__` between levels: `PLUGIND_API__LISTEN=0.0.0.0:7070`,
`PLUGIND_SANDBOXING__ENABLED=false`. Unknown keys and invalid values raise `ConfigError` naming the
key and where it came from: the file, or the environment variable. A `PLUGIND_*` variable that is no
setting but is one misspelt (`PLUGIND_API_LISTEN`, one underscore between levels) or names an
unknown key of a section is refused the same way, with the spelling meant when there is one.
Relative paths are resolved against the directory the daemon was started in.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from plugind.errors import ConfigError, PluginError
from plugind.names import PLUGIN_NAME_RE

DEFAULT_CONFIG_PATH = Path("config/plugins.toml")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PluginsSection(_Section):
    directory: Path = Path("plugins")
    extract_dir: Path = Path("data/extracted")
    state_file: Path = Path("data/loaded.json")
    auto_load: bool = True
    scan_on_start: bool = True
    max_bundle_bytes: int = Field(64 * 1024 * 1024, gt=0)
    max_unpacked_bytes: int = Field(256 * 1024 * 1024, gt=0)
    max_files: int = Field(2000, gt=0)


TrustLevelName = Literal["trusted", "signed", "untrusted"]


class SecuritySection(_Section):
    # The lowest trust level that loads (auto-load, explicit load and every restart alike).
    min_trust_level: TrustLevelName = "trusted"
    only_trusted: bool | None = None  # deprecated alias: true = "trusted", false = "signed"
    trust_list_path: Path = Path("data/trust.list")
    # Highest trust-list generation seen (rollback protection); keep it where only plugind writes.
    trust_state_file: Path = Path("data/trust-state.json")
    # name -> Ed25519 public key, 64 hex characters. Configured by value, never discovered.
    public_keys: dict[str, str] = Field(default_factory=dict)

    @field_validator("public_keys")
    @classmethod
    def _hex_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for name, key in value.items():
            if not _HEX64.match(key):
                raise ValueError(f"public key {name!r} must be 64 hex characters (an Ed25519 key)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _only_trusted_alias(cls, data: Any) -> Any:
        # The deprecated alias decides when it is given (in a file, the environment or an
        # assignment), and is consumed: min_trust_level is the one setting that is read.
        if not isinstance(data, dict) or data.get("only_trusted") is None:
            return data
        flag = data["only_trusted"]
        if isinstance(flag, str):  # from PLUGIND_SECURITY__ONLY_TRUSTED
            word = flag.strip().lower()
            if word in ("1", "true", "yes", "on"):
                flag = True
            elif word in ("0", "false", "no", "off"):
                flag = False
            else:  # an empty or unknown word never lowers the policy
                raise ValueError(f"only_trusted must be true or false, not {flag!r} (deprecated: set "
                                 "min_trust_level instead)")
        elif not isinstance(flag, bool):
            raise ValueError(f"only_trusted must be true or false, not {flag!r} (deprecated: set "
                             "min_trust_level instead)")
        return {**data, "min_trust_level": "trusted" if flag else "signed", "only_trusted": None}


class ApiSection(_Section):
    listen: str = "127.0.0.1:7070"
    unix_socket: Path | None = None
    token_file: Path | None = Path("data/dev-api-token")
    max_body_bytes: int = Field(1024 * 1024, gt=0)
    open_metrics: bool = True
    # What /ready needs once start-up is done: "started" nothing more, "any" at least one configured
    # plugin running if any failed, "all" every configured plugin running (see docs/operations.md).
    ready_requires: Literal["started", "any", "all"] = "any"
    # The HTTP edge (plugind/api/edge.py, docs/operations.md "HTTP edge"); 0 = no limit.
    max_connections: int = Field(1024, ge=0)  # open API connections; lowered to fit RLIMIT_NOFILE
    max_connections_per_client: int = Field(128, ge=0)  # per client IP address (TCP)
    header_timeout_secs: float = Field(10.0, ge=0, le=3600)  # request line + headers complete
    body_timeout_secs: float = Field(30.0, ge=0, le=3600)  # whole body, counted from its head
    keepalive_timeout_secs: float = Field(5.0, gt=0, le=3600)  # idle kept-alive connection
    max_requests_per_connection: int = Field(1000, ge=0)
    max_header_bytes: int = Field(16384, ge=1024, le=1024 * 1024)
    # HTTP/1.1 parser: "auto" httptools (C) where installed, else h11 (pure Python, slower).
    http_parser: Literal["auto", "httptools", "h11"] = "auto"
    # HOST:PORT of a listener for GET /health and /ready only (for probes); none by default.
    probe_listen: str | None = None

    @field_validator("listen", "probe_listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if not value:
            return None  # probe_listen = "" (e.g. PLUGIND_API__PROBE_LISTEN=): none
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be HOST:PORT, for example 127.0.0.1:7070")
        return value


class HooksSection(_Section):
    default_timeout_secs: float = Field(5.0, gt=0, le=3600)
    # Per-hook deadlines, e.g. {on_request = 0.5}
    timeouts: dict[str, Annotated[float, Field(gt=0, le=3600)]] = Field(default_factory=dict)
    # The longest deadline a call may have (a request's timeout_s over it is refused; configured
    # deadlines are cut to it): while a call runs, a silent but not stopped plugin is excused.
    max_timeout_secs: float = Field(300.0, gt=0, le=3600)


class SupervisorSection(_Section):
    hello_timeout_secs: float = Field(10.0, gt=0)
    heartbeat_interval_secs: float = Field(2.0, gt=0)
    heartbeat_timeout_secs: float = Field(6.0, gt=0)
    shutdown_grace_secs: float = Field(3.0, ge=0)
    restart: Literal["never", "on-failure", "always"] = "on-failure"
    max_restarts: int = Field(5, ge=0)
    restart_window_secs: float = Field(60.0, gt=0)
    backoff_initial_secs: float = Field(0.1, ge=0)
    backoff_max_secs: float = Field(30.0, ge=0)
    max_frame_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    # Fork-servers starting plugins side by side (plugind/host/launchers.py); 0: one per CPU, at most 4.
    fork_servers: int = Field(0, ge=0, le=16)
    # After answering a call that came soon after the previous one, a plugin polls its socket this
    # long before it sleeps (see docs/internals.md, "Adaptive spin"); 0 = always sleep.
    spin_us: int = Field(200, ge=0, le=1000)
    # While a call is in flight, the daemon's event loop polls instead of sleeping for up to this
    # long (adapted per plugin; see plugind/host/poll.py); 0 = always sleep.
    host_spin_us: int = Field(200, ge=0, le=1000)


class LimitsSection(_Section):
    max_memory_mb: int = Field(256, gt=0)
    max_cpu_time_ms: int = Field(0, ge=0)  # cpu ms per check interval; 0 = no limit
    max_threads: int = Field(64, gt=0)
    max_fds: int = Field(256, gt=0)
    max_connections: int = Field(64, ge=0)


class MonitoringSection(_Section):
    enabled: bool = True
    check_interval_secs: float = Field(5.0, gt=0)
    auto_unmount: bool = True
    log_violations: bool = True
    violation_threshold: int = Field(3, ge=1)
    limits: LimitsSection = Field(default_factory=LimitsSection)


class NamespacesSection(_Section):
    pid: bool = True
    net: bool = True
    mount: bool = True
    ipc: bool = True
    uts: bool = True
    user: bool = False


class CgroupsSection(_Section):
    backend: Literal["auto", "v2", "v1", "none"] = "auto"
    parent: str = "plugind"
    memory_limit_mb: int = Field(256, ge=0)  # 0 = no limit
    cpu_quota_percent: float = Field(50.0, ge=0, le=100 * 1024)  # of one CPU; 0 = no limit
    cpu_period_us: int = Field(100_000, ge=1000, le=1_000_000)
    max_pids: int = Field(64, ge=0)
    io_weight: int = Field(100, ge=0, le=10000)  # 0 = leave unset


class BindMount(_Section):
    source: Path
    target: Path
    writable: bool = False


class FilesystemSection(_Section):
    tmp_size_mb: int = Field(16, gt=0)
    read_only_paths: list[Path] = Field(default_factory=list)
    writable_paths: list[Path] = Field(default_factory=list)
    bind_mounts: list[BindMount] = Field(default_factory=list)
    # Let a path above bind the host's /tmp (or /) over the plugin's private /tmp tmpfs.
    allow_host_tmp: bool = False

    @model_validator(mode="after")
    def _private_tmp(self) -> FilesystemSection:
        if self.allow_host_tmp:
            return self
        mounted = [("read_only_paths", p) for p in self.read_only_paths]
        mounted += [("writable_paths", p) for p in self.writable_paths]
        mounted += [("bind_mounts.target", b.target) for b in self.bind_mounts]
        for key, path in mounted:
            if os.path.normpath(path) in ("/tmp", "/"):
                raise ValueError(
                    f"sandboxing.filesystem.{key}: {str(path)!r} would put the host's files over the "
                    "plugin's private /tmp (a tmpfs, already writable, sized by tmp_size_mb); remove "
                    "it, share a dedicated directory instead, or set "
                    "sandboxing.filesystem.allow_host_tmp = true"
                )
        return self


def _check_targets(targets: list[str] | None) -> list[str] | None:
    """Refuse malformed targets (a domain without a port, ...) at config load, without resolving."""
    from plugind.sandbox.plan import parse_target  # imports this module: import it late

    for text in targets or ():
        try:
            parse_target(text, lambda _host: ["192.0.2.1"])
        except PluginError as exc:
            raise ValueError(str(exc)) from None
    return targets


class NetworkSection(_Section):
    mode: Literal["none", "restricted", "host"] = "none"
    # host:port, CIDR (optionally :port) or domain:port; domains are resolved by the host at load time
    allowed_targets: list[str] = Field(default_factory=list)

    _targets = field_validator("allowed_targets")(_check_targets)


class RlimitsSection(_Section):
    nofile: int = Field(256, gt=0)
    fsize_mb: int = Field(64, gt=0)
    core: int = Field(0, ge=0)


class SandboxingSection(_Section):
    enabled: bool = True
    mode: Literal["default", "strict"] = "default"
    allow_degraded: bool = False
    enable_user_namespace: bool = False
    namespaces: NamespacesSection = Field(default_factory=NamespacesSection)
    cgroups: CgroupsSection = Field(default_factory=CgroupsSection)
    filesystem: FilesystemSection = Field(default_factory=FilesystemSection)
    network: NetworkSection = Field(default_factory=NetworkSection)
    rlimits: RlimitsSection = Field(default_factory=RlimitsSection)
    allowed_caps: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _strict_has_no_network(self) -> SandboxingSection:
        if self.mode == "strict" and self.network.mode != "none":
            raise ValueError(
                f"sandboxing.mode = 'strict' kills a hook that calls socket or connect, so "
                f"sandboxing.network.mode = {self.network.mode!r} could never be used: set "
                "sandboxing.mode = 'default' (the network stays limited to allowed_targets) or "
                "sandboxing.network.mode = 'none'"
            )
        return self


class BudgetsSection(_Section):
    """What the daemon keeps on each plugin's behalf, per plugin (see docs/operations.md, "Budgets")."""

    context_keys: int = Field(1000, ge=0)  # context keys a plugin owns (it wrote them last)
    context_bytes: int = Field(8 * 1024 * 1024, ge=0)  # their key + value bytes, plus 256 a key
    log_bytes_per_sec: int = Field(64 * 1024, ge=0)  # of plugin log text, beside 200 lines/s
    pending_calls: int = Field(256, ge=1)  # hook calls in flight to one plugin
    buffered_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024)  # replies queued for a non-reader
    api_context_keys: int = Field(10_000, ge=0)  # integrators' PUT /api/context, all together
    api_context_bytes: int = Field(64 * 1024 * 1024, ge=0)


class BudgetOverride(_Section):
    """[plugin.NAME.budgets]: this plugin's budgets, in either direction (unset: [budgets])."""

    context_keys: int | None = Field(None, ge=0)
    context_bytes: int | None = Field(None, ge=0)
    log_bytes_per_sec: int | None = Field(None, ge=0)
    pending_calls: int | None = Field(None, ge=1)
    buffered_bytes: int | None = Field(None, ge=64 * 1024)


class PluginOverride(_Section):
    """Per-plugin settings under [plugin.NAME]; never wider than the operator's global limits."""

    memory_limit_mb: int | None = Field(None, ge=0)
    cpu_quota_percent: float | None = Field(None, ge=0)
    max_pids: int | None = Field(None, ge=0)
    allowed_targets: list[str] | None = None
    hook_timeouts: dict[str, Annotated[float, Field(gt=0, le=3600)]] = Field(default_factory=dict)
    # context namespaces (key prefixes) this plugin may write besides its own "NAME."
    context_grants: list[str] = Field(default_factory=list)
    restart: Literal["never", "on-failure", "always"] | None = None
    budgets: BudgetOverride = Field(default_factory=BudgetOverride)
    _targets = field_validator("allowed_targets")(_check_targets)
    # The monitor's reaction to this plugin's violations; unset = `[monitoring]`'s value.
    auto_unmount: bool | None = None
    log_violations: bool | None = None


class LoggingSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "text"] = "auto"
    audit_log: Path = Path("data/audit.log")


class _TomlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


class Settings(BaseSettings):
    """The whole configuration. Build it with `load_config`."""

    model_config = SettingsConfigDict(
        env_prefix="PLUGIND_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    plugins: PluginsSection = Field(default_factory=PluginsSection)
    security: SecuritySection = Field(default_factory=SecuritySection)
    api: ApiSection = Field(default_factory=ApiSection)
    hooks: HooksSection = Field(default_factory=HooksSection)
    supervisor: SupervisorSection = Field(default_factory=SupervisorSection)
    monitoring: MonitoringSection = Field(default_factory=MonitoringSection)
    sandboxing: SandboxingSection = Field(default_factory=SandboxingSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    budgets: BudgetsSection = Field(default_factory=BudgetsSection)
    plugin: dict[str, PluginOverride] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _override_names(self) -> Settings:
        for name in self.plugin:
            if not PLUGIN_NAME_RE.match(name):
                raise ValueError(f"[plugin.{name}]: not a valid plugin name")
        return self

    def override_for(self, name: str) -> PluginOverride:
        """The [plugin.NAME] section, or an empty override."""
        return self.plugin.get(name) or PluginOverride()

    def hook_timeout(self, hook: str, plugin: str | None = None) -> float:
        """Deadline for a hook: per-plugin, else per-hook, else the default; at most max_timeout_secs."""
        # On every hook call without a deadline: look the override up, not override_for (which
        # builds an empty model); each model read once and no min() call (half the cost).
        hooks = self.hooks
        cap = hooks.max_timeout_secs
        if plugin is not None:
            override = self.plugin.get(plugin)
            if override is not None:
                configured = override.hook_timeouts.get(hook)
                if configured is not None:
                    return configured if configured <= cap else cap
        configured = hooks.timeouts.get(hook, hooks.default_timeout_secs)
        return configured if configured <= cap else cap


PLUGIN_DIR_ENV = "PLUGIN_DIR"  # the integration guide's name for PLUGIND_PLUGINS__DIRECTORY


def _with_plugin_dir(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with `PLUGIN_DIR` as `[plugins] directory` (an environment value: it wins over the file).

    Raises ConfigError when it is empty, or set along with PLUGIND_PLUGINS__DIRECTORY to another path.
    """
    alias = os.environ.get(PLUGIN_DIR_ENV)
    if alias is None:
        return data
    if not alias.strip():
        raise ConfigError(f"{PLUGIN_DIR_ENV} is set but empty: unset it or name the plugin directory",
                          key=PLUGIN_DIR_ENV)
    ours = os.environ.get("PLUGIND_PLUGINS__DIRECTORY")
    if ours is not None and os.path.normpath(ours) != os.path.normpath(alias):
        raise ConfigError(
            f"{PLUGIN_DIR_ENV}={alias!r} and PLUGIND_PLUGINS__DIRECTORY={ours!r} name different plugin "
            f"directories: unset one of them ({PLUGIN_DIR_ENV} is an alias of the other)",
            key=PLUGIN_DIR_ENV,
        )
    plugins = data.get("plugins")
    section = dict(plugins) if isinstance(plugins, dict) else {}
    section["directory"] = alias
    return {**data, "plugins": section}


def _unparsed_env(error: str) -> str:
    # The variables of the section pydantic-settings could not parse ('... for field "sandboxing"
    # ...') whose values are not JSON: the ones to fix, named.
    import json

    match = re.search(r'field "(\w+)"', error)
    prefix = f"PLUGIND_{match.group(1).upper()}__" if match else "PLUGIND_"
    bad = []
    for name, value in sorted(os.environ.items()):
        if name.upper().startswith(prefix):
            try:
                json.loads(value)
            except ValueError:
                bad.append(name)
    return ", ".join(bad) if bad else f"a {prefix}* environment variable"


# PLUGIND_* variables that are not settings: read elsewhere (the API token, the log spec, the
# configuration file's path), set by plugind for an exec plugin, or by its own tooling (the host lanes).
OTHER_ENV = frozenset({"PLUGIND_CONFIG", "PLUGIND_API_TOKEN", "PLUGIND_LOG", "PLUGIND_FD", "PLUGIND_NAME",
                       "PLUGIND_MAX_FRAME"})
OTHER_ENV_PREFIXES = ("PLUGIND_HOSTS_",)
_ENV_PREFIX = "PLUGIND_"


def _level(annotation: Any) -> Any:
    # What lies under a field: a model; ("dict", what it holds) for a table whose keys are anyone's
    # (a plugin's name, a hook's); or None (a value: no level below).
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is dict:
        return ("dict", typing.get_args(annotation)[1])
    return None


def _walk(parts: list[str], *, closest: bool = False) -> tuple[list[str], bool] | None:
    """The settings key `PLUGIND_` + "__".join(parts) names (lower case), and whether it is one value
    (not a whole section or table); None when it names none. With `closest`, a level's name that is
    no key is replaced by its closest key (a table's keys are kept as they are)."""
    level: Any = Settings
    path: list[str] = []
    for part in parts:
        name = part.lower()
        if not name:
            return None
        if isinstance(level, tuple):
            path.append(name)
            level = _level(level[1])
            continue
        if level is None:
            return None
        if name not in level.model_fields:
            fields = list(level.model_fields)
            close = difflib.get_close_matches(name, fields, n=1, cutoff=0.7) if closest else []
            if not close:
                return None
            name = close[0]
        path.append(name)
        level = _level(level.model_fields[name].annotation)
    return path, level is None


def _env_name(path: typing.Iterable[Any]) -> str:
    # The PLUGIND_* variable of a settings key (levels joined by "__", in capitals).
    return _ENV_PREFIX + "__".join(str(p).upper() for p in path)


def _respelled(rest: str) -> list[str] | None:
    # The key of a spelling of PLUGIND_<rest> with "__" between some of its words that names one value.
    words = [w for w in rest.split("_") if w]
    if not 1 < len(words) <= 10:
        return None
    for joins in itertools.product(("_", "__"), repeat=len(words) - 1):
        found = _walk("".join(w + j for w, j in zip(words, (*joins, ""), strict=True)).split("__"))
        if found is not None and found[1]:
            return found[0]
    return None


def check_env_names() -> None:
    """Refuse a `PLUGIND_*` variable that sets nothing but looks meant to: spelt with `__` between
    its words, or with the closest key of each level, it names a setting (`PLUGIND_API_LISTEN`,
    `PLUGIND_API__LISTENN`). pydantic-settings ignores the first kind silently. Other `PLUGIND_*`
    names (OTHER_ENV, a tool's own) are not ours to judge. Raises ConfigError naming the variable
    and the spelling meant."""
    for name in sorted(os.environ):
        upper = name.upper()
        if not upper.startswith(_ENV_PREFIX) or upper in OTHER_ENV or upper.startswith(OTHER_ENV_PREFIXES):
            continue
        rest = upper[len(_ENV_PREFIX):]
        parts = rest.split("__")
        if _walk(parts) is not None:
            continue
        closest = _walk(parts, closest=True) if len(parts) > 1 else None
        meant = closest[0] if closest is not None else _respelled(rest)
        if meant is None:
            continue  # no setting of ours, nor one misspelt
        raise ConfigError(f"{name} sets nothing: did you mean {_env_name(meant)}? (the variable of a "
                          "setting is PLUGIND_ and its keys in capitals, two underscores between levels)",
                          key=".".join(meant))


def _from_env(loc: tuple[Any, ...]) -> str | None:
    # The PLUGIND_* variable that gave the value at `loc` (environment values win over the file's):
    # the deepest one set of PLUGIND_A__B__C, PLUGIND_A__B, PLUGIND_A.
    names = {n.upper(): n for n in os.environ}
    for i in range(len(loc), 0, -1):
        if (candidate := _env_name(loc[:i])) in names:
            return names[candidate]
    return None


def _env_within(loc: tuple[Any, ...]) -> list[str]:
    # The PLUGIND_* variables set below `loc` (a section whose own check failed: its values may come
    # from the file and the environment alike).
    prefix = _env_name(loc) + "__"
    return sorted(n for n in os.environ if n.upper().startswith(prefix))


def load_config(path: str | os.PathLike[str] | None = None, *, env: bool = True) -> Settings:
    """Read the TOML file at `path` (default config/plugins.toml, or $PLUGIND_CONFIG) plus PLUGIND_* env.

    `PLUGIN_DIR` is accepted as an alias of `PLUGIND_PLUGINS__DIRECTORY` (not when `env` is False).

    A missing default file gives the built-in defaults; a missing explicit file is an error.
    Raises ConfigError naming the file and the offending key.
    """
    explicit = path is not None or "PLUGIND_CONFIG" in os.environ
    cfg_path = Path(path if path is not None else os.environ.get("PLUGIND_CONFIG", DEFAULT_CONFIG_PATH))
    data: dict[str, Any] = {}
    if cfg_path.exists():
        try:
            data = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{cfg_path}: not valid TOML: {exc}", path=str(cfg_path)) from exc
        except OSError as exc:
            raise ConfigError(f"{cfg_path}: cannot read: {exc.strerror}", path=str(cfg_path)) from exc
    elif explicit:
        raise ConfigError(f"{cfg_path}: configuration file not found", path=str(cfg_path))

    toml_data = _with_plugin_dir(data) if env else data
    if env:
        check_env_names()

    class _Bound(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings]
            if env:
                sources.append(env_settings)
            sources.append(_TomlSource(settings_cls, toml_data))
            return tuple(sources)

    try:
        settings = _Bound()
    except SettingsError as exc:  # an environment value it cannot parse (a list or map not in JSON)
        raise ConfigError(
            f"{_unparsed_env(str(exc))} cannot be read: a list or a table is given as JSON, e.g. "
            'PLUGIND_SANDBOXING__ALLOWED_CAPS=\'["CAP_NET_BIND_SERVICE"]\'',
            path=str(cfg_path),
        ) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        msg = first["msg"]
        if first["type"] == "extra_forbidden":
            msg = "unknown key"
        msg = msg.removeprefix("Value error, ")
        source = _from_env(first["loc"]) if env else None
        if source is not None:  # the value came from the environment, not the file
            raise ConfigError(f"{source}: {key}: {msg}", key=key) from exc
        within = _env_within(first["loc"]) if env else []
        where = f"{cfg_path} and {', '.join(within)}" if within else str(cfg_path)  # a section's check
        raise ConfigError(f"{where}: {key}: {msg}", key=key, path=str(cfg_path)) from exc
    # Return a plain Settings so callers can copy/compare it without the bound subclass.
    return Settings.model_construct(**{name: getattr(settings, name) for name in Settings.model_fields})


__all__ = ["DEFAULT_CONFIG_PATH", "OTHER_ENV", "PLUGIN_DIR_ENV", "PLUGIN_NAME_RE", "Settings",
           "check_env_names", "load_config"]
