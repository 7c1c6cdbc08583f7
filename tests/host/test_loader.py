"""PluginLoader: verify once, policy, read-only tree under NAME-VERSION-<digest prefix>, reuse."""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path

import pytest
from integration.kit import Workspace, plugin_source

from plugind import fsio
from plugind.errors import BundleError, LoadError, SignatureInvalid, TrustListError, UntrustedPlugin
from plugind.host import loader as loader_module
from plugind.host.loader import DIGEST_PREFIX, PluginLoader
from plugind.trust import PluginSecurity, PrivateKey, remove_trusted_plugin, signature_path, signed_message
from plugind.trust.freshness import TrustListGuard
from plugind.trust.security import SecuritySource
from plugind.trust.trustlist import TRUST_KEY_ENV


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def loader_for(ws: Workspace) -> PluginLoader:
    settings = ws.settings()
    return PluginLoader(
        settings,
        PluginSecurity.from_settings(settings, ws.trust_key_hex),
        refresh=lambda: PluginSecurity.from_settings(settings, ws.trust_key_hex),
    )


def test_extracts_read_only_tree_named_by_digest(ws: Workspace) -> None:
    bundle = ws.add(plugin_source("echo", {"h": (0, "return data")}))
    loaded = loader_for(ws).load(bundle, expected_name="echo")
    vb = loaded.bundle
    assert loaded.tree == ws.root / "data" / "extracted" / f"echo-1.0.0-{vb.digest[:DIGEST_PREFIX]}"
    assert not loaded.reused
    assert (loaded.tree / "echo.py").read_text().startswith("import os")
    assert stat.S_IMODE(os.stat(loaded.tree / "echo.py").st_mode) == 0o444
    assert stat.S_IMODE(os.stat(loaded.tree).st_mode) == 0o555
    marker = loaded.tree.with_name(loaded.tree.name + ".digest")
    assert marker.read_text().strip() == vb.digest


def test_reuses_tree_only_for_same_digest(ws: Workspace) -> None:
    bundle = ws.add(plugin_source("echo", {"h": (0, "return data")}))
    loader = loader_for(ws)
    first = loader.load(bundle)
    again = loader.load(bundle)
    assert again.reused and again.tree == first.tree
    # Same name, version and digest prefix directory, but a marker naming another digest: redone.
    marker = first.tree.with_name(first.tree.name + ".digest")
    marker.write_text("0" * 128 + "\n")
    redone = loader.load(bundle)
    assert not redone.reused
    assert marker.read_text().strip() == first.bundle.digest


def test_a_tree_without_marker_is_not_trusted(ws: Workspace) -> None:
    bundle = ws.add(plugin_source("echo", {"h": (0, "return data")}))
    loader = loader_for(ws)
    first = loader.load(bundle)
    first.tree.with_name(first.tree.name + ".digest").unlink()
    os.chmod(first.tree, 0o755)
    (first.tree / "planted.py").write_text("evil = True\n")
    redone = loader.load(bundle)
    assert not redone.reused
    assert not (redone.tree / "planted.py").exists()


def test_unsigned_is_refused_before_extraction(ws: Workspace) -> None:
    bundle = ws.add(plugin_source("nosig", {"h": (0, "return data")}), sign=False, trust=False)
    expected = "nosig 1.0.0 is untrusted and security.min_trust_level is 'trusted'"
    with pytest.raises(UntrustedPlugin, match=re.escape(expected)):
        loader_for(ws).load(bundle)
    assert not (ws.root / "data" / "extracted").exists()


def test_signed_not_listed_is_refused(ws: Workspace) -> None:
    bundle = ws.add(plugin_source("unlisted", {"h": (0, "return data")}), trust=False)
    with pytest.raises(UntrustedPlugin, match=re.escape("unlisted 1.0.0 is signed")) as info:
        loader_for(ws).load(bundle)
    assert info.value.level == "signed"


def test_tampered_bundle_is_refused(ws: Workspace) -> None:
    bundle = ws.add(plugin_source("tampered", {"h": (0, "return data")}))
    data = bytearray(bundle.read_bytes())
    data[40] ^= 0xFF
    bundle.write_bytes(bytes(data))
    with pytest.raises(SignatureInvalid, match=re.escape("tampered-1.0.0.plugin")):
        loader_for(ws).load(bundle)


