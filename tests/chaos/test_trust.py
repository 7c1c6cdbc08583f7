"""Trust against an attacker who can write `data/`, each against a real daemon (`plugind serve`):

- the extracted tree edited, then unload+load or a crash restart: the edited code never runs;
- the trust list rolled back to a copy from before `plugind trust remove`: refused by the daemon and
  by the CLI; an expired list: refused;
- no or a malformed PLUGIN_TRUST_KEY: `plugind serve` exits non-zero with one line (fail closed);
  `plugind trust genkey` makes a key serve accepts;
- security.min_trust_level applied alike to auto-load, explicit load and restart, for each level.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from chaos_harness import HealthProbe, free_port, wait_for
from kit import Workspace, plugin_source

from plugind.trust import remove_trusted_plugin

ORIGINAL = 'return "original"'


def victim(name: str = "victim") -> dict[str, str]:
    return plugin_source(name, {f"{name}_who": (0, ORIGINAL)})


def who(d: Any, name: str = "victim") -> Any:
    return d.call(f"{name}_who", {})["results"][0]["output"]


def tamper(ws: Workspace, name: str = "victim") -> Path:
    """Edit the plugin's code in data/extracted, as someone with write access to data/ can."""
    trees = [p for p in (ws.root / "data" / "extracted").glob(f"{name}-1.0.0-*") if p.is_dir()]
    assert len(trees) == 1, trees
    source = trees[0] / f"{name}.py"
    os.chmod(trees[0], 0o755)
    os.chmod(source, 0o644)
    source.write_text(source.read_text().replace(ORIGINAL, 'return "pwned"'))
    return source


