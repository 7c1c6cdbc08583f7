"""Zero-downtime upgrade through the real daemon: `POST /api/plugins/upgrade` and `plugind ctl upgrade`.

Calls stream through the upgrade from several clients; each must succeed and be answered by exactly
one version. A new version that cannot start (its on_load raises, its bundle is tampered or not
trusted) leaves the old one serving. The new version's start is held open, where a test needs it,
by its on_load waiting for a context key the test sets (an event, not a sleep), so a second
upgrade or an unload meets the first one under way.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from cgroup_host import session_parent
from conftest import TOKEN, RunningDaemon, alive, wait_for
from kit import Workspace, plugin_source

from plugind.host.state import read_state

Factory = Callable[..., RunningDaemon]
pytestmark = pytest.mark.slow  # a daemon per test

# The answer says which version gave it: data["answered"] lists every version the call passed through.
ANSWER = "data.setdefault('answered', []).append({version!r})\nreturn data"
# on_load that holds the start until the test sets `svc.go` (bounded: no hello, no load, after 60 s).
GATED = """
ctx.set('svc.starting', {version!r})
for _ in range(6000):
    if ctx.get('svc.go'):
        break
    time.sleep(0.01)
"""


def svc(version: str, *, on_load: str = "", extra_hooks: dict[str, tuple[int, str]] | None = None,
        on_unload: str = "") -> dict[str, str]:
    hooks = {"on_request": (0, ANSWER.format(version=version)), **(extra_hooks or {})}
    return plugin_source("svc", hooks, version=version, on_load=on_load, on_unload=on_unload)


def upgrade(daemon: RunningDaemon, name: str = "svc", version: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"plugin_name": name}
    if version is not None:
        body["version"] = version
    with httpx.Client(base_url=daemon.url, headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=120.0) as c:
        return c.post("/api/plugins/upgrade", json=body)


@contextlib.contextmanager
def gated_upgrade(daemon: RunningDaemon) -> Iterator[list[httpx.Response]]:
    """Start an upgrade to a GATED new version in a thread; inside the block its on_load is running
    (the new instance exists, the switch has not happened); on leaving, the gate opens and the
    upgrade's reply lands in the yielded list."""
    reply: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: reply.append(upgrade(daemon)))
    thread.start()
    try:
        wait_for(lambda: daemon.api("GET", "/api/context/svc.starting").status_code == 200, 60,
                 "the new version's on_load")
        yield reply
    finally:
        daemon.api("PUT", "/api/context/svc.go", {"value": True})
        thread.join(120)


def answered_by(daemon: RunningDaemon) -> list[str]:
    result = daemon.call("on_request", {})
    assert result["success"], result
    versions: list[str] = result["data"]["answered"]
    return versions


def audit(daemon: RunningDaemon, event: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = daemon.api("GET", "/api/audit").json()["entries"]
    return [e for e in entries if e["event"] == event]


@dataclass
class Client:
    """One client calling `on_request` in a loop on its own connection, recording every answer."""

    url: str
    answers: list[tuple[bool, list[str]]] = field(default_factory=list)  # (sent after the switch?, versions)
    failures: list[str] = field(default_factory=list)
    switched: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"},
                          timeout=180.0) as c:
            while not self.stop.is_set():
                after = self.switched.is_set()
                try:
                    reply = c.post("/api/hooks/on_request/execute", json={"data": {}})
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                body = reply.json()
                if reply.status_code != 200 or not body.get("success"):
                    self.failures.append(reply.text)
                    continue
                with self.lock:
                    self.answers.append((after, body["data"].get("answered", [])))

    def count(self, *, after: bool) -> int:
        with self.lock:
            return sum(1 for a, _ in self.answers if a == after)