def test_bundle_of_another_plugin_is_refused(ws: Workspace) -> None:
    bundle = ws.add(plugin_source("real", {"h": (0, "return data")}))
    with pytest.raises(BundleError, match="contains plugin 'real', not 'fake'"):
        loader_for(ws).load(bundle, expected_name="fake")


def test_trust_list_is_re_read_on_each_load(ws: Workspace) -> None:
    bundle = ws.add(plugin_source("revoked", {"h": (0, "return data")}))
    settings = ws.settings()

    def security() -> PluginSecurity:
        return PluginSecurity.from_settings(settings, ws.trust_key_hex)

    loader = PluginLoader(settings, security(), refresh=security)
    assert loader.load(bundle).bundle.trust_level == "trusted"
    remove_trusted_plugin(ws.trust_list, ws.trust_key, "revoked")
    with pytest.raises(UntrustedPlugin, match=re.escape("revoked 1.0.0 is signed")):
        loader.load(bundle)
    # A damaged trust list fails closed: no load at all.
    ws.trust_list.write_bytes(ws.trust_list.read_bytes()[:-1])
    with pytest.raises(TrustListError):
        loader.load(bundle)


def test_an_edited_tree_with_its_marker_is_re_extracted(ws: Workspace) -> None:
    bundle = ws.add(plugin_source("echo", {"h": (0, "return data")}))
    loader = loader_for(ws)
    first = loader.load(bundle)
    os.chmod(first.tree, 0o755)
    os.chmod(first.tree / "echo.py", 0o644)
    (first.tree / "echo.py").write_text("evil = True\n")  # the marker still names the right digest
    again = loader.load(bundle)
    assert not again.reused
    assert (again.tree / "echo.py").read_text().startswith("import os")
    # A tree this loader did not extract (another process, an earlier daemon) is never reused.
    assert not loader_for(ws).load(bundle).reused


def test_ensure_restores_the_tree_before_a_restart(ws: Workspace) -> None:
    bundle = ws.add(plugin_source("echo", {"h": (0, "return data")}))
    loader = loader_for(ws)
    loaded = loader.load(bundle)
    loader.ensure(loaded, recheck=True)  # unchanged: nothing to do
    os.chmod(loaded.tree, 0o755)
    (loaded.tree / "planted.py").write_text("evil = True\n")
    loader.ensure(loaded, recheck=True)
    assert not (loaded.tree / "planted.py").exists()
    # The bundle no longer listed: a restart is refused under min_trust_level "trusted".
    remove_trusted_plugin(ws.trust_list, ws.trust_key, "echo")
    with pytest.raises(UntrustedPlugin, match=r"is signed and security\.min_trust_level is 'trusted'"):
        loader.ensure(loaded, recheck=True)


def test_ensure_refuses_a_restart_when_the_bundle_changed_or_went(ws: Workspace) -> None:
    bundle = ws.add(plugin_source("echo", {"h": (0, "return data")}))
    loader = loader_for(ws)
    loaded = loader.load(bundle)
    ws.add(plugin_source("echo", {"h": (0, "return 'other'")}))  # same name and version, new bytes
    with pytest.raises(LoadError, match=r"the bundle of echo changed since it was loaded") as info:
        loader.ensure(loaded, recheck=True)
    assert info.value.reason == "bundle_changed"
    bundle.unlink()
    with pytest.raises(LoadError, match=r"cannot re-verify echo before restarting it") as info:
        loader.ensure(loaded, recheck=True)
    assert info.value.reason == "bundle_missing"


def test_a_bundle_that_cannot_be_read_is_that_bundles_failure(ws: Workspace) -> None:
    # Gone between the scan and the load, or unreadable: a refusal of this bundle (a PluginError the
    # registry records for it), not an OSError that start-up takes for a bug and stops on.
    bundle = ws.add(plugin_source("echo", {"h": (0, "return data")}))
    loader = loader_for(ws)
    bundle.unlink()
    with pytest.raises(BundleError, match=r"^echo-1.0.0.plugin: cannot be read: No such file or directory$"):
        loader.load(bundle, expected_name="echo")


