"""Issue 9, rows 4 and 5: the state file (loaded.json, the operator's intent) and the API's answers
tell the truth. Row 4: the file system holding the state file is full (a real 256 KiB tmpfs, mounted
in a mount namespace only this test and its daemons live in), then unload and load: the unload
stands with a warning, the load is rolled back with a 503, and what a restart brings back is what
the answers said. Row 5: a truncated state file loads nothing on its behalf (least of all what the
operator unloaded), and the log, the audit trail and /ready say so."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaos_harness import TOKEN, HealthProbe, wait_for
from kit import plugin_source

from plugind.host import state as state_module
from plugind.host.state import decode_state, journal_path, read_state
from plugind.sandbox import _libc

CLONE_NEWNS = 0x00020000
NAMES = ("alpha", "bravo", "charlie", "delta")


def _add_plugins(ws: Any) -> None:
    for name in NAMES:
        ws.add(plugin_source(name, {"echo": (0, "return data")}))


def _running(d: Any) -> set[str]:
    return {n for n in NAMES if d.plugin(n)["state"] == "running"}


def _restart(daemon_factory: Any, ws: Any, **kw: Any) -> Any:
    """A daemon started again, ready whatever /ready says (start()'s own check of /ready would
    leave a daemon that failed it unreaped)."""
    d = daemon_factory(ws, wait_ready=False, **kw)
    wait_for(lambda: "READY=1" in d.notifications(5), 60, "the daemon's READY=1")
    return d


def _audit(ws: Any, event: str) -> list[dict[str, Any]]:
    lines = (ws.root / "data" / "audit.log").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == event]


class SmallDisk:
    """A 256 KiB tmpfs at `where`, in a mount namespace held by a process of ours (the host's mounts
    are never touched; the namespace and the tmpfs go when the holder ends). Daemons enter it
    before they exec; the test reaches its files through /proc/HOLDER/root."""

    def __init__(self, where: Path) -> None:
        where.mkdir()
        self.where = where
        script = f"mount -t tmpfs -o size=256k,mode=0755 plugind-chaos {where} && echo ready && exec cat"
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        assert self.holder.stdout is not None
        assert self.holder.stdout.readline() == b"ready\n", "could not mount the test's tmpfs"
        self._ns = os.open(f"/proc/{self.holder.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)

    def path(self, name: str) -> Path:
        """`name` on the small disk, as the test reaches it."""
        return Path(f"/proc/{self.holder.pid}/root{self.where}") / name

    def enter(self) -> None:
        """preexec_fn of a daemon: into the namespace (which resets the cwd: set it again)."""
        _libc.setns(self._ns, CLONE_NEWNS)
        os.chdir(self.where.parent)

    def fill(self) -> None:
        fd = os.open(self.path("filler"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for _ in range(1024):  # 256 KiB take 64 of these 4 KiB writes, at most
                os.write(fd, b"\0" * 4096)
            raise AssertionError("the test's tmpfs never filled up")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        finally:
            os.close(fd)

    def free(self) -> None:
        self.path("filler").unlink()

    def close(self) -> None:
        os.close(self._ns)
        assert self.holder.stdin is not None
        self.holder.stdin.close()
        self.holder.wait(10)


@pytest.fixture
def small_disk(ws: Any) -> Iterator[SmallDisk]:
    disk = SmallDisk(ws.root / "state")
    try:
        yield disk
    finally:
        disk.close()


@pytest.mark.root
def test_a_full_disk_never_makes_an_answer_lie(ws: Any, daemon_factory: Any, small_disk: SmallDisk) -> None:
    _add_plugins(ws)  # auto_load admits all three at the first start
    env = {"PLUGIND_PLUGINS__STATE_FILE": str(small_disk.where / "loaded.json")}
    d = daemon_factory(ws, env=env, preexec_fn=small_disk.enter)
    state = small_disk.path("loaded.json")
    assert _running(d) == set(NAMES)
    assert d.api("POST", "/api/plugins/unload", {"plugin_name": "charlie"}).status_code == 200
    assert read_state(state).names == ["alpha", "bravo", "delta"]
    bravo_pid = d.plugin("bravo")["pid"]
    # A change is one record appended to the journal: on a full tmpfs it still fits in the slack of
    # the journal's last page. Changes (charlie in and out) until the next record, bravo's
    # removal, does not: then it needs a page the full disk does not have.
    journal = small_disk.path("loaded.json.journal")
    for _ in range(64):
        chain = json.loads(journal.read_bytes().splitlines()[-1])["sha256"]
        record, _chain = state_module._records(chain, [{"op": "del", "name": "bravo"}])
        if 4096 - journal.stat().st_size % 4096 < len(record):
            break
        assert d.load("charlie").status_code == 200
        assert d.api("POST", "/api/plugins/unload", {"plugin_name": "charlie"}).status_code == 200
    else:
        raise AssertionError("the journal never came to the end of a page")
    assert read_state(state).names == ["alpha", "bravo", "delta"]

    small_disk.fill()
    with HealthProbe(d.url) as probe:
        # The unload happens and stands: 200 with a warning that says what a restart would do.
        reply = d.api("POST", "/api/plugins/unload", {"plugin_name": "bravo"})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["success"] is True and body["message"] == "unloaded bravo"
        assert "could not be written (No space left on device)" in body["warning"]
        assert "a restart would load bravo again" in body["warning"]
        assert d.plugin("bravo")["state"] != "running" and d.plugin("bravo")["pid"] is None
        assert not os.path.exists(f"/proc/{bravo_pid}")
        # `plugind ctl unload` passes the warning on.
        ctl_env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGIND_")}
        ctl = subprocess.run(
            [sys.executable, "-m", "plugind", "ctl", "--url", d.url, "unload", "delta"],
            capture_output=True, text=True, env={**ctl_env, "PLUGIND_API_TOKEN": TOKEN}, timeout=60,
        )
        assert ctl.returncode == 0 and ctl.stdout == "unloaded delta\n", ctl
        assert ctl.stderr.startswith("warning: the state file ") and "load delta again" in ctl.stderr

        # The load cannot be recorded: rolled back, and the answer says so.
        reply = d.load("charlie")
        assert reply.status_code == 503, reply.text
        assert "the load was rolled back and it is not running" in reply.json()["message"]
        assert d.plugin("charlie")["state"] != "running" and d.plugin("charlie")["pid"] is None
        assert _running(d) == {"alpha"}

        ready = d.api("GET", "/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert "could not be written (No space left on device)" in ready.json()["state"]
    probe.check()
    assert read_state(state).names == ["alpha", "bravo", "delta"]  # the old intent, whole
    assert [e["action"] for e in _audit(ws, "state")] == ["not saved"]

    # Room again: the shutdown writes what the operator last asked for, and a restart brings back
    # exactly that.
    small_disk.free()
    assert d.stop(signal.SIGTERM) == 0
    assert decode_state(state.read_bytes()) == ["alpha"]
    d2 = _restart(daemon_factory, ws, env=env, preexec_fn=small_disk.enter)
    assert _running(d2) == {"alpha"}
    assert d2.api("GET", "/ready").json() == {"ready": True, "status": "ready", "failed": {}}
    assert [e["action"] for e in _audit(ws, "state")] == ["not saved", "saved"]


@pytest.mark.root
def test_a_truncated_state_file_loads_nothing_and_says_so(ws: Any, daemon_factory: Any) -> None:
    _add_plugins(ws)
    d = daemon_factory(ws)
    assert _running(d) == set(NAMES)
    assert d.api("POST", "/api/plugins/unload", {"plugin_name": "charlie"}).status_code == 200
    assert d.stop(signal.SIGTERM) == 0
    state = ws.root / "data" / "loaded.json"
    whole = state.read_bytes()
    assert decode_state(whole) == ["alpha", "bravo", "delta"]
    state.write_bytes(whole[: len(whole) // 2])

    d2 = _restart(daemon_factory, ws)
    with HealthProbe(d2.url) as probe:
        assert _running(d2) == set()  # not charlie, unloaded before; nor anything else
        ready = d2.api("GET", "/ready")
        assert ready.status_code == 503  # nothing the operator wanted runs
        body = ready.json()
        assert body["status"] == "failed" and body["ready"] is False
        assert f"state file {state} is unreadable: not JSON" in body["state"]
        assert "no plugin was loaded on its behalf" in body["state"]
    probe.check()
    assert f"state file {state} is unreadable" in d2.log()
    (entry,) = _audit(ws, "state")
    assert entry["action"] == "loaded nothing" and "is unreadable" in entry["problem"]
    assert Path(f"{state}.unreadable").read_bytes() == whole[: len(whole) // 2]
    assert state.read_bytes() == whole[: len(whole) // 2]  # kept until the operator acts

    # The operator acts: the load writes a new, whole intent, and the daemon is ready again.
    assert d2.load("alpha").status_code == 200
    assert read_state(state).names == ["alpha"]
    assert d2.api("GET", "/ready").json() == {"ready": True, "status": "ready", "failed": {}}


def _killed_with_a_journal(ws: Any, daemon_factory: Any) -> tuple[Path, bytes]:
    """A daemon that loaded all four, unloaded charlie (a journal record), and was SIGKILLed: no
    clean stop folded the journal in. The state file's journal, as the kill left it."""
    _add_plugins(ws)
    d = daemon_factory(ws)
    assert _running(d) == set(NAMES)
    assert d.api("POST", "/api/plugins/unload", {"plugin_name": "charlie"}).status_code == 200
    d.proc.kill()
    d.proc.wait(10)
    state = ws.root / "data" / "loaded.json"
    journal = journal_path(state)
    assert decode_state(state.read_bytes()) == list(NAMES)  # the base: before the unload
    assert read_state(state).names == ["alpha", "bravo", "delta"]  # the base and its journal
    return state, journal.read_bytes()