def cli(ws: Workspace, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGIND_")}
    env["PLUGIN_TRUST_KEY"] = key if key is not None else ws.trust_key_hex
    return subprocess.run(
        [sys.executable, "-m", "plugind", *args, "--config", str(ws.root / "config.toml")],
        capture_output=True, text=True, env=env, timeout=60, cwd=ws.root,
    )


def serve(ws: Workspace, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`plugind serve` expected to refuse to start (bounded: a daemon that starts is killed)."""
    config = ws.write_config(listen=f"127.0.0.1:{free_port()}")
    full = {k: v for k, v in os.environ.items() if not k.startswith("PLUGIND_") and k != "PLUGIN_TRUST_KEY"}
    full.update({"PLUGIND_API_TOKEN": "t" * 32, **env})
    return subprocess.run(
        [sys.executable, "-m", "plugind", "serve", "--config", str(config)],
        capture_output=True, text=True, env=full, timeout=60, cwd=ws.root,
    )


# --- row 8: verify-then-run on every start ----------------------------------------------------------


def test_an_edited_tree_does_not_run_after_unload_and_load(ws: Workspace, daemon_factory: Any) -> None:
    ws.add(victim())
    d = daemon_factory(ws)
    with HealthProbe(d.url) as probe:
        before = d.plugin("victim")
        assert who(d) == "original"
        tamper(ws)
        assert d.api("POST", "/api/plugins/unload", {"plugin_name": "victim"}).status_code == 200
        assert d.load("victim").status_code == 200
        assert who(d) == "original"  # re-extracted from the verified bundle, not the edited tree
        after = d.plugin("victim")
        assert (after["trust_level"], after["hash"]) == ("trusted", before["hash"])
    probe.check()


def test_an_edited_tree_does_not_run_after_a_crash_restart(ws: Workspace, daemon_factory: Any) -> None:
    ws.add(victim())
    d = daemon_factory(ws)
    with HealthProbe(d.url) as probe:
        assert who(d) == "original"
        for edit in (False, True):
            pid = d.plugin("victim")["pid"]
            if edit:
                tamper(ws)
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda pid=pid: d.plugin("victim")["state"] == "running"
                     and d.plugin("victim")["pid"] != pid, timeout=30, what="the restart")
            assert who(d) == "original"
            # An untouched tree (nothing written into it by the plugin itself) is not re-extracted;
            # the edited one is, for its first difference: the directory opened for the edit.
            changed = "the extracted tree of victim 1.0.0 was changed (.: directory mode 755, not 555)"
            assert (changed in d.log()) is edit
        assert "re-extracting it from the verified bundle" in d.log()
    probe.check()


# --- row 9: rollback and freeze protection ----------------------------------------------------------


def test_a_rolled_back_trust_list_is_refused_by_daemon_and_cli(ws: Workspace, daemon_factory: Any) -> None:
    ws.add(victim())
    d = daemon_factory(ws)
    with HealthProbe(d.url) as probe:
        saved = ws.root / "trust.list.saved"
        shutil.copy2(ws.trust_list, saved)
        removed = cli(ws, "trust", "remove", "victim")
        assert removed.returncode == 0, removed.stderr
        shutil.copy2(saved, ws.trust_list)  # the attacker puts the old copy back
        assert d.api("POST", "/api/plugins/unload", {"plugin_name": "victim"}).status_code == 200
        reply = d.load("victim")
        assert reply.status_code == 403, reply.text
        assert "older than generation" in reply.text and "rolled-back" in reply.text
        assert d.plugin("victim")["state"] != "running"
    probe.check()
    listed = cli(ws, "trust", "list")
    assert listed.returncode == 1
    assert listed.stderr.count("\n") == 1 and "older than generation" in listed.stderr
    added = cli(ws, "trust", "add", str(ws.plugins / "victim-1.0.0.plugin"))
    assert added.returncode == 1 and "rolled-back" in added.stderr


def test_a_rolled_back_list_is_refused_at_start(ws: Workspace, daemon_factory: Any) -> None:
    ws.add(victim())
    saved = ws.trust_list.read_bytes()
    d = daemon_factory(ws)  # reads (and records) the current generation
    d.stop()
    assert cli(ws, "trust", "remove", "victim").returncode == 0
    ws.trust_list.write_bytes(saved)
    out = serve(ws, {"PLUGIN_TRUST_KEY": ws.trust_key_hex})
    assert out.returncode == 1
    assert "older than generation" in out.stderr, out.stderr


def test_an_expired_trust_list_is_refused_until_renewed(ws: Workspace, daemon_factory: Any) -> None:
    from plugind.trust.trustlist import encrypt_and_save_trust_list, load_trust_document

    ws.add(victim())
    d = daemon_factory(ws)
    with HealthProbe(d.url) as probe:
        doc = load_trust_document(ws.trust_list, ws.trust_key)
        encrypt_and_save_trust_list(doc.entries, ws.trust_list, ws.trust_key,
                                    generation=doc.generation + 1, valid_until=int(time.time()) - 60)
        assert d.api("POST", "/api/plugins/unload", {"plugin_name": "victim"}).status_code == 200
        reply = d.load("victim")
        assert reply.status_code == 403 and "trust list expired at" in reply.text, reply.text
        renewed = cli(ws, "trust", "renew", "--valid-for", "1d")
        assert renewed.returncode == 0, renewed.stderr
        assert d.load("victim").status_code == 200
        assert who(d) == "original"
    probe.check()


# --- issue 11 item 1: fail closed without the trust key ---------------------------------------------


@pytest.mark.parametrize("value", [None, "", "abc", "g" * 64], ids=["unset", "empty", "short", "nonhex"])
def test_serve_refuses_to_start_without_a_valid_trust_key(ws: Workspace, value: str | None) -> None:
    out = serve(ws, {} if value is None else {"PLUGIN_TRUST_KEY": value})
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("plugind: error: PLUGIN_TRUST_KEY is ")
    assert "plugind trust genkey" in lines[0]
    if value:
        assert value not in lines[0]  # never echoes the key


def test_genkey_makes_a_key_serve_accepts(tmp_path: Path, daemon_factory: Any) -> None:
    out = subprocess.run([sys.executable, "-m", "plugind", "trust", "genkey"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stderr == ""
    key = out.stdout.strip()
    assert len(key) == 64 and int(key, 16) >= 0
    ws = Workspace(tmp_path, trust_key=bytes.fromhex(key))
    ws.add(victim())
    d = daemon_factory(ws)
    assert who(d) == "original"


def test_signed_level_runs_without_a_trust_key(ws: Workspace, daemon_factory: Any) -> None:
    ws.add(victim(), trust=False)
    d = daemon_factory(ws, env={"PLUGIN_TRUST_KEY": "", "PLUGIND_SECURITY__MIN_TRUST_LEVEL": "signed"})
    info = d.plugin("victim")
    assert (info["trust_level"], info["state"]) == ("signed", "running")


# --- issue 11 item 5: one rule for auto-load, explicit load and restart -----------------------------

ADMITS = {
    "trusted": {"t"},
    "signed": {"t", "s"},
    "untrusted": {"t", "s", "u"},
}


@pytest.mark.parametrize("level", list(ADMITS))
def test_min_trust_level_is_one_rule_for_auto_load_load_and_restart(
    ws: Workspace, daemon_factory: Any, level: str
) -> None:
    ws.add(victim("t"))
    ws.add(victim("s"), trust=False)
    ws.add(victim("u"), sign=False, trust=False)
    d = daemon_factory(ws, env={"PLUGIND_SECURITY__MIN_TRUST_LEVEL": level})
    admitted = ADMITS[level]
    # auto-load
    running = {n for n in "tsu" if d.plugin(n)["state"] == "running"}
    assert running == admitted
    # explicit load
    for name in "tsu":
        if name in admitted:
            assert d.api("POST", "/api/plugins/unload", {"plugin_name": name}).status_code == 200
        reply = d.load(name)
        assert reply.status_code == (200 if name in admitted else 403), (name, reply.text)
        if name not in admitted:
            assert f"security.min_trust_level is {level!r}" in reply.text
    # restart: "t" loses its trust-list entry (it is now `signed`), then crashes
    remove_trusted_plugin(ws.trust_list, ws.trust_key, "t")
    pid = d.plugin("t")["pid"]
    os.kill(pid, signal.SIGKILL)
    if level == "trusted":
        wait_for(lambda: "restart of plugin t failed" in d.log(), timeout=30, what="a refused restart")
        assert "t 1.0.0 is signed and security.min_trust_level is 'trusted'" in d.log()
        assert d.plugin("t")["state"] != "running"
    else:
        wait_for(lambda: d.plugin("t")["state"] == "running" and d.plugin("t")["pid"] != pid,
                 timeout=30, what="the restart")
        assert who(d, "t") == "original"
