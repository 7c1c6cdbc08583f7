"""spawn_contained end to end: network modes, strict mode, config knobs, honest step reports,
failures named by step, and nothing left behind (process, mount, cgroup), even after SIGKILL."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cgroup_host import HOST, WANTED, enable, group_dirs
from sandbox_harness import LiveServer, make_settings, make_tree, plan_for, run_probe, started

from plugind.errors import SandboxError
from plugind.sandbox import cgroups
from plugind.sandbox.contain import STEPS, spawn_contained
from plugind.sandbox.plan import build_plan

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]


def _errno_of(fn: Any) -> str:
    import errno

    try:
        fn()
    except OSError as exc:
        return errno.errorcode[exc.errno or 0]
    return "OK"


def _gateway() -> str:
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":
            return socket.inet_ntoa(int(fields[2], 16).to_bytes(4, "little"))
    raise AssertionError("no default route in the sandbox")


def test_restricted_network_reaches_only_allowed_targets(tmp_path: Path, parent: str) -> None:
    allowed, denied = LiveServer("0.0.0.0"), LiveServer("0.0.0.0")
    try:
        plan = plan_for(
            tmp_path,
            parent,
            network__mode="restricted",
            network__allowed_targets=[f"10.213.0.0/16:{allowed.port}"],
        )

        def probe() -> dict[str, Any]:
            gw = _gateway()

            def fetch(port: int) -> str:
                with socket.create_connection((gw, port), timeout=5) as s:
                    return s.recv(2).decode()

            blocked = _errno_of(lambda: fetch(denied.port))
            return {
                "allowed": fetch(allowed.port),
                "denied": blocked,
                "raw": _errno_of(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)),
                "links": sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else None,
            }

        out = run_probe(plan, probe)
    finally:
        allowed.close()
        denied.close()
    assert out.result["allowed"] == "hi"
    # Rejected by policy while the server is live: at once, not dropped into a connect timeout.
    assert out.result["denied"] == "EHOSTUNREACH"
    assert out.result["raw"] == "EPERM"
    assert (allowed.hits, denied.hits) == (1, 0)
    assert out.spawned.steps["network"] == "active"
    host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert " pd" not in host_links  # the veth pair went away with the plugin


def test_strict_mode_kills_on_a_socket_after_import(tmp_path: Path, parent: str) -> None:
    plan = plan_for(tmp_path, parent, mode="strict")

    def probe() -> dict[str, Any]:
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        return {"survived": True}

    out = run_probe(plan, probe, after_import=True)
    assert out.status == -signal.SIGSYS
    assert out.result == {}


def test_config_paths_read_only_writable_and_bind_mounts(tmp_path: Path, parent: str) -> None:
    ro, rw, src = tmp_path / "ro", tmp_path / "rw", tmp_path / "src"
    for d in (ro, rw, src):
        d.mkdir()
    (ro / "f").write_text("ro")
    (src / "g").write_text("bound")
    settings = make_settings(parent)
    settings.sandboxing.filesystem.read_only_paths = [ro]
    settings.sandboxing.filesystem.writable_paths = [rw]
    settings.sandboxing.filesystem.bind_mounts = [{"source": src, "target": Path("/data"), "writable": False}]
    plan = build_plan(settings, "paths", make_tree(tmp_path, "paths"))

    def probe() -> dict[str, Any]:
        (rw / "out").write_text("written inside")
        return {
            "ro_read": (ro / "f").read_text(),
            "ro_write": _errno_of(lambda: (ro / "x").write_text("x")),
            "bind": Path("/data/g").read_text(),
            "bind_write": _errno_of(lambda: Path("/data/x").write_text("x")),
            "host_path_of_bind": Path(src).exists(),
        }

    out = run_probe(plan, probe)
    assert out.result == {
        "ro_read": "ro",
        "ro_write": "EROFS",
        "bind": "bound",
        "bind_write": "EROFS",
        "host_path_of_bind": False,
    }
    assert (rw / "out").read_text() == "written inside"


# Cgroup set-ups that cannot work on this host, whatever it offers: the backend it lacks (v2 on a
# v1 or hybrid host, v1 elsewhere) and, where controllers are handed down (v2), a parent that holds a
# process of its own, so no controller can be enabled in it (no internal processes): refused, naming
# the rule and the group, before anything is written.
UNUSABLE = ["backend-the-host-lacks"] + (["parent-holding-a-process"] if HOST.layout == "v2" else [])


@contextmanager
def _unusable_cgroup(case: str, parent: str) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(the plan's cgroup parent, sandboxing settings, what the error says) for `case` on this host."""
    if case == "backend-the-host-lacks" and HOST.layout == "v1":
        where = re.escape(str(HOST.v2_mount or "not mounted"))
        yield parent, {"cgroups__backend": "v2"}, rf"cgroup v2 is not usable: the unified hierarchy \({where}"
    elif case == "backend-the-host-lacks":
        yield parent, {"cgroups__backend": "v1"}, r"cgroup v1 is not usable: controllers mounted \[.*\], need"
    else:  # as a unit given controllers (Delegate=yes) whose own process still sits in it
        busy = HOST.v2(parent) / "busy"
        busy.mkdir(parents=True)
        assert enable(HOST.v2(parent), WANTED), "no controller to hand to the busy group"
        holder = os.fork()
        if holder == 0:
            signal.pause()
            os._exit(0)
        try:
            (busy / "cgroup.procs").write_text(str(holder))
            group = re.escape(f"{parent}/busy")
            yield f"{parent}/busy", {}, (
                rf"cannot give the plugin groups under {group} the cgroup controller\(s\) memory, pids, cpu: "
                rf"cgroup {group} holds processes \(pids \[{holder}\]\), and cgroup v2 lets a group hand "
                r"controllers to its children only while it holds none \(the \"no internal processes\" rule\)"
            )
            assert (busy / "cgroup.procs").read_text().split() == [str(holder)]  # left as it was
            assert not (busy / "probe").exists()
        finally:
            os.kill(holder, signal.SIGKILL)
            os.waitpid(holder, 0)