@pytest.mark.root
def test_a_crash_restart_restores_the_journaled_intent(ws: Any, daemon_factory: Any) -> None:
    _killed_with_a_journal(ws, daemon_factory)
    d2 = _restart(daemon_factory, ws)
    assert _running(d2) == {"alpha", "bravo", "delta"}  # not charlie, unloaded before the crash
    assert d2.api("GET", "/ready").json() == {"ready": True, "status": "ready", "failed": {}}


@pytest.mark.root
def test_an_append_a_crash_cut_short_is_dropped_and_the_state_before_it_loads(
    ws: Any, daemon_factory: Any
) -> None:
    # A crash in the middle of an append (power lost before the fdatasync returned) leaves an
    # unterminated last record: its unload was never acknowledged, so the state before it holds.
    # Loading nothing here would turn every badly timed power cut into an outage.
    state, journal = _killed_with_a_journal(ws, daemon_factory)
    journal_path(state).write_bytes(journal[:-5])
    d2 = _restart(daemon_factory, ws)
    assert _running(d2) == set(NAMES)  # charlie too: its unload is the record cut short
    assert d2.api("GET", "/ready").json() == {"ready": True, "status": "ready", "failed": {}}
    assert "ends in a part-written record" in d2.log()
    assert not _audit(ws, "state")
    assert d2.api("POST", "/api/plugins/unload", {"plugin_name": "bravo"}).status_code == 200
    assert journal_path(state).read_bytes().endswith(b"\n")  # the next write left it whole again
    assert read_state(state).names == ["alpha", "charlie", "delta"]


@pytest.mark.root
def test_a_garbled_journal_loads_nothing_and_says_so(ws: Any, daemon_factory: Any) -> None:
    state, journal = _killed_with_a_journal(ws, daemon_factory)
    bad = journal.replace(b'"charlie"', b'"charlid"')
    assert bad != journal
    journal_path(state).write_bytes(bad)

    d2 = _restart(daemon_factory, ws)
    with HealthProbe(d2.url) as probe:
        assert _running(d2) == set()  # nothing: not charlie, nor anything else
        ready = d2.api("GET", "/ready")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "failed" and body["ready"] is False
        assert f"state file {state} is unreadable: its journal {journal_path(state)}" in body["state"]
        assert "no plugin was loaded on its behalf" in body["state"]
    probe.check()
    (entry,) = _audit(ws, "state")
    assert entry["action"] == "loaded nothing" and "is unreadable" in entry["problem"]
    assert Path(f"{journal_path(state)}.unreadable").read_bytes() == bad
    assert journal_path(state).read_bytes() == bad  # kept until the operator acts
    assert d2.load("alpha").status_code == 200
    assert read_state(state).names == ["alpha"]
