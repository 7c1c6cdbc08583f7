"""The pre-contained spare (plugind.sandbox.contain, forkserver.py): a sandboxed plugin it serves is
isolated exactly as one forked anew, a spare serves one plugin only, an unused spare leaves nothing
behind, and a dead spare only means the next spawn forks anew.

Real fork-server (`Launcher`), real kernel: namespaces, cgroups, mounts, capabilities and seccomp are
read from the host side, in /proc/PID and the cgroup files, never from the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cgroup_host import HOST, group_dirs
from sandbox_harness import make_settings

from plugind.host.launcher import Launcher, SpawnRequest
from plugind.sandbox.plan import SandboxPlan, build_plan
from plugind.wire import BlockingChannel

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sandboxing needs root")

PLUGIN = '''
import os
from plugind.sdk import Plugin
plugin = Plugin()

@plugin.hook("whoami")
def whoami(data, ctx):
    return {"pid": os.getpid(), "cwd": os.getcwd()}
'''
NAMESPACES = ("pid", "net", "ipc", "uts", "mnt")
STATUS_KEYS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Seccomp_filters",
               "NSpid")
LIMITS = ("Max open files", "Max file size", "Max core file size", "Max processes")


def plan_for(tmp_path: Path, parent: str, name: str, **sandboxing: Any) -> SandboxPlan:
    tree = tmp_path / f"{name}-tree"
    tree.mkdir()
    (tree / "demo.py").write_text(textwrap.dedent(PLUGIN))
    return build_plan(make_settings(parent, **sandboxing), name, tree)


class Plugin:
    def __init__(self, pid: int, chan: BlockingChannel, plan: SandboxPlan, steps: dict[str, str]) -> None:
        self.pid, self.chan, self.plan, self.steps = pid, chan, plan, steps


async def spawn(launcher: Launcher, plan: SandboxPlan) -> Plugin:
    ours, theirs = socket.socketpair()
    try:
        spawned = await launcher.spawn(
            SpawnRequest(plan.name, plan.tree, "demo:plugin", "1.0", plan=plan.to_wire()), theirs)
    finally:
        theirs.close()
    ours.settimeout(30)
    chan = BlockingChannel(ours)
    hello = await asyncio.to_thread(chan.recv)
    assert hello is not None and hello["type"] == "hello", hello
    chan.send({"type": "invoke", "id": 1, "hook": "whoami", "data": None, "deadline_ms": 5000})
    reply = await asyncio.to_thread(chan.recv)
    assert reply is not None and reply["data"]["pid"] == 1, reply  # PID 1 of its own pid namespace
    return Plugin(spawned.pid, chan, plan, spawned.steps)


SHARED = ("net", "ipc", "uts")  # the namespaces a spare makes and the plugin it serves runs in


@dataclass(frozen=True)
class Spare:
    pid: int
    ppid: int  # the fork-server
    namespaces: dict[str, str]  # SHARED -> the namespace it made


async def next_spare(launcher: Launcher, not_: set[int], timeout: float = 30.0) -> Spare:
    """The fork-server's next pre-contained spare (prepared once it is idle), once its preparation
    is done (the guard filter, its last step, loaded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout  # a bound against a hang (it prepares itself at nice 19)
    while loop.time() < deadline:
        pid = launcher.sandboxed_spare_pid
        if pid is not None and pid not in not_ and "Seccomp:\t2" in Path(f"/proc/{pid}/status").read_text():
            return Spare(pid, _ppid(pid), {n: ns(pid)[n] for n in SHARED})
        await asyncio.sleep(0.01)
    raise AssertionError("no pre-contained spare was prepared")


def served_by(spare: Spare, p: Plugin) -> bool:
    """Whether `p` runs in what `spare` prepared: the spare itself (cgroup v1, where its group is
    renamed to the plugin's), or the plugin it forked at hand-off into the plugin's group (cgroup
    v2, where the kernel cannot rename a group; the spare then exits), a child of the fork-server
    in the spare's namespaces either way. A plugin forked anew has namespaces of its own (compare
    only while the spare, or a plugin it served, holds them: a freed namespace's number is reused)."""
    return {n: ns(p.pid)[n] for n in SHARED} == spare.namespaces and _ppid(p.pid) == spare.ppid


@asynccontextmanager
async def running() -> AsyncIterator[Launcher]:
    launcher = Launcher()
    await launcher.start()
    try:
        yield launcher
    finally:
        await launcher.close()


def group_of(pid: int) -> dict[str, str]:
    """controller (v1) or '' (v2) -> the process's cgroup path, from /proc/PID/cgroup."""
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def limit_files(plan: SandboxPlan) -> dict[str, str]:
    """The plugin group's limit files, read from the cgroup filesystem."""
    name = f"{plan.cgroup_parent.strip('/')}/{plan.group}"
    if HOST.backend == "v1":
        files = {"memory": ("memory.limit_in_bytes",), "pids": ("pids.max",),
                 "cpu": ("cpu.cfs_quota_us", "cpu.cfs_period_us")}
        return {f: (HOST.v1_mounts[c] / name / f).read_text().strip() for c, fs in files.items() for f in fs}
    d = HOST.v2("/" + name)
    return {f: (d / f).read_text().strip() for f in ("memory.max", "pids.max", "cpu.max")}


def expected_limits(plan: SandboxPlan) -> dict[str, str]:
    lim = plan.limits
    if HOST.backend == "v1":
        return {"memory.limit_in_bytes": str(lim.memory_bytes), "pids.max": str(lim.pids_max or "max"),
                "cpu.cfs_quota_us": str(lim.cpu_quota_us or -1), "cpu.cfs_period_us": str(lim.cpu_period_us)}
    return {"memory.max": str(lim.memory_bytes), "pids.max": str(lim.pids_max or "max"),
            "cpu.max": f"{lim.cpu_quota_us or 'max'} {lim.cpu_period_us}"}


def isolation(p: Plugin) -> dict[str, Any]:
    """Everything a plugin's confinement is made of, as seen from the host, with its own name and
    tree written as <name> and <tree> (so a fresh child's and a spare's can be compared)."""
    pid, plan = p.pid, p.plan

    def norm(text: str) -> str:
        return text.replace(plan.tree, "<tree>").replace(plan.name, "<name>")

    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":\t" in line)
    mounts = []
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        f = pre.split()
        fstype, _source, super_opts = post.split()[:3]
        mounts.append((norm(f[4]), norm(f[3]), f[5], fstype, super_opts))
    hostname = subprocess.run(["nsenter", "-t", str(pid), "-u", "hostname"], capture_output=True,
                              text=True, check=True, timeout=30).stdout.strip()
    limits = [norm(line) for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
              if line.startswith(LIMITS)]
    groups = group_of(pid)
    wanted = ("memory", "pids", "cpu") if HOST.backend == "v1" else ("",)
    return {
        # NSpid: the host's pid, then the pid inside its own namespace (compared: the latter).
        "status": {k: status[k].strip().split()[-1] for k in STATUS_KEYS if k in status},
        "mounts": sorted(mounts),
        "root": sorted(os.listdir(f"/proc/{pid}/root")),
        "hostname": norm(hostname),
        "rlimits": limits,
        "cgroups": {c: norm(groups[c]) for c in wanted},
        "limits": limit_files(plan),
        "steps": p.steps,
        "sid_is_self": os.getsid(pid) == pid,
        "comm": Path(f"/proc/{pid}/comm").read_text().strip(),
        # what it holds open (the numbers vary with the fork-server's own fds; the kinds must not)
        "fds": sorted(os.readlink(f"/proc/{pid}/fd/{fd}").partition(":")[0]
                      for fd in os.listdir(f"/proc/{pid}/fd")),
        # priority: a spare waits at nice 19; a plugin gets the fork-server's, as a fresh child does
        "nice": Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[16],
    }


