"""Resource fairness and redaction against a real daemon: a plugin that floods what the daemon keeps
on its behalf (context keys and bytes, log bytes, calls in flight, replies it does not read) is
refused with a clear error and a `budget` violation, never at the others' expense; and a secret in a
plugin's error message is redacted in the audit trail and the API as it is in the daemon log.

Each test bounds its flood in count (and every wait in time), checks that /health kept answering
and, through the harness, that nothing leaked.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import psutil
from chaos_harness import HealthProbe, wait_for
from kit import plugin_source

MIB = 1024 * 1024


def budget_violations(d: Any, name: str, budget: str) -> list[dict[str, Any]]:
    found = d.plugin(name)["violations"]
    return [v for v in found if v.get("type") == "budget" and v.get("budget") == budget]


def audit_entries(ws: Any) -> list[dict[str, Any]]:
    path = ws.root / "data" / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# A plugin that writes 60 KB values under its own prefix until the host refuses (at most 400 keys,
# 24 MB: the old shared store took all of them).
FLOOD = plugin_source("flood", {"flood": (0, """
from plugind.errors import PluginError
value = "v" * 60_000
for i in range(data["keys"]):
    try:
        ctx.set(f"flood.k{i}", value)
    except PluginError as exc:
        return {"stored": i, "error": type(exc).__name__, "message": exc.message}
return {"stored": data["keys"], "error": None}
""")})
VICTIM = plugin_source("victim", {"victim": (0, "ctx.set('victim.k', data)\nreturn ctx.get('victim.k')")})


def test_a_context_flood_is_refused_for_that_plugin_alone_and_freed_on_unload(
    ws: Any, daemon_factory: Any
) -> None:
    ws.add(FLOOD)
    ws.add(VICTIM)
    d = daemon_factory(ws)
    rss_before = psutil.Process(d.proc.pid).memory_info().rss
    with HealthProbe(d.url) as probe:
        out = d.call("flood", {"keys": 400})["results"][0]["output"]
        # The default budget, 8 MiB a plugin, holds 139 values of 60 KB (each charged key + value + 256).
        assert out["error"] == "BudgetExceeded", out
        assert 100 < out["stored"] < 400
        assert "plugin 'flood' may hold 8388608 bytes of context" in out["message"]
        assert "[plugin.flood.budgets] context_bytes" in out["message"]
        # The others are not starved: another plugin and the integrators still write.
        assert d.call("victim", "mine")["results"][0]["output"] == "mine"
        put = d.api("PUT", "/api/context/app.setting", {"value": "integrator"})
        assert put.status_code == 200, put.text
        # A violation of the flooding plugin, in its detail and the audit trail.
        found = wait_for(lambda: budget_violations(d, "flood", "context_bytes"), 60, "the budget violation")
        assert found[0]["limit"] == 8 * MIB
        wait_for(lambda: any(e["event"] == "violation" and e["plugin"] == "flood" for e in audit_entries(ws)),
                 10, "the violation in the audit log")
        # The daemon holds the budget, not the flood: far less than the 24 MB the plugin offered.
        assert psutil.Process(d.proc.pid).memory_info().rss - rss_before < 20 * MIB
        # Unloading frees what the daemon kept on its behalf; others' keys stay.
        assert d.api("GET", "/api/context/flood.k0").status_code == 200
        assert d.api("POST", "/api/plugins/unload", {"plugin_name": "flood"}).status_code == 200
        assert d.api("GET", "/api/context/flood.k0").status_code == 404
        assert d.api("GET", "/api/context/victim.k").json()["value"] == "mine"
        assert d.api("GET", "/api/context/app.setting").json()["value"] == "integrator"
    probe.check()


def test_integrators_have_a_context_budget_of_their_own(ws: Any, daemon_factory: Any) -> None:
    ws.extra_config = "[budgets]\napi_context_keys = 5\n"
    ws.add(VICTIM)
    d = daemon_factory(ws)
    with HealthProbe(d.url) as probe:
        for i in range(5):
            assert d.api("PUT", f"/api/context/app.k{i}", {"value": i}).status_code == 200
        over = d.api("PUT", "/api/context/app.k5", {"value": 5})
        assert over.status_code == 429, over.text
        assert over.json()["error"] == "budget_exceeded"
        assert "integrators' context writes may hold 5 context keys" in over.json()["message"]
        # Overwriting a key it holds is fine; a plugin's own budget is untouched by theirs.
        assert d.api("PUT", "/api/context/app.k0", {"value": "again"}).status_code == 200
        assert d.call("victim", "still")["results"][0]["output"] == "still"
    probe.check()


SPAM = plugin_source("spam", {
    "spam": (0, """
import logging
for i in range(data):
    logging.getLogger("plugin").warning("SPAM-%d %s", i, "x" * 8000)
return data
"""),
    "tick": (0, "import logging\nlogging.getLogger('plugin').info('tick')\nreturn 1"),
})
QUIET = plugin_source("quiet", {
    "quiet": (0, "import logging\nlogging.getLogger('plugin').info('QUIET-LINE')\nreturn 1"),
})


def test_a_log_flood_is_held_to_the_plugins_byte_budget(ws: Any, daemon_factory: Any) -> None:
    ws.add(SPAM)
    ws.add(QUIET)
    d = daemon_factory(ws)
    with HealthProbe(d.url) as probe:
        # 200 lines of 8 KB at once: within the 200 lines a second that alone let all of them through.
        assert d.call("spam", 200)["results"][0]["output"] == 200
        # The report of what was dropped comes with the plugin's first line of a later second.
        wait_for(lambda: d.call("tick") and budget_violations(d, "spam", "log_bytes"), 60,
                 "the log violation")
        assert d.call("quiet")["results"][0]["output"] == 1
        wait_for(lambda: "QUIET-LINE" in d.log(), 60, "the other plugin's line")
    probe.check()
    text = d.log()
    kept = text.count("SPAM-")
    # 64 KiB a second holds 8 such lines a second; the burst spans a second or two, not a dozen.
    assert 0 < kept < 100, kept
    assert "log lines from plugin spam dropped" in text
    assert "over its log_bytes budget" in text or "logged more than" in text


SLOW = plugin_source("slow", {"slow": (0, """
deadline = time.monotonic() + 30
while not os.path.exists(data) and time.monotonic() < deadline:
    time.sleep(0.01)
