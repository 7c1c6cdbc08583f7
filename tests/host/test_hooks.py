"""HookRegistry: order, the three policies, deadlines and the result object.

The targets here are small in-process stand-ins for supervisors: what is under test is the
registry's ordering and policy logic; the real supervisor path is covered in tests/integration.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from plugind.config import Settings
from plugind.errors import HookFailed, HookTimeout, PluginCrashed
from plugind.host.hooks import HookRegistry
from plugind.monitor import metrics


class Target:
    """Appends its name to data["seen"], or fails the way it is told to; with `meet`, first waits
    there for the other targets sharing it (so it answers only if they all run at once)."""

    def __init__(self, name: str, *, fail: str | None = None, meet: asyncio.Barrier | None = None) -> None:
        self.name = name
        self.fail = fail
        self.meet = meet
        self.timeouts: list[float] = []

    async def invoke(self, hook: str, data: Any, timeout_s: float) -> Any:
        self.timeouts.append(timeout_s)
        if self.fail == "hang":
            await asyncio.sleep(timeout_s)
            raise HookTimeout(f"{self.name} timed out", plugin=self.name, hook=hook, timeout_s=timeout_s)
        if self.meet is not None:
            await self.meet.wait()
        if self.fail == "raise":
            raise HookFailed(f"{self.name} refused", plugin=self.name, hook=hook, error_type="ValueError")
        if self.fail == "crash":
            raise PluginCrashed(f"{self.name} exited", plugin=self.name, exit_code=3)
        if self.fail == "bug":
            raise RuntimeError("stand-in bug")
        return {**data, "seen": [*data.get("seen", []), self.name]}


def registry() -> HookRegistry:
    return HookRegistry(Settings())


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_replace_swaps_the_target_in_place() -> None:
    # An upgrade: the plugin keeps its place among equal priorities; only later calls see the swap.
    reg = registry()
    reg.register("a", {"on_request": 5}, Target("a-1.0"))
    reg.register("b", {"on_request": 5}, Target("b"))
    assert run(reg.execute("on_request", {})).data == {"seen": ["a-1.0", "b"]}  # run order now cached
    reg.replace("a", {"on_request": 5, "on_new": 1}, Target("a-2.0"))
    assert reg.handlers("on_request") == [("a", 5), ("b", 5)]
    assert reg.hooks() == {"on_new": ["a"], "on_request": ["a", "b"]}
    assert run(reg.execute("on_request", {})).data == {"seen": ["a-2.0", "b"]}
    reg.replace("c", {"on_request": 5}, Target("c"))  # not registered yet: it goes last
    assert reg.handlers("on_request") == [("a", 5), ("b", 5), ("c", 5)]


def test_priority_then_load_order() -> None:
    reg = registry()
    reg.register("low", {"on_request": 1}, Target("low"))
    reg.register("first", {"on_request": 50}, Target("first"))
    reg.register("second", {"on_request": 50}, Target("second"))
    reg.register("other", {"on_other": 99}, Target("other"))
    assert reg.handlers("on_request") == [("first", 50), ("second", 50), ("low", 1)]
    result = run(reg.execute("on_request", {}))
    assert result.ok and result.error is None
    assert result.data == {"seen": ["first", "second", "low"]}
    assert [r.plugin for r in result.results] == ["first", "second", "low"]
    assert reg.hooks() == {"on_other": ["other"], "on_request": ["first", "second", "low"]}


def test_unregister_and_reregister_moves_to_end_of_load_order() -> None:
    reg = registry()
    reg.register("a", {"h": 0}, Target("a"))
    reg.register("b", {"h": 0}, Target("b"))
    reg.unregister("a")
    reg.unregister("missing")  # no error
    reg.register("a", {"h": 0}, Target("a"))
    assert [p for p, _ in reg.handlers("h")] == ["b", "a"]


def test_no_handler_returns_input() -> None:
    result = run(registry().execute("nobody", {"x": 1}))
    assert result.ok and result.data == {"x": 1} and result.results == []


@pytest.mark.parametrize("fail", ["raise", "crash", "bug"])
def test_chain_skips_failure_and_passes_input_on(fail: str) -> None:
    reg = registry()
    reg.register("a", {"h": 3}, Target("a"))
    reg.register("bad", {"h": 2}, Target("bad", fail=fail))
    reg.register("c", {"h": 1}, Target("c"))
    result = run(reg.execute("h", {}))
    assert result.data == {"seen": ["a", "c"]}
    assert not result.ok
    outcomes = {r.plugin: r.outcome for r in result.results}
    expected = {"raise": "error", "crash": "crashed", "bug": "error"}[fail]
    assert outcomes == {"a": "ok", "bad": expected, "c": "ok"}
    err = result.error
    assert err is not None and err.plugin == "bad"
    message = {"raise": "bad refused", "crash": "bad exited", "bug": "RuntimeError: stand-in bug"}[fail]
    assert err.error is not None and err.error.message == message
    assert result.to_dict()["error"]["message"] == message


def test_until_error_stops_and_reports_rest_skipped() -> None:
    reg = registry()
    reg.register("a", {"h": 3}, Target("a"))
    reg.register("bad", {"h": 2}, Target("bad", fail="raise"))
    c = Target("c")
    reg.register("c", {"h": 1}, c)
    result = run(reg.execute_until_error("h", {}))
    pairs = [(r.plugin, r.outcome) for r in result.results]
    assert pairs == [("a", "ok"), ("bad", "error"), ("c", "skipped")]
    assert result.data == {"seen": ["a"]}
    assert isinstance(result.error.error, HookFailed)  # type: ignore[union-attr]
    assert c.timeouts == []  # never invoked


def test_all_is_concurrent_and_same_input() -> None:
    # Each handler answers only once all four are running: called one after another, the first
    # would wait until its deadline and time out.
    reg = registry()
    meet = asyncio.Barrier(4)
    for i in range(4):
        reg.register(f"p{i}", {"h": 0}, Target(f"p{i}", meet=meet))
    result = run(reg.execute_all("h", {"n": 1}))
    assert [r.outcome for r in result.results] == ["ok"] * 4
    assert result.data is None
    assert [r.output for r in result.results] == [{"n": 1, "seen": [f"p{i}"]} for i in range(4)]


def test_per_call_deadline_is_for_the_whole_call() -> None:
    reg = registry()
    reg.register("slow", {"h": 2}, Target("slow", fail="hang"))
    late = Target("late")
    reg.register("late", {"h": 1}, late)
    result = run(reg.execute("h", {}, timeout_s=0.2))
    assert [r.outcome for r in result.results] == ["timeout", "timeout"]
    assert late.timeouts == []
    assert result.results[1].error is not None
    assert "deadline passed before it ran" in result.results[1].error.message
    assert isinstance(result.results[0].error, HookTimeout)


def test_deadline_falls_back_to_plugin_then_hook_then_default() -> None:
    settings = Settings.model_validate(
        {
            "hooks": {"default_timeout_secs": 7.0, "timeouts": {"h": 3.0}},
            "plugin": {"special": {"hook_timeouts": {"h": 0.5}}},
        }
    )
    reg = HookRegistry(settings)
    special, normal = Target("special"), Target("normal")
    reg.register("special", {"h": 0, "g": 0}, special)
    reg.register("normal", {"h": 0}, normal)
    run(reg.execute("h", {}))
    run(reg.execute("g", {}))
    assert special.timeouts == [0.5, 7.0]
    assert normal.timeouts == [3.0]


def test_target_ignoring_its_deadline_is_cut_off() -> None:
    class Stubborn:
        async def invoke(self, hook: str, data: Any, timeout_s: float) -> Any:
            await asyncio.sleep(60)

    settings = Settings.model_validate({"hooks": {"default_timeout_secs": 0.05}})
    reg = HookRegistry(settings)
    reg.register("stubborn", {"h": 0}, Stubborn())
    result = run(reg.execute("h", {"x": 1}))  # not cut off: "ok" after its 60 s
    assert result.results[0].outcome == "timeout"
    assert result.data == {"x": 1}
    assert "did not answer within 0.05 s" in result.results[0].error.message  # type: ignore[union-attr]


@pytest.mark.parametrize("policy", ["bogus", ""])
def test_unknown_policy(policy: str) -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        run(registry().run("h", {}, policy))  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [0, -1, 300.5, 4000])
def test_bad_timeout(timeout: float) -> None:
    said = r"timeout_s must be in \(0, 300\] seconds \(\[hooks\] max_timeout_secs\)"
    with pytest.raises(ValueError, match=said):
        run(registry().execute("h", {}, timeout_s=timeout))


def test_the_timeout_cap_is_the_operators() -> None:
    settings = Settings()
    settings.hooks.max_timeout_secs = 2.0
    settings.hooks.timeouts = {"slow": 60.0}
    with pytest.raises(ValueError, match=r"timeout_s must be in \(0, 2\]"):
        run(HookRegistry(settings).execute_all("h", {}, timeout_s=2.5))
    assert settings.hook_timeout("slow") == 2.0  # a configured deadline is cut to the cap


def test_metrics_recorded_per_outcome() -> None:
    reg = registry()
    reg.register("mok", {"metric_hook": 0}, Target("mok"))
    reg.register("mbad", {"metric_hook": 0}, Target("mbad", fail="raise"))
    run(reg.execute_all("metric_hook", {}))
    text = metrics.generate_latest(metrics.REGISTRY).decode()
    assert 'plugind_hook_calls_total{hook="metric_hook",outcome="ok",plugin="mok"} 1.0' in text
    assert 'plugind_hook_calls_total{hook="metric_hook",outcome="error",plugin="mbad"} 1.0' in text


def test_target_enforcing_its_own_deadline_gets_no_second_scope() -> None:
    # A target saying it enforces its deadline (the Supervisor) is trusted to fail the call at it;
    # one that says so is still bounded by its own HookTimeout, and the outcome is the same.
    class Enforcing(Target):
        enforces_deadline = True

    settings = Settings.model_validate({"hooks": {"default_timeout_secs": 0.05}})
    reg = HookRegistry(settings)
    reg.register("enf", {"h": 0}, Enforcing("enf", fail="hang"))
    result = run(reg.execute("h", {"x": 1}))
    assert result.results[0].outcome == "timeout"
    assert result.data == {"x": 1}


def test_only_a_class_level_true_counts_as_enforcing() -> None:
    # Only `enforces_deadline = True` on the class switches the guard off; a truthy "yes" does not.
    class Stubborn:
        enforces_deadline = "yes"

        async def invoke(self, hook: str, data: Any, timeout_s: float) -> Any:
            await asyncio.sleep(60)

    stub = Stubborn()
    settings = Settings.model_validate({"hooks": {"default_timeout_secs": 0.05}})
    reg = HookRegistry(settings)
    reg.register("stubborn", {"h": 0}, stub)
    result = run(reg.execute("h", {"x": 1}))
    assert result.results[0].outcome == "timeout"
    assert "did not answer within 0.05 s" in result.results[0].error.message  # type: ignore[union-attr]


def test_handler_order_follows_every_registration() -> None:
    # The run order is remembered per hook between calls: each (un)registration must renew it.
    reg = registry()
    reg.register("a", {"h": 0}, Target("a"))
    assert run(reg.execute("h", {})).data == {"seen": ["a"]}
    reg.register("b", {"h": 5}, Target("b"))
    assert run(reg.execute("h", {})).data == {"seen": ["b", "a"]}
    reg.unregister("b")
    assert run(reg.execute("h", {})).data == {"seen": ["a"]}
    reg.register("a", {"other": 0}, Target("a"))  # re-registered without h
    assert run(reg.execute("h", {"x": 1})).data == {"x": 1}
    assert reg.handlers("h") == []


@given(st.lists(st.tuples(st.sampled_from(["register", "replace", "unregister"]),
                          st.sampled_from(["p0", "p1", "p2", "p3"]),
                          st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(-2, 2), max_size=3)),
                max_size=25))
# A plugin that handled no hook, then upgraded to one that does, keeps its place.
@example([("register", "p1", {}), ("register", "p0", {"a": 0}), ("replace", "p1", {"a": 0})])
@settings(max_examples=200, deadline=None)
def test_run_orders_stay_right_whatever_the_registrations(
    steps: list[tuple[str, str, dict[str, int]]],
) -> None:
    # Each hook's run order is cached and only the orders a change touches are dropped: after any
    # sequence of (re)registrations, upgrades and unloads, every hook runs exactly the handlers a
    # fresh registry would, in the same order (priority, then load order; an upgrade keeps its place).
    reg = registry()
    model: dict[str, tuple[int, dict[str, int]]] = {}  # plugin -> (load order, hooks)
    loads = 0
    for op, plugin, hooks in steps:
        for hook in ("a", "b", "c"):
            reg.handlers(hook)  # fill the cache between changes, as calls do
        if op == "unregister":
            reg.unregister(plugin)
            model.pop(plugin, None)
            continue
        target = Target(plugin)
        if op == "replace" and plugin in model:
            reg.replace(plugin, hooks, target)
            model[plugin] = (model[plugin][0], hooks)
        else:
            (reg.replace if op == "replace" else reg.register)(plugin, hooks, target)
            loads += 1
            model[plugin] = (loads, hooks)
        for hook in ("a", "b", "c"):
            want = sorted(((p, h[hook], o) for p, (o, h) in model.items() if hook in h),
                          key=lambda x: (-x[1], x[2]))
            assert reg.handlers(hook) == [(p, prio) for p, prio, _ in want], (hook, steps)
    for hook in ("a", "b", "c"):
        assert {h.plugin for h in reg._handlers(hook)} == {p for p, (_, h) in model.items() if hook in h}
