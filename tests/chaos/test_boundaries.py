"""Issue 9, rows 6 and 7: no value crosses a boundary as a 500.

Each test runs a real daemon with a real hostile plugin: REST data nested too deep or holding a lone
surrogate, a plugin returning a too-deep value, a lone surrogate or 20 MB, a too-deep context value
set through PUT /api/context and through ctx.set. The daemon must answer with a 4xx carrying a clear
message, or with a per-plugin error whose neighbours' results survive; /health keeps answering and
nothing leaks (the daemon_factory fixture's teardown).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from cgroup_host import session_parent
from chaos_harness import TOKEN, HealthProbe
from kit import plugin_source

from plugind.wire.limits import MAX_DEPTH

# The issue's own figures: deeper than every limit plugind sets, shallower than msgpack's (1024).
DEEP = 300


def _deep(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def _raw_post(d: Any, path: str, raw: bytes, method: str = "POST") -> httpx.Response:
    """Send `raw` as a JSON body, unescaped by any client-side encoder (which would refuse it)."""
    with httpx.Client(base_url=d.url, timeout=30.0) as c:
        return c.request(method, path, content=raw, headers={
            "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})


def _add_neighbours(ws: Any, hook: str) -> None:
    """Two well-behaved plugins around the hostile one (priorities 20 and 0; the hostile one is 10)."""
    ws.add(plugin_source("before", {hook: (20, "data = dict(data); data['before'] = 1; return data")}))
    ws.add(plugin_source("after", {hook: (0, "data = dict(data); data['after'] = 1; return data")}))


def _check_chain(reply: dict[str, Any], hostile: str, clue: str) -> None:
    """The hostile plugin failed alone; its neighbours' outputs went on and came back."""
    outcomes = {r["plugin"]: r for r in reply["results"]}
    assert [r["plugin"] for r in reply["results"]] == ["before", hostile, "after"]
    assert outcomes["before"]["outcome"] == "ok", outcomes
    assert outcomes["after"]["outcome"] == "ok", outcomes
    bad = outcomes[hostile]
    assert bad["outcome"] == "error", bad
    assert bad["error"]["type"] == "HookFailed", bad
    assert clue in bad["error"]["message"], bad
    # The hostile output was not passed on: "after" got "before"'s output.
    assert reply["data"] == {"x": 1, "before": 1, "after": 1}
    assert reply["success"] is False


def test_rest_data_nested_too_deep_is_a_422(ws: Any, daemon_factory: Any) -> None:
    ws.add(plugin_source("echo", {"echo": (0, "return data")}))
    d = daemon_factory(ws)
    with HealthProbe(d.url) as probe:
        reply = d.api("POST", "/api/hooks/echo/execute", {"data": _deep(DEEP)})
        assert reply.status_code == 422, reply.text
        body = reply.json()
        assert body["error"] == "invalid_input"
        assert "nested deeper than" in body["message"], body
        # Past json's own recursion limit: refused before parsing, and said why.
        deeper = _raw_post(d, "/api/hooks/echo/execute", b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}")
        assert deeper.status_code == 400, deeper.text
        assert "nested deeper than" in deeper.json()["message"], deeper.text
        # At the limit, a value goes through a plugin and back.
        at_limit = d.call("echo", _deep(MAX_DEPTH))
        assert at_limit["data"] == _deep(MAX_DEPTH)
        assert at_limit["results"][0]["output"] == _deep(MAX_DEPTH)
        assert d.call("echo", {"x": 1})["data"] == {"x": 1}  # the daemon and the plugin go on
    probe.check()
    assert d.plugin("echo")["restarts"] == 0


def test_lone_surrogate_in_rest_data_is_a_422(ws: Any, daemon_factory: Any) -> None:
    ws.add(plugin_source("echo", {"echo": (0, "return data")}))
    d = daemon_factory(ws)
    with HealthProbe(d.url) as probe:
        reply = _raw_post(d, "/api/hooks/echo/execute", b'{"data": {"s": "a\\ud800b"}}')
        assert reply.status_code == 422, reply.text
        body = reply.json()
        assert body["error"] == "invalid_input"
        assert "surrogate" in body["message"], body
        # A valid pair is a character like any other.
        ok = _raw_post(d, "/api/hooks/echo/execute", b'{"data": "\\ud83d\\ude00"}')
        assert ok.status_code == 200, ok.text
        assert ok.json()["data"] == "\U0001f600"
    probe.check()