@pytest.mark.parametrize("case", UNUSABLE)
def test_unusable_cgroup_set_up_fails_naming_the_step(tmp_path: Path, any_parent: str, case: str) -> None:
    with _unusable_cgroup(case, any_parent) as (cg_parent, settings, says):
        plan = plan_for(tmp_path, cg_parent, **settings)
        children_before = _children()
        failed = "sandbox step 'cgroup' failed for plugin probe: "
        with pytest.raises(SandboxError, match=failed + says) as ei:
            spawn_contained(plan, lambda hooks: os._exit(0), [])
        assert ei.value.step == "cgroup"
        assert ei.value.plugin == "probe"
        assert "allow_degraded" in str(ei.value)
        assert _children() == children_before  # the child it forked is gone
        assert not [d for d in group_dirs(cg_parent) if (d / "probe").exists()]


@pytest.mark.parametrize("case", UNUSABLE)
def test_degraded_step_is_reported_and_the_rest_still_holds(
    tmp_path: Path, any_parent: str, case: str
) -> None:
    with _unusable_cgroup(case, any_parent) as (cg_parent, settings, says):
        plan = plan_for(tmp_path, cg_parent, allow_degraded=True, **settings)

        def probe() -> dict[str, Any]:
            return {"seccomp": Path("/proc/self/status").read_text().count("Seccomp:\t2")}

        out = run_probe(plan, probe)
        assert re.match(f"degraded: {says}", out.spawned.steps["cgroup"]), out.spawned.steps["cgroup"]
        assert out.spawned.steps["filesystem"] == "active"
        assert out.result == {"seccomp": 1}
        assert not [d for d in group_dirs(cg_parent) if (d / "probe").exists()]


def test_child_side_failure_names_step_and_syscall_and_leaves_nothing(tmp_path: Path, parent: str) -> None:
    settings = make_settings(parent)
    settings.sandboxing.filesystem.read_only_paths = [Path("/nonexistent-plugind-path")]
    plan = build_plan(settings, "broken", make_tree(tmp_path, "broken"))
    children_before = _children()
    with pytest.raises(SandboxError, match=r"sandbox step 'filesystem' failed for plugin broken: stat") as ei:
        spawn_contained(plan, lambda hooks: os._exit(0), [])
    assert ei.value.step == "filesystem"
    assert ei.value.detail is not None and "ENOENT" in ei.value.detail
    assert "/nonexistent-plugind-path" in ei.value.detail
    assert _children() == children_before
    assert not [d for d in group_dirs(parent) if (d / "broken").exists()]


def _children() -> set[int]:
    me = os.getpid()
    return {int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == me}


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError):
        return None


def test_sandboxing_disabled_reports_every_step_off(tmp_path: Path, parent: str) -> None:
    plan = plan_for(tmp_path, parent, enabled=False)

    def probe() -> dict[str, Any]:
        return {"pid1": os.getpid() == 1}

    out = run_probe(plan, probe)
    assert out.spawned.steps == dict.fromkeys(STEPS, "off")
    assert out.result == {"pid1": False}


def test_nothing_left_behind_after_a_plugin_exits(tmp_path: Path, parent: str) -> None:
    mounts_before = Path("/proc/self/mountinfo").read_text()
    plan = plan_for(tmp_path, parent, name="tidy")

    def probe() -> dict[str, Any]:
        for _ in range(3):  # grandchildren that would outlive a careless PID 1
            if os.fork() == 0:
                signal.pause()
        return {"ok": True}

    out = run_probe(plan, probe)
    assert out.result == {"ok": True}
    assert not Path(f"/proc/{out.spawned.pid}").exists()
    assert Path("/proc/self/mountinfo").read_text() == mounts_before
    assert not [d for d in group_dirs(parent) if (d / "tidy").exists()]