def ns(pid: int | str) -> dict[str, str]:
    return {n: os.readlink(f"/proc/{pid}/ns/{n}") for n in NAMESPACES}


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


@pytest.mark.skipif(HOST.backend is None, reason="no cgroup controllers on this host")
def test_a_plugin_served_by_a_spare_is_isolated_exactly_as_one_forked_anew(
    tmp_path: Path, parent: str
) -> None:
    fresh_plan = plan_for(tmp_path, parent, "alpha")
    spare_plan = plan_for(tmp_path, parent, "beta")

    async def main() -> None:
        async with running() as launcher:
            fresh = await spawn(launcher, fresh_plan)  # no spare yet: forked anew
            spare = await next_spare(launcher, {fresh.pid})
            assert Path(f"/proc/{spare.pid}/comm").read_text().strip() == "plugind-spare"
            # While it waits it holds the guard filter only (the allowlist comes last, at hand-off).
            waiting = Path(f"/proc/{spare.pid}/status").read_text()
            assert "Seccomp:\t2" in waiting and "NoNewPrivs:\t1" in waiting
            if "Seccomp_filters:" in waiting:
                assert "Seccomp_filters:\t1" in waiting
            served = await spawn(launcher, spare_plan)
            assert served_by(spare, served)  # the spare it prepared served this plugin
            a, b = isolation(fresh), isolation(served)
            assert a == b  # the same confinement, step by step
            # ... and that confinement is real: its own namespaces, cgroup, limits, no privileges.
            host = ns("self")
            for n in NAMESPACES:
                assert ns(fresh.pid)[n] != host[n] and ns(served.pid)[n] != host[n], n
                assert ns(fresh.pid)[n] != ns(served.pid)[n], n
            for p in (fresh, served):
                assert set(group_of(p.pid).values()) >= {f"/{p.plan.cgroup_parent.strip('/')}/{p.plan.group}"}
                assert limit_files(p.plan) == expected_limits(p.plan)
                assert ("<tree>", "<tree>") in {m[:2] for m in isolation(p)["mounts"]}
                other = fresh_plan if p is served else spare_plan
                assert not Path(f"/proc/{p.pid}/root{other.tree}").exists()
            assert b["status"]["Seccomp"] == "2" and b["status"]["NoNewPrivs"] == "1"
            assert b["status"]["CapEff"] == b["status"]["CapBnd"] == "0000000000000000"
            assert b["hostname"] == "plugin-<name>"
            assert b["status"]["NSpid"] == "1"
            assert all(v == "active" for k, v in b["steps"].items() if k in ("pid_ns", "net_ns", "filesystem",
                                                                               "cgroup", "seccomp"))
            for p in (fresh, served):
                p.chan.sock.close()

    asyncio.run(main())


