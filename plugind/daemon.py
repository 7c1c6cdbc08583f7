"""`plugind serve`: the start-up order, the HTTP listeners, signals and a clean shutdown.

Order: fork-server first (before any thread exists), then logging, stale cgroups, trust, the
registry and the API. uvicorn serves TCP `api.listen` and, if configured, a Unix socket; the
lifespan scans and loads plugins in the background so `/health` answers at once and `/ready` turns
200 when start-up is done. SIGTERM/SIGINT: `/ready` goes 503, `on_shutdown` fires, every plugin
stops, the fork-server exits with its children, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import socket
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from plugind import fsio, sdnotify
from plugind.api import edge
from plugind.api.app import create_app
from plugind.api.auth import is_loopback, load_token
from plugind.api.probe import start_probe_listener
from plugind.api.routes.system import health_reply, ready_reply
from plugind.audit import AuditLog
from plugind.config import Settings
from plugind.errors import ConfigError, PluginError
from plugind.host.budgets import api_context_budget
from plugind.host.context import PluginContext
from plugind.host.launcher import Launcher
from plugind.host.launchers import LauncherPool, new_launcher
from plugind.host.loader import PluginLoader, remove_leftovers
from plugind.host.registry import PluginRegistry
from plugind.host.supervisor import Supervisor
from plugind.logs import setup_logging
from plugind.monitor.resource import ResourceMonitor
from plugind.trust.freshness import TrustListGuard
from plugind.trust.security import SecuritySource, check_trust_key

log = logging.getLogger("plugind.daemon")


def check_exposure(settings: Settings, token: str | None) -> None:
    """Raise ConfigError when there is no API token: /api/* is never served without one (a
    loopback address is no authentication: every local user and every local process can reach it)."""
    if token is not None:
        return
    if not is_loopback(settings.api.listen):
        raise ConfigError(
            f"api.listen = {settings.api.listen} is not a loopback address and no API token is set: "
            "set PLUGIND_API_TOKEN or api.token_file, or listen on 127.0.0.1",
            key="api.listen",
        )
    where = f" ({settings.api.token_file} does not exist)" if settings.api.token_file else ""
    raise ConfigError(
        f"no API token is set{where}: set PLUGIND_API_TOKEN or write a token of 16+ characters to "
        "api.token_file with mode 0600 (e.g. `openssl rand -hex 32`)",
        key="api.token_file",
    )


def lock_instance(settings: Settings) -> int:
    """Hold the lock next to `plugins.state_file` (`<state_file>.lock`) for the daemon's life; its fd.
    A second daemon on the same state (the same data directory, most often) would restore the same
    plugins and overwrite the other's record of them. Raises ConfigError naming the holder."""
    path = Path(settings.plugins.state_file)
    lock = path.with_name(path.name + ".lock")
    try:
        return fsio.hold_lock(lock)
    except fsio.LockHeld as exc:
        holder = f" (pid {exc.holder})" if exc.holder else ""
        raise ConfigError(
            f"another plugind is running on state file {path}{holder}: it holds {lock}. Stop it "
            "first, or give this daemon its own plugins.state_file (and sandboxing.cgroups.parent)",
            key="plugins.state_file",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot lock {lock}: {exc.strerror or exc}", key="plugins.state_file") from None


def bind_tcp(listen: str) -> socket.socket:
    """A listening TCP socket for HOST:PORT. Raises ConfigError when it cannot be bound."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"api.listen = {listen}: {exc}", key="api.listen") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror}", key="api.listen") from exc
    sock.set_inheritable(False)
    return sock


def bind_unix(path: Path) -> socket.socket:
    """A listening Unix socket at `path` (mode 0660); a stale socket file is replaced.

    Raises ConfigError when `path` exists and is not a socket, another process listens on it, or it
    cannot be bound.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"api.unix_socket {path} exists and is not a socket", key="api.unix_socket")
        if _listening(path):
            raise ConfigError(
                f"api.unix_socket {path}: another process is listening on it", key="api.unix_socket"
            )
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o117)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {path}: {exc.strerror}", key="api.unix_socket") from exc
    return sock


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


class _Server(uvicorn.Server):
    """uvicorn's server, but a signal first turns readiness off and the process exits 0 after it."""

    def __init__(self, config: uvicorn.Config, daemon: Daemon) -> None:
        super().__init__(config)
        self._daemon = daemon

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._daemon.stopping(sig)
        super().handle_exit(sig, frame)
        # uvicorn re-raises a captured signal after shutdown (death by SIGTERM); a graceful stop of
        # a daemon is a success, so forget it.
        self._captured_signals.clear()


class Daemon:
    """One running plugind: owns the launcher, registry, monitor and the HTTP server."""

    def __init__(self, settings: Settings, *, token: str | None = None) -> None:
        self.settings = settings
        self.token = token
        self.launcher: Launcher | LauncherPool | None = None
        self.registry: PluginRegistry | None = None
        self.monitor: ResourceMonitor | None = None
        self._startup: asyncio.Task[None] | None = None
        self._signalled = False
        self._server: _Server | None = None
        self._status = ""  # the last STATUS= sent to systemd
        self._heap: HeapSettler | None = None
        self.exit_code = 0
        self._locks: list[int] = []  # fds of the locks held while it runs (lock_instance, lock_parent)

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT. Returns the exit status. Raises PluginError on a start-up error."""
        settings = self.settings
        check_exposure(settings, self.token)
        check_trust_key(settings)  # fail closed: no trust key, no start (unless the policy needs none)
        self._locks.append(lock_instance(settings))  # before anything reads or writes the state
        # The fork-server must exist before this process starts any thread.
        self.launcher = new_launcher(settings.supervisor.fork_servers)
        await self.launcher.start()
        # After the fork-servers started: they, and so the plugins, keep the limit they were given.
        raise_fd_limit()
        try:
            return await self._serve()
        finally:
            await self.launcher.close()
            for fd in self._locks:  # released only once every plugin and fork-server is gone
                os.close(fd)
            self._locks.clear()

    async def _serve(self) -> int:
        settings = self.settings
        assert self.launcher is not None
        redactor = setup_logging(settings)
        redactor.add(self.token)
        check_capabilities(settings)
        if settings.sandboxing.enabled:
            from plugind.sandbox.cgroups import cleanup_stale, effective_parent, lock_parent

            # On cgroup v2 the daemon and fork-server move into <own cgroup>/daemon and plugin groups
            # go under <own cgroup>/<parent>; every plan built from now on uses that parent.
            cg = settings.sandboxing.cgroups
            ours = [os.getpid(), *(p.pid for p in _servers(self.launcher))]
            cg.parent = await asyncio.to_thread(effective_parent, cg.backend, cg.parent, ours)
            # Ours alone from now on, or no start: another daemon's groups are not stale ones.
            if (held := await asyncio.to_thread(lock_parent, cg.parent)) is not None:
                self._locks.append(held)
            removed = await asyncio.to_thread(cleanup_stale, cg.parent)
            if removed:
                log.info("removed %d stale plugin cgroups", len(removed))
        if removed_files := await asyncio.to_thread(remove_leftovers, settings):
            log.info("removed %d leftovers of an interrupted write: %s", len(removed_files),
                     ", ".join(p.name for p in removed_files[:8]))
        guard = TrustListGuard.from_settings(settings)  # highest trust-list generation, in memory too
        # Read again before each load and scan, when the trust-list file changed (SecuritySource).
        source = SecuritySource(settings, guard=guard)
        security = await asyncio.to_thread(source)
        audit = AuditLog(settings.logging.audit_log)
        registry = PluginRegistry(
            settings,
            loader=PluginLoader(settings, security, refresh=source),
            supervisor_factory=Supervisor,
            context=PluginContext(api_budget=api_context_budget(settings)),
            launcher=self.launcher,
            audit=audit,
        )
        self.registry = registry
        self.monitor = registry.monitor  # started and stopped by the registry
        app = create_app(
            registry,
            settings,
            token=self.token,
            monitor=self.monitor,
            audit_log=audit,
            lifespan=self._lifespan,
        )
        unix = Path(settings.api.unix_socket) if settings.api.unix_socket else None
        sockets: list[socket.socket] = []
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
            server_header=False,
            **edge.uvicorn_options(settings),  # connection caps, head/body timeouts, keep-alive
        )
        server = _Server(config, self)
        self._server = server
        bound_unix = False
        probes: asyncio.Server | None = None
        try:
            if settings.api.probe_listen:
                probes = await _probe_listener(settings, registry)
            sockets.append(bind_tcp(settings.api.listen))
            if unix is not None:
                sockets.append(bind_unix(unix))
                bound_unix = True
            log.info("plugind listening on %s%s", settings.api.listen, f" and {unix}" if unix else "")
            await server.serve(sockets=sockets)
        finally:
            if probes is not None:
                probes.close()
            for sock in sockets:
                sock.close()
            if bound_unix and unix is not None:  # never remove a file we did not create
                with contextlib.suppress(FileNotFoundError):
                    unix.unlink()
        if not server.started:
            raise PluginError("the API server did not start (see the log above)")
        return self.exit_code

    def stopping(self, sig: int) -> None:
        """First thing on SIGTERM/SIGINT: not ready any more, tell systemd."""
        if self.registry is not None:
            self.registry.ready = False
            self.registry.shutting_down = True
        if not self._signalled:
            self._signalled = True
            log.info("signal %d: shutting down", sig)
            sdnotify.notify("STOPPING=1\nSTATUS=stopping: unloading plugins")

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        assert self.registry is not None and self.monitor is not None
        # Before the listeners open: `systemctl status` says what a slow start is doing.
        sdnotify.notify("STATUS=starting: scanning and loading plugins")
        self._startup = asyncio.get_running_loop().create_task(self._start_plugins())
        # WATCHDOG=1 from the event loop itself when systemd asks (WatchdogSec): a stalled loop
        # stops the pings and gets the daemon restarted.
        watchdog = sdnotify.start_watchdog()
        forkservers = self._watch_forkservers()
        try:
            yield
        finally:
            self.stopping(0)
            if watchdog is not None:
                watchdog.cancel()
            for fd in forkservers:
                with contextlib.suppress(ValueError, OSError):  # one that died is no longer watched
                    asyncio.get_running_loop().remove_reader(fd)
                os.close(fd)
            if not self._startup.done():
                self._startup.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._startup
            await self.registry.shutdown()  # stops the monitor first
            log.info("all plugins stopped")

    def _watch_forkservers(self) -> list[int]:
        # A pidfd turns readable when a fork-server exits: no thread, no polling.
        fds = []
        for proc in _servers(self.launcher):
            try:
                fd = os.pidfd_open(proc.pid)
            except OSError as exc:
                log.warning("cannot watch the fork-server (pidfd_open: %s)", exc.strerror)
                continue
            asyncio.get_running_loop().add_reader(fd, self._forkserver_died, fd)
            fds.append(fd)
        return fds

    def _forkserver_died(self, fd: int) -> None:
        asyncio.get_running_loop().remove_reader(fd)
        if self._signalled:
            return
        # Without it no plugin can run or restart: exit non-zero so the service manager restarts
        # the whole daemon rather than serving an empty shell.
        log.critical("the fork-server died; shutting down with status 1 so plugind gets restarted")
        self.exit_code = 1
        if self._server is not None:
            self.stopping(0)
            self._server.should_exit = True

    async def _start_plugins(self) -> None:
        assert self.registry is not None
        try:
            await self.registry.start()
        except Exception as exc:
            # Not a half-started daemon (alive, never ready, READY=1 never sent, a clean exit on
            # the unit's SIGTERM): one line saying why, and the exit status says it failed.
            known = isinstance(exc, (PluginError, OSError))
            log.critical("start-up failed: %s; shutting down with status 1", exc, exc_info=not known)
            self.exit_code = 1
            sdnotify.notify(f"STATUS=start-up failed: {exc}"[:300])
            if self._server is not None:
                self.stopping(0)
                self._server.should_exit = True
            return
        # Each failed plugin got its own error line; this is the one line that sums them up, and
        # `systemctl status` shows it (STATUS=) until the set changes.
        summary = self.registry.load_summary()
        if self.registry.failed_plugins():
            log.error("ready, degraded: %s", summary)
        else:
            log.info("ready: %s", summary)
        self._status = _status_line(summary)
        # The restored plugins' objects out of the collector's reach, before READY=1.
        self._heap = HeapSettler(self.registry.plugin_count)
        self._heap.settle_if_grown()
        sdnotify.notify(f"READY=1\nSTATUS={self._status}")
        self.registry.change_listeners.append(self._update_status)
        self.registry.change_listeners.append(self._heap.changed)

    def _update_status(self) -> None:
        """STATUS= again whenever the summary changes (a load, an unload, a plugin that gave up)."""
        if self.registry is None or self.registry.shutting_down:
            return
        status = _status_line(self.registry.load_summary())
        if status != self._status:
            self._status = status
            sdnotify.notify(f"STATUS={status}")


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (never the hard limit itself), and
    return the soft limit now in force.

    The daemon holds an fd per plugin (its channel) beside the API's connections and the log and
    audit files: 1,000 plugins need more than the usual soft limit of 1,024, and running out fails
    loads, accepts and log writes alike. Only this process: the fork-servers (started before) and
    the plugins they fork keep the limit they were given.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if target == resource.RLIM_INFINITY or target > _nr_open():
        target = _nr_open()
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
            return soft
        log.debug("open-files limit raised from %d to %d", soft, target)
        return target
    return soft


def _nr_open() -> int:
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return 1 << 20


def _servers(launcher: Launcher | LauncherPool | None) -> list[Any]:
    """The fork-server processes of `launcher` (one, or each of a pool's)."""
    if isinstance(launcher, LauncherPool):
        return launcher.procs
    return [launcher.proc] if launcher is not None and launcher.proc is not None else []


async def _probe_listener(settings: Settings, registry: PluginRegistry) -> asyncio.Server:
    """The `api.probe_listen` listener: /health and /ready only (plugind/api/probe.py)."""
    assert settings.api.probe_listen is not None
    try:
        sock = bind_tcp(settings.api.probe_listen)
    except ConfigError as exc:
        message = exc.message.replace("api.listen", "api.probe_listen")
        raise ConfigError(message, key="api.probe_listen") from exc

    def ready() -> tuple[int, dict[str, Any]]:
        code, body = ready_reply(registry, settings.api.ready_requires)
        # The reasons (failed plugins, the state file's problem) are on the API's /ready only.
        return code, body.model_dump(exclude={"failed", "state"}, exclude_none=True)

    server = await start_probe_listener(sock, lambda: (200, health_reply(registry).model_dump()), ready)
    log.info("probe listener (/health, /ready) on %s", settings.api.probe_listen)
    return server


def _status_line(text: str, limit: int = 1000) -> str:
    # STATUS= is one line; a long list of failures is cut rather than flooding `systemctl status`.
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def check_capabilities(settings: Settings) -> list[str]:
    """What this daemon cannot do for lack of a capability (or of /dev/kmsg), one line each, and
    logged: an error when plugin loads will fail, a warning when a feature is missing.

    The capabilities come from `plugind.sandbox.steps.CAPABILITIES` for a plan built from
    `settings` as any plugin's would be. Nothing when sandboxing is off.
    """
    if not settings.sandboxing.enabled:
        return []
    from plugind.sandbox import steps
    from plugind.sandbox.plan import build_plan
    from plugind.sandbox.seccomp_audit import ring_buffer_problem

    try:
        # Targets' addresses do not change what is needed: do not resolve names here.
        plan = build_plan(settings, "capability-check", "/", resolve=lambda _host: ["192.0.2.1"])
    except PluginError as exc:
        log.debug("no capability check: %s", exc)
        return []
    problems: list[str] = []
    lacking: dict[str, list[tuple[str, steps.Need]]] = {}
    for step, need in steps.missing(plan):
        lacking.setdefault(need.capability, []).append((step, need))
    for cap, needs in sorted(lacking.items()):
        where = "; ".join(f"{step}: {need.call}" for step, need in needs)
        step_names = [s for s, _n in needs if s in steps.STEPS]
        if step_names:
            effect = f"every sandboxed plugin load will fail at step {step_names[0]!r}"
        elif needs[0][0] == "monitor":
            effect = "the monitor cannot count plugins' sockets (max_connections goes unenforced)"
        else:
            effect = "a plugin killed by its seccomp filter is reported without the system call's name"
        line = f"plugind lacks {cap} ({where}): {effect}; {steps.how_to_grant()}"
        problems.append(line)
        (log.warning if all(n.best_effort for _s, n in needs) else log.error)("%s", line)
    if "CAP_SYSLOG" not in lacking:
        why = ring_buffer_problem()
        if why is not None:
            line = (
                f"cannot read the kernel log ({why}): a plugin killed by its seccomp filter is reported "
                "without the system call's name (under systemd: DeviceAllow=/dev/kmsg r, no "
                "ProtectKernelLogs=)"
            )
            problems.append(line)
            log.warning("%s", line)
    return problems


def serve(settings: Settings) -> int:
    """Run the daemon in this process until it is told to stop. Returns the exit status.

    Raises ConfigError (bad token file, exposed without a token, cannot listen), PluginError.
    """
    token = load_token(settings)
    settle_heap()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(Daemon(settings, token=token).run())


def settle_heap() -> int:
    """Collect once, then move every object alive now (the imported modules: about 70,000 objects)
    out of the collector's reach; returns how many. A full collection of them takes about 15 ms,
    which an event loop serving hook calls would otherwise pay again at every oldest-generation
    collection. Objects created later (plugins, requests) are collected as usual."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class HeapSettler:
    """`settle_heap` again after a bulk of loads or unloads (a start's restore, a deployment through
    the API): once `quiet_s` passed without a change, if the number of plugins moved by at least
    max(`min_change`, a quarter of what it was at the last settle).

    Why: each plugin keeps ~110 objects the collector tracks (more in the daemon); at 1,000 plugins
    one full collection walks all of them, 40-90 ms on a loaded 2-CPU machine, a stall of the
    event loop (a /health or hook call caught in it waits that long). Frozen, they are never
    walked again; a full collection then sees only what came since (0.0 ms right after).
    What it costs: one collection when it settles (during a quiet moment, not at every change), and
    objects frozen that later become garbage in a reference cycle (a plugin unloaded after it was
    frozen) are not reclaimed: bounded by what was frozen, each object at most once; refcounted
    garbage (most of it) is freed as usual."""

    def __init__(self, count: Callable[[], int], *, quiet_s: float = 2.0, min_change: int = 64) -> None:
        self._count = count
        self.quiet_s = quiet_s
        self.min_change = min_change
        self.settled_at = 0  # plugins at the last settle
        self.settles = 0
        self._timer: asyncio.TimerHandle | None = None

    def changed(self) -> None:
        """A change listener: (re)arm the quiet-time check."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # told after the loop ended (a last STATUS= at exit): nothing to do
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(self.quiet_s, self.settle_if_grown)

    def settle_if_grown(self) -> bool:
        """Settle now if the plugins moved enough since the last time; True if it did."""
        self._timer = None
        now = self._count()
        if abs(now - self.settled_at) < max(self.min_change, self.settled_at // 4):
            return False
        settle_heap()
        self.settled_at = now
        self.settles += 1
        return True


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (a pinned dependency: the hook round trip through the
    supervisor costs about a fifth less on it, see bench/hooks.py --loop), else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


__all__ = [
    "Daemon",
    "HeapSettler",
    "bind_tcp",
    "bind_unix",
    "check_capabilities",
    "check_exposure",
    "event_loop_factory",
    "serve",
    "settle_heap",
]