def test_calls_stream_through_the_upgrade_without_a_failure(ws: Workspace, daemon_factory: Factory) -> None:
    marks = ws.root / "marks"
    marks.mkdir()
    release, holding = marks / "release", marks / "holding"
    # `hold` keeps the old version busy until the test releases it: a call in flight at the switch.
    hold = f"""
open({str(holding)!r}, 'w').close()
for _ in range(6000):
    if os.path.exists({str(release)!r}):
        break
    time.sleep(0.01)
return '1.0.0'
"""
    # Calls queue behind `hold` in the old version (it serves in order): deadlines well above that.
    ws.extra_config = "[hooks]\ndefault_timeout_secs = 120\n"
    ws.add(svc("1.0.0", on_unload=f"open({str(marks / 'unloaded-1.0.0')!r}, 'w').close()",
               extra_hooks={"hold": (0, hold)}))
    daemon = daemon_factory(ws)
    old = daemon.plugin("svc")
    assert (old["version"], old["state"]) == ("1.0.0", "running")
    ws.add(svc("2.0.0"))  # dropped into the directory while 1.0.0 serves; no rescan needed

    clients = [Client(daemon.url) for _ in range(4)]
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    held: list[dict[str, Any]] = []
    upgraded: list[httpx.Response] = []
    holder = threading.Thread(target=lambda: held.append(daemon.call("hold", None, timeout_s=120)))
    upgrader = threading.Thread(target=lambda: upgraded.append(upgrade(daemon)))
    for t in threads:
        t.start()
    try:
        for c in clients:
            wait_for(lambda c=c: c.count(after=False) >= 5, 60, "calls answered before the upgrade")
        holder.start()
        wait_for(holding.exists, 60, "the held call to start")
        upgrader.start()
        # The switch: the new version answers while the old one still holds its calls (the
        # clients' calls queued behind `hold` among them).
        wait_for(lambda: daemon.plugin("svc")["version"] == "2.0.0", 60, "the switch")
        assert answered_by(daemon) == ["2.0.0"]
        assert alive(old["pid"]) and not upgraded, "the old version stopped before its calls ended"
        release.touch()
        upgrader.join(120)
        for c in clients:
            c.switched.set()
        assert upgraded and upgraded[0].status_code == 200, upgraded
        for c in clients:
            wait_for(lambda c=c: c.count(after=True) >= 5, 60, "calls answered after the upgrade")
    finally:
        release.touch()
        for c in clients:
            c.stop.set()
        for t in [*threads, holder, upgrader]:
            if t.ident is not None:
                t.join(120)

    body = upgraded[0].json()
    assert (body["success"], body["from_version"], body["to_version"]) == (True, "1.0.0", "2.0.0")
    assert body["old_pid"] == old["pid"] and body["pid"] != old["pid"]
    assert body["drained"] >= 1  # at least the held call
    for c in clients:
        assert not c.failures, c.failures
        # Each call was answered by exactly one version, ...
        assert all(len(versions) == 1 for _, versions in c.answers), c.answers
        sequence = [versions[0] for _, versions in c.answers]
        assert set(sequence) <= {"1.0.0", "2.0.0"}
        # ... one client's calls switch once and never go back, ...
        first_new = sequence.index("2.0.0") if "2.0.0" in sequence else len(sequence)
        assert set(sequence[first_new:]) == {"2.0.0"}, sequence
        # ... and every call made after the upgrade answered went to the new version only.
        assert {v[0] for after, v in c.answers if after} == {"2.0.0"}
    # The call in flight at the switch was finished by the old version, not dropped.
    assert held and held[0]["success"] and held[0]["data"] == "1.0.0", held

    # The old version ran its on_unload after draining, and is gone with its extracted tree; the
    # listing shows the new one.
    assert (marks / "unloaded-1.0.0").exists()
    assert not alive(old["pid"])
    extracted = sorted(p.name for p in (ws.root / "data" / "extracted").iterdir())
    # The new version's tree and its digest marker, nothing of the old one.
    assert len(extracted) == 2 and all(n.startswith("svc-2.0.0-") for n in extracted), extracted
    new = daemon.plugin("svc")
    assert (new["version"], new["state"], new["pid"]) == ("2.0.0", "running", body["pid"])
    assert "hold" not in new["hooks"] and daemon.call("hold", None)["results"] == []
    listed = {p["name"]: p for p in daemon.api("GET", "/api/plugins").json()}
    assert (listed["svc"]["version"], listed["svc"]["pid"]) == ("2.0.0", body["pid"])
    assert answered_by(daemon) == ["2.0.0"]
    assert daemon.stop() == 0


