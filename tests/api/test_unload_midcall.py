"""A plugin unloaded while a call is on its way to it: once unloaded, no metric series of it comes
back (the call had picked its handlers before the unload; it ends after it)."""

from __future__ import annotations

import asyncio
from typing import Any

from api_helpers import Api
from integration.kit import Workspace, plugin_source

from plugind.monitor.metrics import REGISTRY

# p1 runs first (priority 10): it says it runs, then holds the chain until the test opens the gate.
HOLD = """import time
ctx.set("p1.running", True)
for _ in range(3000):
    if ctx.get("app.gate"):
        break
    time.sleep(0.01)
return data"""


def series_of(plugin: str) -> list[Any]:
    return [s for m in REGISTRY.collect() for s in m.samples if s.labels.get("plugin") == plugin]


def test_no_series_comes_back_for_a_plugin_unloaded_mid_call(ws: Workspace, run_api: Any) -> None:
    ws.add(plugin_source("p1", {"h": (10, HOLD)}))
    ws.add(plugin_source("p2", {"h": (0, "return data")}))

    async def scenario(api: Api) -> None:
        for name in ("p1", "p2"):
            if name not in {p["name"] for p in (await api.client.get("/api/plugins")).json()}:
                assert (await api.post("/api/plugins/load", {"plugin_name": name})).status_code == 200
        api.registry.context.set("app.gate", True)
        assert (await api.post("/api/hooks/h/execute", {"data": 1})).status_code == 200
        assert series_of("p2")  # counted while loaded
        api.registry.context.delete("app.gate")
        api.registry.context.delete("p1.running")
        call = asyncio.create_task(api.post("/api/hooks/h/execute", {"data": 2}))
        for _ in range(3000):  # until p1 holds the chain (the call has picked its handlers)
            if api.registry.context.get("p1.running"):
                break
            await asyncio.sleep(0.01)
        assert (await api.post("/api/plugins/unload", {"plugin_name": "p2"})).status_code == 200
        assert series_of("p2") == []
        api.registry.context.set("app.gate", True)
        reply = (await call).json()
        assert [r["plugin"] for r in reply["results"]][:1] == ["p1"]
        assert series_of("p2") == []  # the call's end for p2 made none again
        assert (await api.post("/api/plugins/load", {"plugin_name": "p2"})).status_code == 200
        assert (await api.post("/api/hooks/h/execute", {"data": 3})).status_code == 200
        assert series_of("p2")  # loaded again: counted again

    run_api(scenario)