def test_a_spawner_holding_more_fds_than_the_plugins_limit_still_spawns(tmp_path: Path, parent: str) -> None:
    # A spawner (here this test process) may hold more fds than the plugin's RLIMIT_NOFILE: the
    # child must shed them before the limit is lowered, or it can open nothing (EMFILE) once it is.
    plan = plan_for(tmp_path, parent, name="crowded")
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(plan.rlimit_nofile + 50)]
    assert max(held) >= plan.rlimit_nofile

    def probe() -> dict[str, Any]:
        with open("/proc/self/status") as f:  # a file opened under the lowered limit
            f.read()
        return {"fds": len(os.listdir("/proc/self/fd"))}

    try:
        out = run_probe(plan, probe)
    finally:
        for fd in held:
            os.close(fd)
    assert out.result["fds"] < 16, out.result  # none of the spawner's fds reached the plugin


DAEMON = textwrap.dedent(
    """
    import json, os, signal, sys
    sys.path.insert(0, {harness!r})
    from sandbox_harness import plan_for
    from plugind.sandbox.contain import spawn_contained
    from pathlib import Path

    def sleeper(hooks):
        hooks.before_plugin_import()
        for _ in range(2):
            if os.fork() == 0:
                signal.pause()
        signal.pause()

    pids = []
    for n in range(2):
        plan = plan_for(Path({tmp!r}), {parent!r}, name=f"orphan{{n}}")
        pids.append(spawn_contained(plan, sleeper, []).pid)
    print(json.dumps(pids), flush=True)
    signal.pause()
    """
)


def test_after_daemon_sigkill_nothing_is_left_once_cleanup_stale_runs(tmp_path: Path, parent: str) -> None:
    script = tmp_path / "daemon.py"
    script.write_text(DAEMON.format(harness=str(Path(__file__).parent), tmp=str(tmp_path), parent=parent))
    mounts_before = Path("/proc/self/mountinfo").read_text()
    daemon = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, cwd=REPO)
    try:
        assert daemon.stdout is not None
        line = daemon.stdout.readline()
        pids = json.loads(line)
        pidfds = [os.pidfd_open(p) for p in pids]
    finally:
        daemon.kill()
        daemon.wait()
    # Parent death kills each plugin's PID 1, and with it its whole pid namespace.
    for fd in pidfds:
        assert select.select([fd], [], [], 10)[0], "a plugin outlived its daemon"
        os.close(fd)
    stale = [d for d in group_dirs(parent) if any(d.iterdir())]
    assert stale, "the killed daemon's cgroups should still be there before clean-up"
    removed = cgroups.cleanup_stale(parent)
    assert {Path(p).name for p in removed} == {"orphan0", "orphan1"}
    assert not [d for d in group_dirs(parent) if [c for c in d.iterdir() if c.is_dir()]]
    assert Path("/proc/self/mountinfo").read_text() == mounts_before


def test_user_namespace_maps_plugin_root_to_host_nobody(tmp_path: Path, parent: str) -> None:
    plan = plan_for(tmp_path, parent, name="userns", enable_user_namespace=True)

    def probe() -> dict[str, Any]:
        status = dict(ln.split(":\t", 1) for ln in Path("/proc/self/status").read_text().splitlines())
        return {
            "uid": status["Uid"].split(),
            "caps": (status["CapEff"].strip(), status["CapBnd"].strip()),
            "seccomp": status["Seccomp"].strip(),
            "pids": sorted(p for p in os.listdir("/proc") if p.isdigit()),
            "shadow": _errno_of(lambda: Path("/etc/shadow").read_text()),
            "code": _errno_of(lambda: (Path(plan.tree) / "plugin.py").write_text("x")),
            "tmp": _errno_of(lambda: Path("/tmp/x").write_text("x")),
            "read_code": (Path(plan.tree) / "plugin.py").read_text(),
            # Read by the plugin itself: the test cannot read it from outside before the probe exits.
            "cgroup": Path("/proc/self/cgroup").read_text(),
        }

    with started(plan, probe) as box:
        host_uid = Path(f"/proc/{box.pid}/status").read_text().split("Uid:")[1].split()[0]
        out = box.wait(30)
    assert out.spawned.steps["user_ns"] == "active"
    assert host_uid == "65534"  # root inside, nobody outside
    cgroup_lines = out.result.pop("cgroup").splitlines()
    if HOST.backend is not None:  # born in its group (v1: the intermediate entered it first)
        wanted = {"memory", "pids", "cpu"} if HOST.backend == "v1" else {""}
        placed = {c: path for line in cgroup_lines for _, names, path in [line.split(":", 2)]
                  for c in names.split(",") if c in wanted}
        assert set(placed) == wanted and all(p.endswith(f"{parent}/userns") for p in placed.values()), placed
    assert out.result == {
        "uid": ["0", "0", "0", "0"],
        "caps": ["0000000000000000", "0000000000000000"],
        "seccomp": "2",
        "pids": ["1"],
        "shadow": "ENOENT",
        "code": "EROFS",
        "tmp": "OK",
        "read_code": "VALUE = 1\n",
    }
    assert not Path(f"/proc/{out.spawned.pid}").exists()
