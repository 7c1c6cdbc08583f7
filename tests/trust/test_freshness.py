"""Trust-list generations, expiry and the rollback guard; the per-file record of an extracted tree."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from plugind.errors import TrustListError
from plugind.trust import TrustedPluginEntry, add_trusted_plugin, init_trust_list, remove_trusted_plugin
from plugind.trust.freshness import TrustListGuard
from plugind.trust.tree import tree_mismatch
from plugind.trust.trustlist import MAGIC, encrypt_and_save_trust_list, load_trust_document


def entry(name: str = "hello", n: int = 0) -> TrustedPluginEntry:
    return TrustedPluginEntry(name, "1.0.0", f"{n:0128x}", f"{n + 1:0128x}", "")


def v1_blob(entries: list[TrustedPluginEntry], key: bytes) -> bytes:
    # A list as plugind wrote it before generations existed (format version 1).
    header = struct.pack(">8sH", MAGIC, 1)
    nonce = os.urandom(12)
    payload = json.dumps({"entries": [e.to_dict() for e in entries]}).encode()
    return header + nonce + AESGCM(key).encrypt(nonce, payload, header)


def test_every_write_bumps_the_generation(tmp_path: Path, trust_key: bytes) -> None:
    path = tmp_path / "trust.list"
    init_trust_list(path, trust_key)
    assert load_trust_document(path, trust_key).generation == 1
    add_trusted_plugin(path, trust_key, entry())
    remove_trusted_plugin(path, trust_key, "hello")
    doc = load_trust_document(path, trust_key)
    assert (doc.generation, doc.entries, doc.valid_until) == (3, [], None)


def test_a_version_1_list_reads_as_generation_0_and_is_upgraded_on_write(
    tmp_path: Path, trust_key: bytes
) -> None:
    path = tmp_path / "trust.list"
    path.write_bytes(v1_blob([entry()], trust_key))
    doc = load_trust_document(path, trust_key)
    assert (doc.generation, doc.entries, doc.valid_until) == (0, [entry()], None)
    add_trusted_plugin(path, trust_key, entry("other", 4))
    assert path.read_bytes()[8:10] == b"\x00\x02"
    assert load_trust_document(path, trust_key).generation == 1


def test_the_guard_refuses_an_older_generation_from_memory_and_from_its_file(
    tmp_path: Path, trust_key: bytes
) -> None:
    path, state = tmp_path / "trust.list", tmp_path / "state.json"
    init_trust_list(path, trust_key)
    old = path.read_bytes()
    add_trusted_plugin(path, trust_key, entry())
    guard = TrustListGuard(state)
    guard.check(load_trust_document(path, trust_key), path)
    path.write_bytes(old)
    for g in (guard, TrustListGuard(state)):  # the same process, and a new one reading the file
        with pytest.raises(TrustListError, match=r"generation 1 is older than generation 2 already seen"):
            g.check(load_trust_document(path, trust_key), path)
    # Memory protects even when the state file is gone.
    state.unlink()
    with pytest.raises(TrustListError, match="rolled-back"):
        guard.check(load_trust_document(path, trust_key), path)


def test_an_unreadable_state_file_fails_closed(tmp_path: Path, trust_key: bytes) -> None:
    path, state = tmp_path / "trust.list", tmp_path / "state.json"
    init_trust_list(path, trust_key)
    state.write_text("{not json")
    with pytest.raises(TrustListError, match=r"trust state file is unreadable"):
        TrustListGuard(state).check(load_trust_document(path, trust_key), path)


def test_an_expired_list_is_refused_unless_allowed(tmp_path: Path, trust_key: bytes) -> None:
    path = tmp_path / "trust.list"
    past = int(time.time()) - 5
    encrypt_and_save_trust_list([entry()], path, trust_key, generation=4, valid_until=past)
    doc = load_trust_document(path, trust_key)
    assert doc.expired() and doc.valid_until == past
    guard = TrustListGuard(None)
    with pytest.raises(TrustListError, match=r"trust list expired at .*plugind trust renew"):
        guard.check(doc, path)
    guard.check(doc, path, allow_expired=True)  # the CLI may read it to renew it
    # A write keeps the expiry unless told otherwise.
    add_trusted_plugin(path, trust_key, entry("other", 7))
    assert load_trust_document(path, trust_key).valid_until == past


def check(tree: Path, record: dict[str, tuple[str, int]], checked: dict[str, Any] | None = None,
          **kw: Any) -> str | None:
    """`tree_mismatch` on `tree` sealed as extraction leaves it (every directory 0555), opened again
    after (0755) for the test's next change."""
    dirs = [tree, *(p for p in tree.rglob("*") if p.is_dir() and not p.is_symlink())]
    for d in dirs:
        os.chmod(d, 0o555)
    try:
        return tree_mismatch(tree, record, checked, **kw)
    finally:
        for d in dirs:
            os.chmod(d, 0o755)