def test_plugin_returning_a_too_deep_value_fails_alone_in_a_chain(ws: Any, daemon_factory: Any) -> None:
    _add_neighbours(ws, "deep")
    ws.add(plugin_source("hostile", {"deep": (10, f"""
        value = 'leaf'
        for _ in range({DEEP}):
            value = [value]
        return value
    """)}))
    d = daemon_factory(ws)
    pid = d.plugin("hostile")["pid"]
    with HealthProbe(d.url) as probe:
        for policy in ("chain", "all"):
            reply = d.api("POST", "/api/hooks/deep/execute", {"data": {"x": 1}, "policy": policy})
            assert reply.status_code == 200, reply.text
            if policy == "chain":
                _check_chain(reply.json(), "hostile", "nested deeper than")
            else:
                outcomes = {r["plugin"]: r for r in reply.json()["results"]}
                assert outcomes["before"]["output"] == {"x": 1, "before": 1}
                assert outcomes["after"]["output"] == {"x": 1, "after": 1}
                assert outcomes["hostile"]["outcome"] == "error"
    probe.check()
    info = d.plugin("hostile")
    assert (info["state"], info["pid"], info["restarts"]) == ("running", pid, 0)


def test_plugin_returning_a_lone_surrogate_fails_alone_in_a_chain(ws: Any, daemon_factory: Any) -> None:
    _add_neighbours(ws, "surr")
    # One handler returns the surrogate, the other raises with it in its message: neither may cost
    # the others their results.
    ws.add(plugin_source("hostile", {"surr": (10, r"""
        if data.get("raise"):
            raise ValueError("bad \ud800 value")
        return {"s": "a\ud800b"}
    """)}))
    d = daemon_factory(ws)
    pid = d.plugin("hostile")["pid"]
    with HealthProbe(d.url) as probe:
        _check_chain(d.call("surr", {"x": 1}), "hostile", "surrogate")
        reply = d.call("surr", {"x": 1, "raise": True})
        outcomes = {r["plugin"]: r for r in reply["results"]}
        assert outcomes["hostile"]["outcome"] == "error", outcomes
        assert outcomes["after"]["outcome"] == "ok", outcomes
        assert reply["data"] == {"x": 1, "raise": True, "before": 1, "after": 1}
    probe.check()
    info = d.plugin("hostile")
    assert (info["state"], info["pid"], info["restarts"]) == ("running", pid, 0)


def test_plugin_writing_a_lone_surrogate_past_its_sdk_is_cut_off_alone(ws: Any,
                                                                       daemon_factory: Any) -> None:
    # A hostile plugin bypasses its runtime and writes a result whose string is a UTF-8-encoded
    # surrogate (ED A0 80): not valid msgpack, so the frame cannot even be matched to its call. That
    # is a protocol violation (the plugin is killed and restarted), and still the chain goes on.
    _add_neighbours(ws, "surr")
    ws.add(plugin_source("hostile", {"surr": (10, r"""
        import stat
        for fd in range(3, 256):
            try:
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    break
            except OSError:
                pass
        body = b"\x84\xa4type\xa6result\xa2id\x01\xa2ok\xc3\xa4data\xa3\xed\xa0\x80"
        os.write(fd, len(body).to_bytes(4, "big") + body)
        time.sleep(30)
    """)}))
    d = daemon_factory(ws)
    with HealthProbe(d.url) as probe:
        reply = d.call("surr", {"x": 1})
        outcomes = {r["plugin"]: r for r in reply["results"]}
        assert outcomes["hostile"]["outcome"] == "crashed", outcomes
        assert outcomes["hostile"]["error"]["type"] == "ProtocolViolation", outcomes
        assert "not valid msgpack" in outcomes["hostile"]["error"]["message"], outcomes
        assert outcomes["before"]["outcome"] == outcomes["after"]["outcome"] == "ok"
        assert reply["data"] == {"x": 1, "before": 1, "after": 1}
    probe.check()