def test_a_world_writable_extract_dir_is_reported(ws: Workspace, caplog: pytest.LogCaptureFixture) -> None:
    bundle = ws.add(plugin_source("echo", {"h": (0, "return data")}))
    (ws.root / "data" / "extracted").mkdir(parents=True)
    os.chmod(ws.root / "data" / "extracted", 0o777)
    with caplog.at_level("WARNING", logger="plugind.host.loader"):
        loader_for(ws).load(bundle)
    assert "is writable by group or others (mode 777)" in caplog.text


def test_a_bundle_verified_before_is_checked_again_after_any_change(ws: Workspace) -> None:
    # What inspecting an unchanged bundle found is reused (keyed by its digest), never what a
    # changed one would need: each load reads the file again and checks its signature, its trust
    # entry and the policy; new bytes are inspected afresh.
    bundle = ws.add(plugin_source("echo", {"h": (0, "return data")}))
    loader = loader_for(ws)
    first = loader.load(bundle, expected_name="echo")
    again = loader.load(bundle, expected_name="echo")
    assert again.bundle.digest == first.bundle.digest and again.bundle.manifest == first.bundle.manifest
    good = bundle.read_bytes()
    # Tampered after a good load: refused, though the same name and path loaded just before.
    data = bytearray(good)
    data[40] ^= 0xFF
    bundle.write_bytes(bytes(data))
    with pytest.raises(SignatureInvalid):
        loader.load(bundle, expected_name="echo")
    # Its trust entry removed: refused though the very bytes verified a moment ago.
    bundle.write_bytes(good)
    remove_trusted_plugin(ws.trust_list, ws.trust_key, "echo", "1.0.0")
    with pytest.raises(UntrustedPlugin):
        loader.load(bundle, expected_name="echo")
    # Rebuilt as another version, signed and trusted: the new manifest, not the remembered one.
    rebuilt = ws.add(plugin_source("echo", {"h": (0, "return data")}, version="2.0.0"))
    assert loader.load(rebuilt, expected_name="echo").bundle.manifest.version == "2.0.0"


def test_tighter_bundle_limits_refuse_a_bundle_inspected_under_looser_ones(ws: Workspace) -> None:
    bundle = ws.add(plugin_source("echo", {"h": (0, "return data")}))
    loader_for(ws).load(bundle, expected_name="echo")
    settings = ws.settings()
    settings.plugins.max_files = 1
    tight = PluginLoader(settings, PluginSecurity.from_settings(settings, ws.trust_key_hex))
    with pytest.raises(BundleError, match="over the limit of 1"):
        tight.verify(bundle)  # the inspection itself, before any extraction


def _next_tick(path: Path) -> None:
    # A write in the same coarse clock tick as the last change may keep its ctime: wait one out (a
    # wait for the clock, not a timing assertion).
    changed = os.stat(path).st_ctime_ns
    while time.time_ns() < changed + 20_000_000:
        time.sleep(0.005)


