"""Helpers for tests/api: the real app, registry, loader, launcher and supervisors, in-process.

Requests go through httpx's ASGI transport (no socket; the daemon tests in tests/integration cover
the real listener). Each test runs its own event loop with `asyncio.run`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import psutil
from integration.kit import Workspace

from plugind.api.app import create_app
from plugind.audit import AuditLog
from plugind.config import Settings
from plugind.host.context import PluginContext
from plugind.host.launcher import Launcher
from plugind.host.loader import PluginLoader
from plugind.host.registry import PluginRegistry
from plugind.host.supervisor import Supervisor
from plugind.trust import PluginSecurity

TOKEN = "test-token-0123456789abcdef"

# A handler appending the plugin's name to data["seen"].
ECHO = "data.setdefault('seen', []).append({name!r})\nreturn data"


def plugins_alive(pids: list[int]) -> list[int]:
    """The pids of `pids` that are still running (not zombies)."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


@dataclass
class Api:
    ws: Workspace
    settings: Settings
    registry: PluginRegistry
    client: httpx.AsyncClient
    audit: AuditLog

    async def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return await self.client.post(path, json=body, **kw)


@contextlib.asynccontextmanager
async def open_api(
    ws: Workspace,
    *,
    start: bool = True,
    token: str | None = TOKEN,
    configure: Callable[[Settings], None] | None = None,
) -> AsyncIterator[Api]:
    settings = ws.settings()
    if configure is not None:
        configure(settings)
    launcher = Launcher()
    await launcher.start()
    try:
        audit = AuditLog(settings.logging.audit_log)
        registry = PluginRegistry(
            settings,
            loader=PluginLoader(
                settings,
                PluginSecurity.from_settings(settings, ws.trust_key_hex),
                refresh=lambda: PluginSecurity.from_settings(settings, ws.trust_key_hex),
            ),
            supervisor_factory=Supervisor,
            context=PluginContext(),
            launcher=launcher,
            audit=audit,
        )
        app = create_app(registry, settings, token=token, audit_log=audit)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://plugind", headers=headers) as c:
            if start:
                await registry.start()
            try:
                yield Api(ws, settings, registry, c, audit)
            finally:
                await registry.shutdown()
    finally:
        await launcher.close()


Scenario = Callable[[Api], Awaitable[None]]