@pytest.mark.skipif(HOST.backend is None, reason="no cgroup controllers on this host")
def test_two_plugins_never_get_the_same_spare(tmp_path: Path, parent: str) -> None:
    plans = [plan_for(tmp_path, parent, n) for n in ("one", "two", "three")]

    async def main() -> None:
        async with running() as launcher:
            first = await spawn(launcher, plans[0])
            s1 = await next_spare(launcher, {first.pid})
            second = await spawn(launcher, plans[1])
            assert served_by(s1, second)
            s2 = await next_spare(launcher, {first.pid, s1.pid, second.pid})
            third = await spawn(launcher, plans[2])
            assert served_by(s2, third) and not served_by(s1, third)
            assert len({ns(p.pid)["pid"] for p in (first, second, third)}) == 3
            for p in (first, second, third):
                assert group_of(p.pid)["pids" if HOST.backend == "v1" else ""].endswith("/" + p.plan.group)
                p.chan.sock.close()

    asyncio.run(main())


@pytest.mark.skipif(HOST.backend is None, reason="no cgroup controllers on this host")
def test_an_unused_spare_and_its_cgroup_are_removed_at_shutdown(tmp_path: Path, parent: str) -> None:
    plan = plan_for(tmp_path, parent, "solo")

    async def main() -> None:
        async with running() as launcher:
            p = await spawn(launcher, plan)
            spare = (await next_spare(launcher, {p.pid})).pid
            if HOST.backend == "v1":  # cgroup2 refuses rename(2): no group until its plugin's
                want = f"/{parent.strip('/')}/.spare-{spare}"
                assert group_of(spare)["pids"] == want  # made and entered first thing, before its guard
                assert all((d / f".spare-{spare}").is_dir() for d in group_dirs(parent))
            p.chan.sock.close()
        deadline = asyncio.get_running_loop().time() + 30
        while Path(f"/proc/{spare}").exists() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert not Path(f"/proc/{spare}").exists()
        assert [g for d in group_dirs(parent) for g in d.iterdir() if g.is_dir()] == []

    asyncio.run(main())


@pytest.mark.skipif(HOST.backend is None, reason="no cgroup controllers on this host")
def test_a_killed_spare_means_the_next_spawn_forks_anew(tmp_path: Path, parent: str) -> None:
    plans = [plan_for(tmp_path, parent, n) for n in ("first", "after")]

    async def main() -> None:
        async with running() as launcher:
            first = await spawn(launcher, plans[0])
            spare = (await next_spare(launcher, {first.pid})).pid
            os.kill(spare, signal.SIGKILL)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30  # the fork-server reaps it and removes its group

            def left() -> bool:
                return Path(f"/proc/{spare}").exists() or any(
                    (d / f".spare-{spare}").exists() for d in group_dirs(parent))

            while left() and loop.time() < deadline:
                await asyncio.sleep(0.01)
            assert not left()
            after = await spawn(launcher, plans[1])
            # (not `served_by`: the dead spare's namespaces are gone, and their numbers may be reused)
            assert after.pid != spare
            assert isolation(after)["status"]["Seccomp"] == "2"
            assert limit_files(after.plan) == expected_limits(after.plan)
            assert isolation(after) | {"steps": None} == isolation(first) | {"steps": None}
            for p in (first, after):
                p.chan.sock.close()

    asyncio.run(main())


