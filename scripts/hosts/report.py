"""The shape of `build/hosts/report.json`, the host lane's report, and its validator.

Shared by the lane (which refuses to call a run good when its report is malformed) and the test
suite (which checks the validator, so the schema cannot rot while the slow lane is not run).
Standard library only.

    {"guest": {"os", "kernel", "cgroup": "v2", "systemd"},
     "lanes": {"systemd":    {"ok", "plugins_loaded", "plugins_total", "steps": {PLUGIN: {STEP: STATE}},
                              "checks": {NAME: {"ok", "detail"}}, "seconds"},
               "privileged": {"ok", "passed", "failed", "skipped", "seconds"},
               "container":  {"ok", "detail", "seconds"},
               "rootless":   {"ok", "steps", "seconds", ...}}}

STATE is "active", "off" or "degraded: WHY".
"""

from __future__ import annotations

from typing import Any

LANES = ("systemd", "privileged", "rootless", "container")

_GUEST = {"os": str, "kernel": str, "cgroup": str, "systemd": str}
_LANE_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "systemd": {
        "ok": bool,
        "plugins_loaded": int,
        "plugins_total": int,
        "steps": dict,
        "seconds": (int, float),
    },
    "privileged": {"ok": bool, "passed": int, "failed": int, "skipped": int, "seconds": (int, float)},
    "container": {"ok": bool, "detail": str, "seconds": (int, float)},
    "rootless": {"ok": bool, "steps": dict, "seconds": (int, float)},
}


def step_state_ok(state: object) -> bool:
    """A step's reported state is one of "active", "off", "degraded: <why>"."""
    return isinstance(state, str) and (state in ("active", "off") or state.startswith("degraded: "))


def _check_steps(where: str, steps: dict[str, Any]) -> list[str]:
    problems = []
    for plugin, by_step in steps.items():
        if not isinstance(by_step, dict) or not by_step:
            problems.append(f"{where}.steps.{plugin}: expected a map of step to state")
            continue
        for step, state in by_step.items():
            if not step_state_ok(state):
                problems.append(
                    f"{where}.steps.{plugin}.{step}: {state!r} is not active, off or 'degraded: why'"
                )
    return problems


def validate_report(report: object, lanes: list[str] | tuple[str, ...] = LANES) -> list[str]:
    """Every way `report` departs from the schema above (empty when it conforms).

    `lanes` are the lanes that were run: each must be present; others may be absent.
    """
    if not isinstance(report, dict):
        return ["report: expected an object"]
    problems: list[str] = []
    guest = report.get("guest")
    if not isinstance(guest, dict):
        problems.append("guest: missing")
    else:
        for key, kind in _GUEST.items():
            if not isinstance(guest.get(key), kind) or not guest.get(key):
                problems.append(f"guest.{key}: missing or not a {kind.__name__}")
    results = report.get("lanes")
    if not isinstance(results, dict):
        return [*problems, "lanes: missing"]
    for name in results:
        if name not in LANES:
            problems.append(f"lanes.{name}: unknown lane")
    for name in lanes:
        result = results.get(name)
        if not isinstance(result, dict):
            problems.append(f"lanes.{name}: missing")
            continue
        if result.get("ok") is False and isinstance(result.get("detail"), str):
            continue  # a failed lane need only say why; its figures may never have been taken
        for key, kind in _LANE_FIELDS[name].items():
            value = result.get(key)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                problems.append(f"lanes.{name}.{key}: missing or of the wrong type")
        if isinstance(result.get("steps"), dict):
            problems.extend(_check_steps(f"lanes.{name}", result["steps"]))
        if name == "systemd" and result.get("ok") is True:
            loaded, total = result.get("plugins_loaded"), result.get("plugins_total")
            if loaded != total:
                problems.append(f"lanes.systemd: ok with {loaded} of {total} plugins loaded")
        if name == "privileged" and result.get("ok") is True and result.get("failed") != 0:
            problems.append("lanes.privileged: ok with failed tests")
    return problems


# --- the "Supported hosts" table of docs/operations.md, made from a report --------------------

TABLE_BEGIN = (
    "<!-- supported-hosts: made by `scripts/hosts/lane.py --publish` from docs/hosts-report.json -->"
)
TABLE_END = "<!-- /supported-hosts -->"


def _steps_summary(steps: dict[str, dict[str, str]]) -> str:
    """ "all 13 active", or the active count and each step that is not, with its state."""
    states: dict[str, set[str]] = {}
    for by_step in steps.values():
        for step, state in by_step.items():
            states.setdefault(step, set()).add(state)
    active = sorted(s for s, seen in states.items() if seen == {"active"})
    others = sorted(f"{s}: {' / '.join(sorted(seen))}" for s, seen in states.items() if seen != {"active"})
    if not others:
        return f"all {len(active)} active"
    return f"{len(active)} of {len(states)} active; " + "; ".join(others)


def supported_hosts_table(report: dict[str, Any]) -> str:
    """The markdown table (between its markers) for the lanes of `report`."""
    guest = report["guest"]
    host = f"{guest['os']}, kernel {guest['kernel']}, {guest['systemd'].split(' (')[0]}"
    lanes = report["lanes"]
    rows = []

    def verdict(result: dict[str, Any]) -> str:
        return "holds" if result.get("ok") else f"**fails**: {result.get('detail', '')}"

    if "systemd" in lanes:
        r = lanes["systemd"]
        checks = r.get("checks", {})
        rows.append(
            (
                f"{host}: `systemctl start plugind` (shipped unit)",
                f"{guest['cgroup']}, delegated",
                _steps_summary(r.get("steps", {})),
                f"{verdict(r)}: {r.get('plugins_loaded')} of {r.get('plugins_total')} examples loaded; "
                f"{sum(c['ok'] for c in checks.values())} of {len(checks)} checks (limits set and "
                "enforced: OOM kill, fork bomb, CPU quota; watchdog restart; restart; clean stop; "
                "JSON logs)",
            )
        )
    if "privileged" in lanes:
        r = lanes["privileged"]
        rows.append(
            (
                f"{host}: `tests/privileged` as root",
                f"{guest['cgroup']}, delegated unit",
                "-",
                f"{verdict(r)}: {r.get('passed')} passed, {r.get('failed')} failed, "
                f"{r.get('skipped')} skipped",
            )
        )
    if "container" in lanes:
        r = lanes["container"]
        rows.append(
            (
                f"{host}: Docker (`docker.io`), the documented `docker run`",
                f"{guest['cgroup']}, container",
                _steps_summary(r.get("steps", {})),
                f"{verdict(r)}: HEALTHCHECK healthy, examples loaded, `docker stop` clean"
                if r.get("ok")
                else verdict(r),
            )
        )
    if "rootless" in lanes:
        r = lanes["rootless"]
        rows.append(
            (
                f"{host}: unprivileged daemon, user namespace",
                f"{guest['cgroup']}, delegated to the user",
                _steps_summary(r.get("steps", {})),
                verdict(r),
            )
        )
    lines = [
        TABLE_BEGIN,
        "| host and run | cgroups | isolation steps | what was verified |",
        "|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    lines.append(TABLE_END)
    return "\n".join(lines)