def _rewrite_in_place(path: Path, data: bytes) -> None:
    # Same inode, and the old atime and mtime put back: only the ctime (and the bytes) differ.
    before = os.stat(path)
    _next_tick(path)
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _source_loader(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> PluginLoader:
    # As the daemon builds it: one SecuritySource, whose PluginSecurity stays the same object
    # while the trust list, the key and the settings do.
    monkeypatch.setenv(TRUST_KEY_ENV, ws.trust_key_hex)
    settings = ws.settings()
    source = SecuritySource(settings, guard=TrustListGuard(settings.security.trust_state_file))
    return PluginLoader(settings, source(), refresh=source)


def _echo_and_loader(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, settle_s: float
) -> tuple[Path, PluginLoader]:
    # An echo bundle and a loader as the daemon's, with `settle_s` as fsio.SETTLE_S.
    monkeypatch.setattr(fsio, "SETTLE_S", settle_s)
    bundle = ws.add(plugin_source("echo", {"h": (0, "return data")}))
    return bundle, _source_loader(ws, monkeypatch)


def test_a_verdict_is_kept_only_for_a_bundle_that_has_settled(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, loader = _echo_and_loader(ws, monkeypatch, 0.5)
    _wait_until_older(ws.trust_list, 0.6)  # the trust list has settled: one security throughout
    _rewrite_in_place(bundle, bundle.read_bytes())  # the bundle has not
    loader.refresh_trust()
    security = loader._security
    first = loader.load(bundle, expected_name="echo").bundle
    assert loader.load(bundle, expected_name="echo").bundle is not first  # changed moments ago
    _wait_until_older(bundle, 0.6)
    kept = loader.load(bundle, expected_name="echo").bundle
    assert loader.load(bundle, expected_name="echo").bundle is kept
    assert loader.verify(bundle) is kept
    assert loader.verify(bundle, fresh=True) is not kept  # a restart's re-verification
    assert loader._security is security


def _wait_until_older(path: Path, seconds: float) -> None:
    # Waiting for the clock (not a timing assertion): until `path` last changed `seconds` ago.
    changed = max(os.stat(path).st_ctime_ns, os.stat(signature_path(path)).st_ctime_ns
                  if signature_path(path).exists() else 0)
    while time.time_ns() < changed + int(seconds * 1e9):
        time.sleep(0.02)


def test_any_change_after_a_kept_verdict_is_verified_again(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, loader = _echo_and_loader(ws, monkeypatch, 0.0)
    kept = loader.load(bundle, expected_name="echo").bundle
    assert loader.load(bundle, expected_name="echo").bundle is kept
    good = bundle.read_bytes()

    # Tampered in place: same inode, size and mtime as the verified file.
    data = bytearray(good)
    data[40] ^= 0xFF
    _rewrite_in_place(bundle, bytes(data))
    with pytest.raises(SignatureInvalid):
        loader.load(bundle, expected_name="echo")
    _rewrite_in_place(bundle, good)
    again = loader.load(bundle, expected_name="echo").bundle
    assert again is not kept and again.digest == kept.digest

    # Its signature replaced by another key's, in place and of the same length.
    sig = signature_path(bundle)
    other = PrivateKey.generate().sign(signed_message(kept.digest)).hex + "\n"
    good_sig = sig.read_bytes()
    assert len(other) == len(good_sig)
    _rewrite_in_place(sig, other.encode())
    with pytest.raises(SignatureInvalid):
        loader.load(bundle, expected_name="echo")
    _rewrite_in_place(sig, good_sig)
    assert loader.load(bundle, expected_name="echo").bundle.digest == kept.digest

    # Its trust entry removed: the trust list changed, so the same bytes are judged again.
    remove_trusted_plugin(ws.trust_list, ws.trust_key, "echo", "1.0.0")
    with pytest.raises(UntrustedPlugin, match=re.escape("echo 1.0.0 is signed")):
        loader.load(bundle, expected_name="echo")


def test_kept_verdicts_are_bounded_in_bytes(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fsio, "SETTLE_S", 0.0)
    a = ws.add(plugin_source("aaa", {"h": (0, "return data")}))
    b = ws.add(plugin_source("bbb", {"h": (0, "return data")}))
    loader = _source_loader(ws, monkeypatch)
    kept_a = loader.verify(a)
    assert loader.verify(a) is kept_a
    monkeypatch.setattr(loader_module, "VERIFIED_MAX_TOTAL", len(kept_a.data) + 10)
    kept_b = loader.verify(b)
    assert loader.verify(b) is kept_b
    assert loader.verify(a) is not kept_a  # the oldest went to make room
    assert loader._verified_bytes == len(loader.verify(a).data)


def test_load_kept_answers_by_stats_only_for_an_unchanged_plugin_loaded_before(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plugind.trust import tree as tree_module

    bundle, loader = _echo_and_loader(ws, monkeypatch, 0.0)
    assert loader.load_kept(bundle, expected_name="echo") is None  # nothing kept yet
    first = loader.load(bundle, expected_name="echo")  # verified and extracted
    assert loader.load_kept(bundle, expected_name="echo") is None  # the tree not read back yet
    again = loader.load(bundle, expected_name="echo")  # read back: its files found to match

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_kept read a file or verified a bundle")

    source = loader._refresh
    assert isinstance(source, SecuritySource)
    reads = source.reads
    with monkeypatch.context() as patched:
        patched.setattr(tree_module, "_sha256", never)
        patched.setattr(loader, "verify", never)
        kept = loader.load_kept(bundle, expected_name="echo")
        assert kept == again and kept is not None and kept.tree == first.tree and kept.reused
        assert loader.load_kept(bundle, expected_name="other") is None  # load refuses it: not here
    assert source.reads == reads  # nor the trust list

    # Any change of the tree, the bundle or the trust list: None, and `load` does the work.
    tree_file = first.tree / "echo.py"
    _next_tick(tree_file)
    os.chmod(tree_file, 0o444)  # the same mode: only its ctime changes
    assert loader.load_kept(bundle, expected_name="echo") is None
    loader.load(bundle, expected_name="echo")
    assert loader.load_kept(bundle, expected_name="echo") is not None
    planted = first.tree / "extra.py"
    os.chmod(first.tree, 0o755)
    planted.write_text("x = 1\n")
    assert loader.load_kept(bundle, expected_name="echo") is None
    assert not loader.load(bundle, expected_name="echo").reused and not planted.exists()
    loader.load(bundle, expected_name="echo")
    assert loader.load_kept(bundle, expected_name="echo") is not None
    _rewrite_in_place(bundle, bundle.read_bytes())
    assert loader.load_kept(bundle, expected_name="echo") is None
    loader.load(bundle, expected_name="echo")
    assert loader.load_kept(bundle, expected_name="echo") is not None
    remove_trusted_plugin(ws.trust_list, ws.trust_key, "echo", "1.0.0")
    assert loader.load_kept(bundle, expected_name="echo") is None
    with pytest.raises(UntrustedPlugin):
        loader.load(bundle, expected_name="echo")
    assert loader.load_kept(bundle, expected_name="echo") is None


def test_load_kept_of_a_plugin_never_loaded_asks_nothing(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A first load (1,000 of them when a daemon fills up) has nothing kept to check: the answer is
    # None before the trust list is as much as looked at, and `load` does everything as before.
    bundle, loader = _echo_and_loader(ws, monkeypatch, 0.0)
    source = loader._refresh
    assert isinstance(source, SecuritySource)

    def never() -> None:
        raise AssertionError("load_kept asked for the trust list on a first load")

    with monkeypatch.context() as patched:
        patched.setattr(source, "kept", never)
        patched.setattr(loader_module, "file_identity", never)
        assert loader.load_kept(bundle, expected_name="echo") is None
    assert not loader.load(bundle, expected_name="echo").reused


def test_load_kept_leaves_a_large_tree_to_load(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle, loader = _echo_and_loader(ws, monkeypatch, 0.0)
    loader.load(bundle, expected_name="echo")
    loader.load(bundle, expected_name="echo")
    assert loader.load_kept(bundle, expected_name="echo") is not None
    monkeypatch.setattr(loader_module, "KEPT_TREE_FILES", 0)  # every tree is larger
    assert loader.load_kept(bundle, expected_name="echo") is None


def test_load_kept_forgets_a_discarded_tree(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle, loader = _echo_and_loader(ws, monkeypatch, 0.0)
    loader.load(bundle, expected_name="echo")
    tree = loader.load(bundle, expected_name="echo").tree
    assert loader.load_kept(bundle, expected_name="echo") is not None
    loader.discard(tree)  # an upgrade's old version, removed
    assert not tree.exists() and loader.load_kept(bundle, expected_name="echo") is None
    again = loader.load(bundle, expected_name="echo")
    assert not again.reused and again.tree == tree


def test_load_kept_stops_after_slow_answers(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Slow stats (a network file system) must not keep stalling the event loop: after
    # KEPT_SLOW_TIMES slow answers, every load goes through the worker thread again.
    bundle, loader = _echo_and_loader(ws, monkeypatch, 0.0)
    loader.load(bundle, expected_name="echo")
    loader.load(bundle, expected_name="echo")
    monkeypatch.setattr(loader_module, "KEPT_SLOW_S", -1.0)  # every answer counts as slow
    with caplog.at_level("INFO", logger="plugind.host.loader"):
        for _ in range(loader_module.KEPT_SLOW_TIMES):
            assert loader.load_kept(bundle, expected_name="echo") is not None  # slow, but answered
        assert loader.load_kept(bundle, expected_name="echo") is None
    said = [r.getMessage() for r in caplog.records if "worker thread from now on" in r.getMessage()]
    assert len(said) == 1
    assert loader.load(bundle, expected_name="echo").reused  # the worker-thread path still reuses it
    monkeypatch.setattr(loader_module, "KEPT_SLOW_S", 60.0)
    assert loader.load_kept(bundle, expected_name="echo") is None  # for good