@pytest.mark.skipif(HOST.backend is None, reason="no cgroup controllers on this host")
def test_a_plan_the_spare_does_not_fit_forks_anew_and_leaves_the_spare(tmp_path: Path, parent: str) -> None:
    plain = [plan_for(tmp_path, parent, n) for n in ("first", "last")]
    other = plan_for(tmp_path, parent, "bigtmp", filesystem__tmp_size_mb=32)  # another /tmp: another root

    async def main() -> None:
        async with running() as launcher:
            first = await spawn(launcher, plain[0])
            spare = await next_spare(launcher, {first.pid})
            odd = await spawn(launcher, other)
            assert not served_by(spare, odd)
            assert any(m[0] == "/tmp" and "size=32768k" in m[4] for m in isolation(odd)["mounts"])
            last = await spawn(launcher, plain[1])
            assert served_by(spare, last)  # still there, and still unused: it serves the next plan it fits
            assert any(m[0] == "/tmp" and "size=16384k" in m[4] for m in isolation(last)["mounts"])
            for p in (first, odd, last):
                p.chan.sock.close()

    asyncio.run(main())


CAP_NET_BIND_SERVICE = 10
CAP_CHOWN = 0


def cap_set(pid: int, key: str) -> int:
    """A capability set of process `pid` (CapBnd, CapEff, ...) as a bit mask, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no {key} in /proc/{pid}/status")


@pytest.mark.skipif(HOST.backend is None, reason="no cgroup controllers on this host")
def test_a_spare_serves_only_plans_within_the_capabilities_it_was_prepared_for(
    tmp_path: Path, parent: str
) -> None:
    # A spare cuts its bounding set to its prototype's allowed caps while it waits: a plan that
    # allows another cap must fork anew (and get it); a plan that allows fewer is served, with
    # exactly its own caps in every set.
    wide = plan_for(tmp_path, parent, "wide", allowed_caps=["net_bind_service", "chown"])
    wider = plan_for(tmp_path, parent, "wider", allowed_caps=["net_bind_service", "chown", "kill"])
    narrow = plan_for(tmp_path, parent, "narrow", allowed_caps=["net_bind_service"])

    async def main() -> None:
        async with running() as launcher:
            first = await spawn(launcher, wide)
            spare = await next_spare(launcher, {first.pid})
            odd = await spawn(launcher, wider)
            assert not served_by(spare, odd)  # not within the spare's: forked anew
            assert cap_set(odd.pid, "CapBnd") == cap_set(odd.pid, "CapEff") == (
                1 << CAP_NET_BIND_SERVICE | 1 << CAP_CHOWN | 1 << 5)  # CAP_KILL
            served = await spawn(launcher, narrow)
            assert served_by(spare, served)  # still unused after the plan it did not fit
            for key in ("CapBnd", "CapEff", "CapPrm"):
                assert cap_set(served.pid, key) == 1 << CAP_NET_BIND_SERVICE, key
            assert cap_set(served.pid, "CapInh") == cap_set(served.pid, "CapAmb") == 0
            assert isolation(served)["steps"]["capabilities"] == "active"
            for p in (first, odd, served):
                p.chan.sock.close()

    asyncio.run(main())


@pytest.mark.skipif(HOST.backend is None, reason="no cgroup controllers on this host")
def test_a_spare_runs_nothing_of_the_plugin_until_its_cgroup_is_in_place(
    tmp_path: Path, parent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The spare does the plugin's steps while the fork-server makes its cgroup, then waits for the
    # fork-server's go (cgroup v1; on v2 the group is made before the spare gets the request, and
    # the plugin is born in it). Here the cgroup step fails (injected, after a pause long enough for
    # the spare to finish its own steps): the spare must never have run the plugin (which would say
    # "ran").
    import msgpack

    from plugind.errors import SandboxError
    from plugind.sandbox import cgroups, contain

    plan = plan_for(tmp_path, parent, "gated")

    def run(payload: bytes, sock_fd: int, hooks: Any) -> Any:
        os.write(sock_fd, b"ran")
        os._exit(0)

    def failing(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)  # a pause, not a measurement: the spare is done with its steps by then
        raise SandboxError("injected cgroup failure", step="cgroup", detail="injected")

    spare = contain.prepare_spare(plan, lambda: None, run)
    ours, theirs = socket.socketpair()
    try:
        contain.take_report(spare)
        monkeypatch.setattr(cgroups, "apply_limits", failing)
        monkeypatch.setattr(cgroups, "create_group", failing)
        payload = msgpack.packb({"op": "spawn", "name": plan.name, "plan": plan.to_wire()}, use_bin_type=True)
        with pytest.raises(SandboxError, match="injected"):
            contain.use_spare(spare, plan, payload, theirs.fileno())
        contain.discard_spare(spare)
        theirs.close()
        ours.settimeout(10)  # a bound against a hang
        assert ours.recv(16) == b""  # end of stream: it died without a word
        assert not Path(f"/proc/{spare.pid}").exists()
    finally:
        contain.discard_spare(spare)
        ours.close()
        with contextlib.suppress(OSError):
            theirs.close()