def ctl(daemon: RunningDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGIND_")}
    env["PLUGIND_API_TOKEN"] = TOKEN
    return subprocess.run(
        [sys.executable, "-m", "plugind", "ctl", "--url", daemon.url, *args],
        capture_output=True, text=True, env=env, timeout=180, cwd=daemon.ws.root,
    )


def test_ctl_upgrade_keeps_context_audits_and_survives_a_restart(
    ws: Workspace, daemon_factory: Factory
) -> None:
    ws.add(svc("1.0.0", on_load="ctx.set('svc.boot', 'set by 1.0.0')"))
    daemon = daemon_factory(ws)
    old_pid = daemon.plugin("svc")["pid"]
    assert daemon.api("PUT", "/api/context/svc.note", {"value": "from the operator"}).status_code == 200
    reads = "data['boot'] = ctx.get('svc.boot')\ndata['note'] = ctx.get('svc.note')\n"
    ws.add(plugin_source("svc", {"on_request": (0, reads + ANSWER.format(version="2.0.0"))},
                         version="2.0.0"))

    done = ctl(daemon, "upgrade", "svc")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("upgraded svc from 1.0.0 to 2.0.0 (pid "), done.stdout
    # The plugin's context keys carried over: the one its old version set, the one the operator set.
    result = daemon.call("on_request", {})
    assert (result["data"]["boot"], result["data"]["note"]) == ("set by 1.0.0", "from the operator")
    assert result["data"]["answered"] == ["2.0.0"]
    # The audit trail records the upgrade, with both versions and both pids.
    [entry] = audit(daemon, "upgrade")
    new_pid = daemon.plugin("svc")["pid"]
    assert (entry["plugin"], entry["from_version"], entry["to_version"]) == ("svc", "1.0.0", "2.0.0")
    assert (entry["old_pid"], entry["pid"]) == (old_pid, new_pid)
    # Nothing newer: refused, nothing changes, and the CLI says so in one line.
    again = ctl(daemon, "upgrade", "svc")
    assert again.returncode != 0
    assert "409" in again.stderr and "highest admitted version" in again.stderr, again.stderr
    assert daemon.plugin("svc")["pid"] == new_pid

    # The state file pins the version: a restart brings 2.0.0 back, although 3.0.0 is there now.
    state = read_state(ws.root / "data" / "loaded.json")  # the base and its journal
    assert (state.names, state.versions) == (["svc"], {"svc": "2.0.0"})
    ws.add(svc("3.0.0"))
    assert daemon.stop() == 0
    restarted = daemon_factory(ws)
    assert restarted.plugin("svc")["version"] == "2.0.0"
    assert answered_by(restarted) == ["2.0.0"]
    # An explicit rollback to a lower version is allowed when named; then an unload drops the pin.
    back = upgrade(restarted, version="1.0.0")
    assert back.status_code == 200, back.text
    assert answered_by(restarted) == ["1.0.0"]
    assert restarted.api("POST", "/api/plugins/unload", {"plugin_name": "svc"}).status_code == 200
    state = read_state(ws.root / "data" / "loaded.json")
    assert state.names == [] and state.versions == {}
    assert restarted.stop() == 0


def test_a_new_version_that_cannot_start_leaves_the_old_one_serving(
    ws: Workspace, daemon_factory: Factory
) -> None:
    ws.add(svc("1.0.0"))
    daemon = daemon_factory(ws)
    pid = daemon.plugin("svc")["pid"]

    def refused(status: int, label: str, words: str, version: str | None = None) -> None:
        reply = upgrade(daemon, version=version)
        assert reply.status_code == status, reply.text
        body = reply.json()
        assert (body["success"], body["error"]) == (False, label), body
        assert words in body["message"], body["message"]
        # The old version serves on, the same process.
        info = daemon.plugin("svc")
        assert (info["version"], info["pid"], info["state"]) == ("1.0.0", pid, "running")
        assert answered_by(daemon) == ["1.0.0"]

    refused(409, "up_to_date", "1.0.0 is already the highest admitted version")
    # on_load raises in the new version.
    ws.add(svc("2.0.0", on_load="raise RuntimeError('no database')"))
    refused(500, "on_load_failed", "no database")
    # Tampered after it was signed and trusted: 3.0.0 is skipped by the default choice (2.0.0, the
    # next admitted, fails as before) and refused when named.
    tampered = ws.add(svc("3.0.0"))
    tampered.write_bytes(tampered.read_bytes() + b"\0")
    refused(500, "on_load_failed", "no database")
    refused(403, "signature_invalid", "", version="3.0.0")
    # Signed by a configured key, but not on the trust list.
    ws.add(svc("4.0.0"), trust=False)
    refused(403, "untrusted", "4.0.0", version="4.0.0")
    # No such version; a version that is a path; a plugin that is not loaded.
    refused(404, "not_found", "no bundle of svc 9.9.9", version="9.9.9")
    bad = daemon.api("POST", "/api/plugins/upgrade", {"plugin_name": "svc", "version": "../x"})
    assert bad.status_code == 422, bad.text
    other = daemon.api("POST", "/api/plugins/upgrade", {"plugin_name": "nobody"})
    assert (other.status_code, other.json()["error"]) == (409, "not_loaded")

    failed = audit(daemon, "upgrade_failed")
    assert [e["reason"] for e in failed] == [
        "up_to_date", "on_load_failed", "on_load_failed", "signature_invalid", "untrusted", "not_found"
    ], failed
    assert "no database" in failed[1]["error"]
    assert not audit(daemon, "upgrade")
    # No child of a failed start is left: the daemon's tree holds the fork-server and svc 1.0.0 only.
    assert {p.pid for p in daemon.tree()} >= {pid}
    assert [p.pid for p in daemon.tree() if p.pid != pid and "forkserver" not in " ".join(p.cmdline())] == []
    assert daemon.stop() == 0


def test_a_second_upgrade_or_an_unload_during_an_upgrade_gets_409(
    ws: Workspace, daemon_factory: Factory
) -> None:
    ws.add(svc("1.0.0"))
    daemon = daemon_factory(ws)
    ws.add(svc("2.0.0", on_load=GATED.format(version="2.0.0")))
    with gated_upgrade(daemon) as first:
        # The old version serves while the new one starts; the listing says an upgrade runs.
        assert answered_by(daemon) == ["1.0.0"]
        info = daemon.plugin("svc")
        assert (info["version"], info["state"]) == ("1.0.0", "upgrading")
        second = upgrade(daemon)
        assert (second.status_code, second.json()["error"]) == (409, "busy"), second.text
        unload = daemon.api("POST", "/api/plugins/unload", {"plugin_name": "svc"})
        assert (unload.status_code, unload.json()["error"]) == (409, "busy"), unload.text
        assert "being upgraded" in unload.json()["message"]
    assert first and first[0].status_code == 200, first
    assert answered_by(daemon) == ["2.0.0"]
    assert daemon.api("POST", "/api/plugins/unload", {"plugin_name": "svc"}).status_code == 200
    assert daemon.stop() == 0


@pytest.mark.root
def test_sandboxed_upgrade_runs_two_instances_apart_and_cleans_both(
    ws: Workspace, daemon_factory: Factory
) -> None:
    session_parent()  # skips, saying why, on a host without cgroup controllers
    ws.sandboxing = True
    ws.add(svc("1.0.0"))
    daemon = daemon_factory(ws)
    assert daemon.cgroup is not None
    place = daemon.cgroup
    old_pid = daemon.plugin("svc")["pid"]
    old_groups = place.plugin_dirs("svc")
    assert old_groups, f"svc has no cgroup under {place.plugins}"
    ws.add(svc("2.0.0", on_load=GATED.format(version="2.0.0")))

    def instance_groups() -> list[str]:
        roots = {g.parent for g in old_groups}
        return sorted({d.name for r in roots if r.is_dir() for d in r.iterdir() if d.name.startswith("svc@")})

    with gated_upgrade(daemon) as first:
        # Both instances run at once, each in a cgroup of its own; the old one still serves.
        [instance] = instance_groups()
        assert all(g.is_dir() for g in old_groups)
        for group in old_groups:
            assert (group / "cgroup.procs").read_text().split() == [str(old_pid)]
            assert (group.parent / instance / "cgroup.procs").read_text().split(), "new one not in its group"
        assert answered_by(daemon) == ["1.0.0"]
    assert first and first[0].status_code == 200, first
    new_pid = first[0].json()["pid"]
    assert answered_by(daemon) == ["2.0.0"]
    # The old instance is gone with its cgroup; the new one lives in its own.
    assert not alive(old_pid)
    assert not [g for g in old_groups if g.exists()], "the old version's cgroup outlived it"
    new_groups = [g.parent / instance for g in old_groups]
    for group in new_groups:
        assert (group / "cgroup.procs").read_text().split() == [str(new_pid)]
    assert daemon.plugin("svc")["isolation"], "the new version runs without its sandbox"

    assert daemon.api("POST", "/api/plugins/unload", {"plugin_name": "svc"}).status_code == 200
    assert not alive(new_pid)
    assert not [g for g in new_groups if g.exists()], "the new version's cgroup outlived it"
    with open("/proc/self/mountinfo") as fh:
        assert str(ws.root) not in fh.read(), "a plugin's mount is visible on the host"
    assert daemon.stop() == 0
