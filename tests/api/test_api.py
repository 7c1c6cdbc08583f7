"""The REST API in-process: every endpoint, its status codes and error messages, and auth."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from api_helpers import ECHO, TOKEN, Api, plugins_alive
from integration.kit import Workspace, plugin_source

from plugind.config import Settings

RunApi = Callable[..., None]


def add_echo(ws: Workspace, name: str = "echo", priority: int = 0) -> None:
    ws.add(plugin_source(name, {"on_request": (priority, ECHO.format(name=name))}))


def test_health_ready_metrics_docs_are_open(ws: Workspace, run_api: RunApi) -> None:
    add_echo(ws)

    async def scenario(api: Api) -> None:
        bare = {"Authorization": ""}
        health = await api.client.get("/health", headers=bare)
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "plugins_loaded": 1, "plugins_total": 1, "plugins_failed": 0}
        ready = await api.client.get("/ready", headers=bare)
        assert ready.status_code == 200 and ready.json() == {"ready": True, "status": "ready", "failed": {}}
        text = (await api.client.get("/metrics", headers=bare)).text
        assert 'plugind_build_info{version="0.1.0"} 1.0' in text
        assert 'plugind_plugins{state="running"} 1.0' in text
        assert (await api.client.get("/docs", headers=bare)).status_code == 200
        spec = (await api.client.get("/openapi.json", headers=bare)).json()
        assert "/api/hooks/{hook}/execute" in spec["paths"]

    run_api(scenario)


def test_ready_is_503_until_started(ws: Workspace, run_api: RunApi) -> None:
    async def scenario(api: Api) -> None:
        reply = await api.client.get("/ready")
        assert reply.status_code == 503
        assert reply.json() == {"ready": False, "status": "starting", "failed": {}}
        await api.registry.start()
        assert (await api.client.get("/ready")).status_code == 200
        api.registry.shutting_down = True
        reply = await api.client.get("/ready")
        assert reply.status_code == 503 and reply.json()["status"] == "shutting down"

    run_api(scenario, start=False)


def test_load_list_detail_unload(ws: Workspace, run_api: RunApi) -> None:
    ws.auto_load = False
    add_echo(ws)

    async def scenario(api: Api) -> None:
        listed = (await api.client.get("/api/plugins")).json()
        assert [(p["name"], p["state"], p["trust_level"], p["pid"]) for p in listed] == [
            ("echo", "available", "trusted", None)
        ]
        reply = await api.post("/api/plugins/load", {"plugin_name": "echo"})
        assert reply.status_code == 200, reply.text
        assert reply.json()["success"] is True
        assert re.fullmatch(r"loaded echo 1\.0\.0 \(pid \d+\)", reply.json()["message"])
        detail = (await api.client.get("/api/plugins/echo")).json()
        assert detail["state"] == "running" and detail["hooks"] == {"on_request": 0}
        assert plugins_alive([detail["pid"]]) == [detail["pid"]]
        assert all(v == "off" for v in detail["isolation"].values())  # sandboxing.enabled = false
        assert len(detail["hash"]) == 128
        again = await api.post("/api/plugins/load", {"plugin_name": "echo"})
        assert again.status_code == 409
        assert again.json() == {
            "success": False, "message": "plugin 'echo' is already loaded", "error": "already_loaded"
        }
        out = await api.post("/api/plugins/unload", {"plugin_name": "echo"})
        assert out.status_code == 200 and out.json() == {"success": True, "message": "unloaded echo"}
        assert plugins_alive([detail["pid"]]) == []
        gone = await api.post("/api/plugins/unload", {"plugin_name": "echo"})
        assert gone.status_code == 409
        assert gone.json()["message"] == "plugin 'echo' is not loaded"
        events = [(e["event"], e["plugin"]) for e in (await api.client.get("/api/audit")).json()["entries"]]
        assert (await api.client.get("/api/audit?limit=1000")).status_code == 200
        too_many = await api.client.get("/api/audit?limit=1001")
        assert too_many.status_code == 422 and too_many.json()["error"] == "invalid_input"
        assert ("load", "echo") in events and ("unload", "echo") in events

    run_api(scenario)


REFUSALS = [
    ("unknown", None, 404, "not_found", "unknown plugin 'ghost'"),
    ("unsigned", dict(sign=False, trust=False), 403, "untrusted",
     "is untrusted and security.min_trust_level is 'trusted'"),
    ("unlisted", dict(trust=False), 403, "untrusted", "is signed and security.min_trust_level is 'trusted'"),
    ("tampered", "tamper", 403, "signature_invalid", "tampered-1.0.0.plugin"),
    ("path-dotdot", "../x", 422, "invalid_input", "plugin_name: String should match pattern"),
    ("path-abs", "/etc/passwd", 422, "invalid_input", "plugin_name: String should match pattern"),
    ("upper", "Echo", 422, "invalid_input", "plugin_name: String should match pattern"),
    ("empty", "", 422, "invalid_input", "plugin_name: String should match pattern"),
]


@pytest.mark.parametrize(
    ("case", "how", "status", "label", "message"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_refusals_load_nothing(
    ws: Workspace, run_api: RunApi, case: str, how: Any, status: int, label: str, message: str
) -> None:
    ws.auto_load = False
    name = {"unknown": "ghost"}.get(case, case)
    if isinstance(how, dict):
        add_bundle = ws.add(plugin_source(name, {"h": (0, "return data")}), **how)
        assert add_bundle.exists()
    elif how == "tamper":
        bundle = ws.add(plugin_source(name, {"h": (0, "return data")}))
        data = bytearray(bundle.read_bytes())
        data[45] ^= 0x01
        bundle.write_bytes(bytes(data))
    else:
        name = how if isinstance(how, str) else name

    async def scenario(api: Api) -> None:
        reply = await api.post("/api/plugins/load", {"plugin_name": name})
        assert reply.status_code == status, reply.text
        body = reply.json()
        assert body["success"] is False and body["error"] == label
        assert message in body["message"]
        assert api.registry.plugin_count() == 0
        assert not (ws.root / "data" / "extracted").exists() or not any(
            p.is_dir() for p in (ws.root / "data" / "extracted").iterdir()
        )

    run_api(scenario)


def test_bad_bodies(ws: Workspace, run_api: RunApi) -> None:
    async def scenario(api: Api) -> None:
        for body in ({}, {"plugin_name": 3}, {"plugin_name": "a", "extra": 1}, [1]):
            reply = await api.post("/api/plugins/load", body)
            assert reply.status_code == 422, body
            assert reply.json()["error"] == "invalid_input"
        raw = await api.client.post(
            "/api/plugins/load", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert raw.status_code == 422
        bad_policy = await api.post("/api/hooks/h/execute", {"data": 1, "policy": "some"})
        assert bad_policy.status_code == 422 and "policy" in bad_policy.json()["message"]
        bad_timeout = await api.post("/api/hooks/h/execute", {"timeout_s": -1})
        assert bad_timeout.status_code == 422 and "timeout_s" in bad_timeout.json()["message"]
        bad_hook = await api.post("/api/hooks/a%2Fb/execute", {})
        assert bad_hook.status_code in (404, 422)
        assert (await api.client.get("/api/plugins/..%2Fetc")).status_code in (404, 422)

    run_api(scenario)


def test_body_limit_413(ws: Workspace, run_api: RunApi) -> None:
    ws.extra_config = ""

    async def scenario(api: Api) -> None:
        limit = api.settings.api.max_body_bytes
        big = {"data": "x" * (limit + 10)}
        reply = await api.post("/api/hooks/h/execute", big)
        assert reply.status_code == 413
        assert reply.json()["message"] == "request body larger than api.max_body_bytes (1048576 bytes)"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
            yield b'{"data": "'
            for _ in range(limit // 65536 + 1):
                yield b"y" * 65536
            yield b'"}'

        streamed = await api.client.post(
            "/api/hooks/h/execute", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        assert streamed.json()["error"] == "body_too_large"
        fits = await api.post("/api/hooks/h/execute", {"data": "z" * (limit - 100)})
        assert fits.status_code == 200 and fits.json()["data"] == "z" * (limit - 100)

    run_api(scenario)


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-wrong-token", "Basic " + TOKEN, TOKEN],
                         ids=["missing", "wrong", "wrong-scheme", "no-scheme"])
def test_unauthenticated_changes_nothing(ws: Workspace, run_api: RunApi, header: str | None) -> None:
    ws.auto_load = False
    add_echo(ws)

    async def scenario(api: Api) -> None:
        headers = {"Authorization": header} if header else {"Authorization": ""}
        for method, path, body in [
            ("POST", "/api/plugins/load", {"plugin_name": "echo"}),
            ("POST", "/api/plugins/unload", {"plugin_name": "echo"}),
            ("POST", "/api/plugins/rescan", None),
            ("POST", "/api/hooks/on_request/execute", {"data": {}}),
            ("GET", "/api/plugins", None),
            ("GET", "/api/audit", None),
            ("PUT", "/api/context/x.y", {"value": 1}),
        ]:
            reply = await api.client.request(method, path, json=body, headers=headers)
            assert reply.status_code == 401, (method, path)
            assert reply.json() == {
                "success": False, "message": "missing or wrong bearer token", "error": "unauthorized"
            }
            assert reply.headers["www-authenticate"] == "Bearer"
        assert api.registry.plugin_count() == 0
        assert "x.y" not in api.registry.context

    run_api(scenario)


def test_hooks_policies_over_http(ws: Workspace, run_api: RunApi) -> None:
    add_echo(ws, "first", priority=20)
    add_echo(ws, "second", priority=10)
    ws.add(plugin_source("failing", {"on_request": (15, "raise ValueError('no thanks')")}))

    async def scenario(api: Api) -> None:
        chain = (await api.post("/api/hooks/on_request/execute", {"data": {"seen": []}})).json()
        assert chain["policy"] == "chain" and chain["success"] is False
        assert chain["data"] == {"seen": ["first", "second"]}
        assert [(r["plugin"], r["outcome"]) for r in chain["results"]] == [
            ("first", "ok"), ("failing", "error"), ("second", "ok")
        ]
        assert chain["error"]["type"] == "HookFailed"
        assert "ValueError: no thanks" in chain["error"]["message"]
        until = (await api.post(
            "/api/hooks/on_request/execute", {"data": {"seen": []}, "policy": "until_error"}
        )).json()
        assert [r["outcome"] for r in until["results"]] == ["ok", "error", "skipped"]
        assert until["data"] == {"seen": ["first"]}
        every = (await api.post(
            "/api/hooks/on_request/execute", {"data": {"seen": []}, "policy": "all", "timeout_s": 5}
        )).json()
        assert every["data"] is None
        outputs = {r["plugin"]: r["output"] for r in every["results"]}
        assert outputs == {"first": {"seen": ["first"]}, "failing": None, "second": {"seen": ["second"]}}
        nobody = (await api.post("/api/hooks/nobody/execute", {"data": 7})).json()
        assert nobody == {**nobody, "success": True, "data": 7, "results": []}

    run_api(scenario)


def test_context_endpoints(ws: Workspace, run_api: RunApi) -> None:
    async def scenario(api: Api) -> None:
        assert (await api.client.get("/api/context/ops.mode")).status_code == 404
        put = await api.client.put("/api/context/ops.mode", json={"value": {"level": 2}})
        assert put.status_code == 200 and put.json() == {"key": "ops.mode", "value": {"level": 2}}
        got = await api.client.get("/api/context/ops.mode")
        assert got.json() == {"key": "ops.mode", "value": {"level": 2}}
        host = await api.client.get("/api/context/host.version")
        assert host.json() == {"key": "host.version", "value": "0.1.0"}
        denied = await api.client.put("/api/context/host.version", json={"value": "9"})
        assert denied.status_code == 403
        assert denied.json()["message"] == "'host.version' is a predefined host key and is read-only"
        deleted = await api.client.delete("/api/context/ops.mode")
        assert deleted.json() == {"key": "ops.mode", "value": {"level": 2}}
        assert (await api.client.delete("/api/context/ops.mode")).status_code == 404

    run_api(scenario)


def test_rescan_finds_new_bundle(ws: Workspace, run_api: RunApi) -> None:
    ws.auto_load = False

    async def scenario(api: Api) -> None:
        assert (await api.client.get("/api/plugins")).json() == []
        add_echo(ws, "late")
        reply = (await api.post("/api/plugins/rescan")).json()
        assert reply == {"success": True, "added": ["late"], "removed": [], "available": ["late"]}
        assert (await api.post("/api/plugins/load", {"plugin_name": "late"})).status_code == 200

    run_api(scenario)


def test_failed_init_is_500_and_nothing_stays(ws: Workspace, run_api: RunApi) -> None:
    ws.auto_load = False
    ws.add(plugin_source("broken", {"h": (0, "return data")}, on_load="raise RuntimeError('no db')"))

    async def scenario(api: Api) -> None:
        reply = await api.post("/api/plugins/load", {"plugin_name": "broken"})
        assert reply.status_code == 500, reply.text
        assert reply.json()["error"] == "on_load_failed"
        assert "no db" in reply.json()["message"]
        assert api.registry.plugin_count() == 0
        assert api.registry.state_of("broken") == "available"

    run_api(scenario)


def test_binary_and_non_finite_outputs_are_json(ws: Workspace, run_api: RunApi) -> None:
    body = "ctx.set('binary.raw', b'\\xff')\nreturn {'raw': b'\\xff\\x00', 1: float('nan'), 'inf': -1e999}"
    ws.add(plugin_source("binary", {"on_blob": (0, body)}))

    async def scenario(api: Api) -> None:
        reply = await api.post("/api/hooks/on_blob/execute", {"data": None})
        assert reply.status_code == 200, reply.text
        assert reply.json()["data"] == {"raw": {"$bytes": "/wA="}, "1": "NaN", "inf": "-Infinity"}
        stored = await api.client.get("/api/context/binary.raw")
        assert stored.json() == {"key": "binary.raw", "value": {"$bytes": "/w=="}}

    run_api(scenario)


def test_metrics_can_require_the_token(ws: Workspace, run_api: RunApi) -> None:
    def closed(settings: Settings) -> None:
        settings.api.open_metrics = False

    async def scenario(api: Api) -> None:
        assert (await api.client.get("/metrics", headers={"Authorization": ""})).status_code == 401
        assert (await api.client.get("/metrics")).status_code == 200
        assert (await api.client.get("/health", headers={"Authorization": ""})).status_code == 200

    run_api(scenario, configure=closed)


def test_a_wanted_plugin_without_a_bundle_is_listed_as_failed_and_can_be_forgotten(
    ws: Workspace, run_api: RunApi
) -> None:
    add_echo(ws)
    (ws.root / "data" / "loaded.json").write_text('{"version": 1, "loaded": ["echo", "ghost"]}')

    async def scenario(api: Api) -> None:
        listed = {p["name"]: p for p in (await api.client.get("/api/plugins")).json()}
        assert listed["echo"]["state"] == "running"
        ghost = listed["ghost"]
        assert (ghost["version"], ghost["trust_level"], ghost["state"]) == ("", "unknown", "load_failed")
        assert ghost["error"].startswith("unknown plugin 'ghost': no bundle for it in ")
        assert (await api.client.get("/api/plugins/ghost")).json()["state"] == "load_failed"
        assert (await api.client.get("/health")).json()["plugins_failed"] == 1
        ready = (await api.client.get("/ready")).json()
        assert (ready["status"], list(ready["failed"])) == ("degraded", ["ghost"])
        reply = await api.client.post("/api/plugins/unload", json={"plugin_name": "ghost"})
        assert reply.status_code == 200
        assert reply.json()["message"] == (
            "ghost was not running (its load had failed); it is no longer loaded at start"
        )
        assert (await api.client.get("/api/plugins/ghost")).status_code == 404
        again = await api.client.post("/api/plugins/unload", json={"plugin_name": "ghost"})
        assert again.status_code == 409

    run_api(scenario)
    assert json.loads((ws.root / "data" / "loaded.json").read_text())["loaded"] == ["echo"]