def test_tree_mismatch_names_the_difference(tmp_path: Path) -> None:
    import hashlib

    tree = tmp_path / "t"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "a.py").write_bytes(b"x = 1\n")
    os.chmod(tree / "pkg" / "a.py", 0o444)
    record = {"pkg/a.py": (hashlib.sha256(b"x = 1\n").hexdigest(), 0o444)}
    assert check(tree, record) is None
    (tree / "pkg" / "__pycache__").mkdir()
    (tree / "pkg" / "__pycache__" / "a.cpython-312.pyc").write_bytes(b"evil")
    assert check(tree, record) == "pkg/__pycache__/a.cpython-312.pyc: file not in the verified bundle"
    (tree / "pkg" / "__pycache__" / "a.cpython-312.pyc").unlink()
    os.chmod(tree / "pkg" / "a.py", 0o644)
    (tree / "pkg" / "a.py").write_bytes(b"x = 2\n")
    assert check(tree, record) == "pkg/a.py: mode changed"
    os.chmod(tree / "pkg" / "a.py", 0o444)
    assert check(tree, record) == "pkg/a.py: contents differ from the verified bundle"
    (tree / "pkg" / "a.py").unlink()
    (tree / "pkg" / "a.py").symlink_to("/etc/passwd")
    assert check(tree, record) == "pkg/a.py: not a regular file (link or special file)"
    (tree / "pkg" / "a.py").unlink()
    assert check(tree, record) == "pkg/a.py: missing"


def test_tree_mismatch_reads_again_only_what_may_have_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    from plugind import fsio
    from plugind.trust import tree as tree_module

    monkeypatch.setattr(fsio, "SETTLE_S", 0.0)
    read: list[str] = []
    real = tree_module._sha256

    def counted(path: str) -> tuple[str | None, fsio.FileIdentity | None]:
        read.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(tree_module, "_sha256", counted)
    tree = tmp_path / "t"
    tree.mkdir()
    files = {"a.py": b"x = 1\n", "b.py": b"y = 1\n"}
    for name, body in files.items():
        (tree / name).write_bytes(body)
        os.chmod(tree / name, 0o444)
    record = {n: (hashlib.sha256(b).hexdigest(), 0o444) for n, b in files.items()}
    checked: dict[str, fsio.FileIdentity] = {}
    assert check(tree, record, checked) is None
    assert sorted(read) == ["a.py", "b.py"] and set(checked) == {"a.py", "b.py"}
    read.clear()
    assert check(tree, record, checked) is None
    assert read == []  # nothing changed: nothing read
    # Rewritten in place with the same size, and its old mtime put back: read, and refused.
    before = os.stat(tree / "a.py")
    while time.time_ns() < before.st_ctime_ns + 20_000_000:  # past the coarse clock's tick
        time.sleep(0.005)
    os.chmod(tree / "a.py", 0o644)
    (tree / "a.py").write_bytes(b"x = 2\n")
    os.chmod(tree / "a.py", 0o444)
    os.utime(tree / "a.py", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert check(tree, record, checked) == "a.py: contents differ from the verified bundle"
    assert "a.py" not in checked
    # A file planted beside unchanged ones is still seen (every directory is listed every time).
    os.chmod(tree / "a.py", 0o644)
    (tree / "a.py").write_bytes(b"x = 1\n")
    os.chmod(tree / "a.py", 0o444)
    (tree / "c.py").write_bytes(b"evil\n")
    assert check(tree, record, checked) == "c.py: file not in the verified bundle"


def test_tree_mismatch_without_reading_vouches_only_for_files_checked_since_their_last_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    from plugind import fsio
    from plugind.trust import tree as tree_module

    monkeypatch.setattr(fsio, "SETTLE_S", 0.0)
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "a.py").write_bytes(b"x = 1\n")
    os.chmod(tree / "a.py", 0o444)
    record = {"a.py": (hashlib.sha256(b"x = 1\n").hexdigest(), 0o444)}
    checked: dict[str, fsio.FileIdentity] = {}

    def never(path: str) -> tuple[str | None, fsio.FileIdentity | None]:
        raise AssertionError(f"{path} was read")

    with monkeypatch.context() as patched:
        patched.setattr(tree_module, "_sha256", never)
        assert check(tree, record, checked, read=False) == "a.py: not checked since it changed"
    assert check(tree, record, checked) is None  # read, and found to match
    with monkeypatch.context() as patched:
        patched.setattr(tree_module, "_sha256", never)
        assert check(tree, record, checked, read=False) is None
        before = os.stat(tree / "a.py")
        while time.time_ns() < before.st_ctime_ns + 20_000_000:  # past the coarse clock's tick
            time.sleep(0.005)
        os.utime(tree / "a.py", ns=(before.st_atime_ns, before.st_mtime_ns))  # only its ctime moves
        assert check(tree, record, checked, read=False) == "a.py: not checked since it changed"
    assert check(tree, record, checked) is None  # read again
    (tree / "b.py").write_bytes(b"evil\n")
    with monkeypatch.context() as patched:
        patched.setattr(tree_module, "_sha256", never)
        assert check(tree, record, checked, read=False) == "b.py: file not in the verified bundle"