return "done"
""")})
ECHO = plugin_source("echo", {"echo": (0, "return data")})


def test_calls_in_flight_are_held_to_the_plugins_budget(ws: Any, daemon_factory: Any) -> None:
    ws.extra_config = "[plugin.slow.budgets]\npending_calls = 4\n"
    ws.add(SLOW)
    ws.add(ECHO)
    d = daemon_factory(ws)
    flag = ws.root / "release"
    answers: list[Any] = []

    def slow_call() -> None:
        for _attempt in range(200):  # refused while a probe below holds a place: try again
            result = d.call("slow", str(flag), timeout_s=60)["results"][0]
            if result["outcome"] == "ok":
                answers.append(result)
                return

    with HealthProbe(d.url) as probe:
        threads = [threading.Thread(target=slow_call) for _ in range(4)]
        for t in threads:
            t.start()

        def refused() -> dict[str, Any] | None:
            # In flight only for its short deadline while the four are not all in yet.
            result: dict[str, Any] = d.call("slow", str(flag), timeout_s=0.2)["results"][0]
            return result if result["outcome"] == "error" else None

        over = wait_for(refused, 60, "a call over the pending_calls budget")
        assert over["error"]["type"] == "BudgetExceeded", over
        assert "already has 4 calls in flight" in over["error"]["message"]
        assert d.call("echo", "other plugins answer")["results"][0]["output"] == "other plugins answer"
        wait_for(lambda: budget_violations(d, "slow", "pending_calls"), 60, "the budget violation")
        flag.write_text("go")
        for t in threads:
            t.join(60)
        assert [a["output"] for a in answers] == ["done"] * 4
    probe.check()


# A plugin that asks for a 60 KB value 3000 times (180 MB of replies) and never reads the answers:
# its one handler blocks, so the runtime does not read its socket, while a thread sends.
HOG = plugin_source("hog", {
    "fill": (0, "ctx.set('hog.big', 'b' * 60_000)\nreturn 1"),
    "hog": (0, """
import threading
def ask():
    for i in range(3000):
        ctx._rt.send({"type": "ctx.get", "id": 1_000_000 + i, "key": "hog.big"})
threading.Thread(target=ask, daemon=True).start()
time.sleep(30)
return 1
"""),
})


def test_replies_a_plugin_does_not_read_are_held_to_its_buffer_budget(ws: Any, daemon_factory: Any) -> None:
    ws.add(HOG)
    ws.add(ECHO)
    d = daemon_factory(ws)
    assert d.call("fill")["results"][0]["output"] == 1
    rss_before = psutil.Process(d.proc.pid).memory_info().rss
    done: list[Any] = []
    with HealthProbe(d.url) as probe:
        caller = threading.Thread(target=lambda: done.append(d.call("hog", None, timeout_s=20)))
        caller.start()
        found = wait_for(lambda: budget_violations(d, "hog", "buffered_bytes"), 20, "the buffer violation")
        assert found[0]["limit"] == 4 * MIB
        assert d.call("echo", 1)["results"][0]["output"] == 1
        # The daemon keeps about the budget's worth, not the 180 MB asked for.
        assert psutil.Process(d.proc.pid).memory_info().rss - rss_before < 64 * MIB
        assert d.api("POST", "/api/plugins/unload", {"plugin_name": "hog"}).status_code == 200
        caller.join(30)
    probe.check()


SECRET = "4f" * 32  # 64 hex digits
LEAKY = plugin_source("leaky", on_load=f"raise RuntimeError('no store: api key {SECRET} refused')")
LEAKY_HOOK = plugin_source("leakyhook", {"leak": (0, f"raise ValueError('token {SECRET} rejected')")})


def test_a_secret_in_a_plugin_error_is_redacted_in_the_audit_log_and_the_api(
    ws: Any, daemon_factory: Any
) -> None:
    ws.auto_load = False
    ws.add(LEAKY)
    ws.add(LEAKY_HOOK)
    d = daemon_factory(ws)
    with HealthProbe(d.url) as probe:
        failed = d.load("leaky")
        assert failed.status_code == 500, failed.text
        assert "[REDACTED]" in failed.json()["message"]
        assert d.load("leakyhook").status_code == 200
        result = d.call("leak", {})["results"][0]
        assert result["outcome"] == "error" and "[REDACTED]" in result["error"]["message"]
        answers = [failed.text, json.dumps(result), d.api("GET", "/api/audit?limit=100").text,
                   d.api("GET", "/api/plugins/leaky").text, d.api("GET", "/ready").text]
        for answer in answers:
            assert SECRET not in answer, answer
    probe.check()
    audit = (ws.root / "data" / "audit.log").read_text()
    assert '"event":"refused"' in audit and "[REDACTED]" in audit
    assert SECRET not in audit
    # The daemon's own lines (the plugin's stderr, inherited when unsandboxed, is not the daemon's).
    own = [line for line in d.log().splitlines() if not line.startswith("plugind runtime [")]
    assert own and not [line for line in own if SECRET in line]
