"""What a plugin says when its start fails is its message only: it decides neither the reason of
the refusal (which answers the load's status and labels a metric) nor anything the host would
choke on (a value nested a thousand deep), at start-up or through the API."""

from __future__ import annotations

from typing import Any

from api_helpers import Api
from integration.kit import Workspace, plugin_source

from plugind.monitor.metrics import REGISTRY

# A plugin whose start sends the host a `fatal` frame of its own making, then exits.
FATAL = """
import os, socket, stat, struct, msgpack
def _sock():
    for fd in range(3, 256):
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                return socket.socket(fileno=os.dup(fd))
        except OSError:
            pass
reason = {reason}
body = msgpack.packb({{"type": "fatal", "error": {{"type": "InitializationError", "message": "nope",
                                                 "context": {{"reason": reason}}}}}}, use_bin_type=True)
_sock().sendall(struct.pack(">I", len(body)) + body)
os._exit(3)
"""
DEEP = "[]\nfor _ in range(999):\n    reason = [reason]"


def failures(reason: str) -> float:
    return REGISTRY.get_sample_value("plugind_plugin_load_failures_total", {"reason": reason}) or 0.0


def test_a_plugin_names_no_reason_and_nests_nothing_into_the_host(ws: Workspace, run_api: Any) -> None:
    ws.add(plugin_source("good", {"echo": (0, "return data")}))
    ws.add(plugin_source("deep", {"x": (0, "return 1")}, header=FATAL.format(reason=DEEP)))
    ws.add(plugin_source("liar", {"x": (0, "return 1")}, header=FATAL.format(reason='"shutting_down"')))
    ws.add(plugin_source("honest", {"x": (0, "return 1")}, header=FATAL.format(reason='"import_failed"')))
    ws.add(plugin_source("listed", {"x": (0, "return 1")}, header=FATAL.format(reason='["import_failed"]')))

    async def scenario(api: Api) -> None:
        # Start-up (run_api's) loaded what it could: the others are refused, each for itself.
        names = {p["name"]: p for p in (await api.client.get("/api/plugins")).json()}
        assert names["good"]["state"] == "running"
        before = {r: failures(r) for r in ("init_failed", "shutting_down", "import_failed")}
        for name, reason in (("deep", "init_failed"), ("liar", "init_failed"), ("honest", "import_failed"),
                             ("listed", "init_failed")):
            reply = await api.post("/api/plugins/load", {"plugin_name": name})
            assert reply.status_code == 500, (name, reply.text)  # as any failed start; never 503
            assert reply.json()["error"] == reason, name
            assert "failed to start: nope" in reply.json()["message"], name
            entries = api.audit.tail(limit=1000, event="refused", plugin=name)
            assert entries and entries[-1]["reason"] == reason, (name, entries[-1:])
        after = {r: failures(r) for r in before}
        assert after["shutting_down"] == before["shutting_down"]
        assert after["init_failed"] == before["init_failed"] + 3
        assert after["import_failed"] == before["import_failed"] + 1

    run_api(scenario)