def test_tree_mismatch_refuses_what_plugind_did_not_leave_there(tmp_path: Path) -> None:
    # Extraction leaves every directory plugind's and 0555, every file plugind's. A directory others
    # may write can have files swapped in it between two checks; a file of another user (a copy
    # swapped in) may be open for writing or mapped, where a write changes no time at all.
    import hashlib

    tree = tmp_path / "t"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "a.py").write_bytes(b"x = 1\n")
    os.chmod(tree / "pkg" / "a.py", 0o444)
    record = {"pkg/a.py": (hashlib.sha256(b"x = 1\n").hexdigest(), 0o444)}
    assert check(tree, record) is None
    os.chmod(tree, 0o555)
    os.chmod(tree / "pkg", 0o775)
    try:
        assert tree_mismatch(tree, record) == "pkg: directory mode 775, not 555"
        os.chmod(tree / "pkg", 0o555)
        os.chmod(tree, 0o755)
        assert tree_mismatch(tree, record) == ".: directory mode 755, not 555"
    finally:
        os.chmod(tree, 0o755)
        os.chmod(tree / "pkg", 0o755)
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    os.chown(tree / "pkg" / "a.py", 65534, -1)
    assert check(tree, record) == f"pkg/a.py: owned by uid 65534, not by plugind's ({os.geteuid()})"
    os.chown(tree / "pkg" / "a.py", os.geteuid(), -1)
    os.chown(tree / "pkg", 65534, -1)
    assert check(tree, record) == f"pkg: directory owned by uid 65534, not by plugind's ({os.geteuid()})"


def test_a_file_swapped_between_its_stat_and_its_read_is_not_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Someone who can rename the tree (its parent is theirs) swaps it between the listing and the
    # read: what is read is another file than the one stat'ed. Here the swap is made at that very
    # moment: the file is replaced by another inode (same bytes: the read alone would pass).
    import hashlib

    from plugind import fsio
    from plugind.trust import tree as tree_module

    monkeypatch.setattr(fsio, "SETTLE_S", 0.0)
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "a.py").write_bytes(b"x = 1\n")
    os.chmod(tree / "a.py", 0o444)
    record = {"a.py": (hashlib.sha256(b"x = 1\n").hexdigest(), 0o444)}
    real = tree_module._sha256

    def swapped(path: str) -> tuple[str | None, fsio.FileIdentity | None]:
        os.chmod(tree, 0o755)
        os.rename(path, path + ".old")
        Path(path).write_bytes(b"x = 1\n")
        os.chmod(path, 0o444)
        os.unlink(path + ".old")
        os.chmod(tree, 0o555)
        return real(path)

    checked: dict[str, fsio.FileIdentity] = {}
    with monkeypatch.context() as patched:
        patched.setattr(tree_module, "_sha256", swapped)
        assert check(tree, record, checked) == "a.py: changed while it was checked"
    assert checked == {}
    assert check(tree, record, checked) is None  # read again, as it is now: the same bytes
    assert set(checked) == {"a.py"}