def test_plugin_sending_a_crafted_error_fails_alone_in_a_chain(ws: Any, daemon_factory: Any) -> None:
    # The error a plugin reports is data it controls: here its context tries to replace the message
    # with a nested list and the plugin name with another plugin's. The reply must stay well-formed.
    _add_neighbours(ws, "err")
    ws.add(plugin_source("hostile", {"err": (10, "raise ValueError('boom')")}, header="""
        from plugind.errors import HookFailed
        _orig = HookFailed.to_wire
        def _crafted(self):
            wire = _orig(self)
            wire["context"] = {"message": [[["not", "a", "string"]]], "plugin": "before",
                               "hook": {"x": 1}, "error_type": 5}
            return wire
        HookFailed.to_wire = _crafted
    """))
    d = daemon_factory(ws)
    with HealthProbe(d.url) as probe:
        reply = d.api("POST", "/api/hooks/err/execute", {"data": {"x": 1}})
        assert reply.status_code == 200, reply.text
        outcomes = {r["plugin"]: r for r in reply.json()["results"]}
        assert list(outcomes) == ["before", "hostile", "after"]
        assert outcomes["hostile"]["outcome"] == "error", outcomes
        assert outcomes["hostile"]["error"]["message"].startswith("hook 'err' of plugin 'hostile' raised"), \
            outcomes
        assert reply.json()["data"] == {"x": 1, "before": 1, "after": 1}
    probe.check()


def test_too_deep_context_value_via_rest_is_a_422(ws: Any, daemon_factory: Any) -> None:
    d = daemon_factory(ws)
    with HealthProbe(d.url) as probe:
        reply = d.api("PUT", "/api/context/deep.value", {"value": _deep(DEEP)})
        assert reply.status_code == 422, reply.text
        assert "nested deeper than" in reply.json()["message"]
        assert d.api("GET", "/api/context/deep.value").status_code == 404  # nothing was stored
        surrogate = _raw_post(d, "/api/context/deep.value", b'{"value": "\\udfff"}', method="PUT")
        assert surrogate.status_code == 422, surrogate.text
        assert "surrogate" in surrogate.json()["message"]
        assert d.api("PUT", "/api/context/deep.value", {"value": [1, [2]]}).status_code == 200
        assert d.api("GET", "/api/context/deep.value").json()["value"] == [1, [2]]
    probe.check()


def test_too_deep_context_value_via_ctx_set_is_refused(ws: Any, daemon_factory: Any) -> None:
    ws.add(plugin_source("setter", {"set": (0, f"""
        value = 'leaf'
        for _ in range({DEEP}):
            value = [value]
        try:
            ctx.set("setter.deep", value)
        except Exception as exc:
            return {{"refused": type(exc).__name__, "message": str(exc)}}
        return {{"refused": None}}
    """)}))
    d = daemon_factory(ws)
    with HealthProbe(d.url) as probe:
        out = d.call("set")["results"][0]["output"]
        assert out["refused"] == "ContextError", out
        assert "nested deeper than" in out["message"], out
        reply = d.api("GET", "/api/context/setter.deep")
        assert reply.status_code == 404, reply.text  # not stored, so no GET can trip over it
    probe.check()
    assert d.plugin("setter")["restarts"] == 0


@pytest.mark.parametrize(
    "sandboxed", [False, pytest.param(True, marks=pytest.mark.root)], ids=["plain", "sandboxed"]
)
def test_oversized_result_is_a_call_error_not_a_crash(ws: Any, daemon_factory: Any,
                                                      sandboxed: bool) -> None:
    # Sandboxed too: the refusal happens in the runtime, under the plugin's seccomp filter and cgroup.
    if sandboxed:
        session_parent()  # skips, saying why, on a host without cgroup controllers
    ws.sandboxing = sandboxed
    ws.add(plugin_source("big", {"big": (0, """
        if data == "small":
            return "fine"
        return b"x" * (20 * 1024 * 1024)
    """)}))
    d = daemon_factory(ws)
    pid = d.plugin("big")["pid"]
    with HealthProbe(d.url) as probe:
        out = d.call("big", "huge")["results"][0]
        assert out["outcome"] == "error", out
        assert out["error"]["type"] == "HookFailed", out
        assert "exceeds the maximum frame size" in out["error"]["message"], out
        assert d.call("big", "small")["results"][0]["output"] == "fine"  # same process, still serving
    probe.check()
    info = d.plugin("big")
    assert (info["state"], info["pid"], info["restarts"]) == ("running", pid, 0)
    assert "violated the protocol" not in d.log()
