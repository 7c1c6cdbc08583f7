"""SecuritySource: the security every load and scan uses, built again whenever the trust list, the
trust key or the security settings may have changed, and reused only when none did."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from plugind import fsio
from plugind.config import Settings
from plugind.errors import TrustListError
from plugind.trust import TrustedPluginEntry, add_trusted_plugin, init_trust_list, remove_trusted_plugin
from plugind.trust.freshness import TrustListGuard
from plugind.trust.security import SecuritySource
from plugind.trust.trustlist import TRUST_KEY_ENV


def entry(name: str, n: int) -> TrustedPluginEntry:
    return TrustedPluginEntry(name, "1.0.0", f"{n:0128x}", f"{n + 1:0128x}", "")


def names(source: SecuritySource) -> list[str]:
    return sorted(e.name for e in source().trust_entries or ())


def source_for(settings: Settings) -> SecuritySource:
    # As the daemon builds it: one guard (the highest generation seen), one source.
    return SecuritySource(settings, guard=TrustListGuard(settings.security.trust_state_file))


def next_tick(path: Path) -> None:
    # Writes in the same coarse clock tick as the last change may keep its ctime: wait one out (a
    # wait for the clock, not a timing assertion).
    changed = os.stat(path).st_ctime_ns
    while time.time_ns() < changed + 20_000_000:
        time.sleep(0.005)


@pytest.fixture
def setup(tmp_path: Path, trust_key: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, Path]:
    path = tmp_path / "trust.list"
    init_trust_list(path, trust_key)
    for i in range(3):
        add_trusted_plugin(path, trust_key, entry(f"p{i}", i))
    settings = Settings()
    settings.security.trust_list_path = path
    settings.security.trust_state_file = tmp_path / "trust.state"
    monkeypatch.setenv(TRUST_KEY_ENV, trust_key.hex())
    return settings, path


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    # A list counts as settled as soon as it was read after its last change (the default waits two
    # seconds, which the first test below checks).
    monkeypatch.setattr(fsio, "SETTLE_S", 0.0)


def test_a_list_changed_moments_ago_is_read_at_every_refresh(setup: tuple[Settings, Path]) -> None:
    settings, _path = setup
    source = source_for(settings)
    for _ in range(3):
        assert names(source) == ["p0", "p1", "p2"]
    assert source.reads == 3


@pytest.mark.usefixtures("settled")
def test_an_unchanged_settled_list_is_read_once(setup: tuple[Settings, Path]) -> None:
    settings, _path = setup
    source = source_for(settings)
    first = source()
    for _ in range(5):
        assert source() is first
    assert source.reads == 1


@pytest.mark.usefixtures("settled")
def test_every_change_of_the_list_is_seen_at_the_next_refresh(
    setup: tuple[Settings, Path], trust_key: bytes
) -> None:
    settings, path = setup
    source = source_for(settings)
    assert names(source) == ["p0", "p1", "p2"]
    old = path.with_name("old.list")
    shutil.copy2(path, old)  # contents and times, for the rollback below

    next_tick(path)
    remove_trusted_plugin(path, trust_key, "p1")  # rewritten and renamed into place
    assert names(source) == ["p0", "p2"]

    # The old list put back in place with its old times (`cp -p` onto the file): same inode, mtime
    # of the old copy. Its ctime is new, so it is read, and refused as a rollback.
    next_tick(path)
    shutil.copyfile(old, path)
    shutil.copystat(old, path)
    with pytest.raises(TrustListError, match="older than generation"):
        source()
    with pytest.raises(TrustListError, match="older than generation"):
        source()  # and at every refresh after, never the last good one

    # The same bytes as the list that was last accepted, written in place over the rolled-back
    # copy: read again and accepted.
    next_tick(path)
    remove_trusted_plugin(old, trust_key, "p1")
    old2 = old.read_bytes()
    with open(path, "r+b") as f:
        f.write(old2)
        f.truncate()
    assert names(source) == ["p0", "p2"]

    reads = source.reads
    path.unlink()
    with pytest.raises(TrustListError, match="not found"):
        source()
    assert source.reads == reads + 1


@pytest.mark.usefixtures("settled")
def test_another_key_or_other_settings_read_the_list_again(
    setup: tuple[Settings, Path], trust_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _path = setup
    source = source_for(settings)
    assert names(source) == ["p0", "p1", "p2"]
    monkeypatch.setenv(TRUST_KEY_ENV, os.urandom(32).hex())
    with pytest.raises(TrustListError, match="wrong PLUGIN_TRUST_KEY"):
        source()
    monkeypatch.delenv(TRUST_KEY_ENV)
    assert source().trust_entries is None  # no key: no list, nothing can be TRUSTED
    monkeypatch.setenv(TRUST_KEY_ENV, trust_key.hex())
    assert names(source) == ["p0", "p1", "p2"]
    assert source.reads == 3
    settings.security.min_trust_level = "signed"
    assert source().policy.level == "signed"
    settings.security.min_trust_level = "trusted"
    assert source().policy.level == "trusted"
    assert source.reads == 5


@pytest.mark.usefixtures("settled")
def test_a_kept_list_is_refused_once_it_expires(tmp_path: Path, trust_key: bytes,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "trust.list"
    # At least 2 s ahead (int() cuts up to a second off): a loaded machine may take a second to the
    # first read, which then met an expired list.
    expires = int(time.time()) + 3
    init_trust_list(path, trust_key, valid_until=expires)
    settings = Settings()
    settings.security.trust_list_path = path
    settings.security.trust_state_file = tmp_path / "trust.state"
    monkeypatch.setenv(TRUST_KEY_ENV, trust_key.hex())
    source = source_for(settings)
    first = source()
    assert source() is first and source.reads == 1
    while time.time() < expires:  # waiting for the clock to pass valid_until
        time.sleep(0.05)
    with pytest.raises(TrustListError, match="expired"):
        source()


@pytest.mark.usefixtures("settled")
def test_a_change_in_place_of_the_same_size_and_mtime_is_seen(
    setup: tuple[Settings, Path], trust_key: bytes
) -> None:
    settings, path = setup
    source = source_for(settings)
    assert names(source) == ["p0", "p1", "p2"]
    before = os.stat(path)
    other = path.with_name("other.list")
    shutil.copyfile(path, other)
    remove_trusted_plugin(other, trust_key, "p1")
    add_trusted_plugin(other, trust_key, entry("p9", 9))
    assert other.stat().st_size == before.st_size
    next_tick(path)
    with open(path, "r+b") as f:  # same inode, same size, and the old mtime put back
        f.write(other.read_bytes())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    now = os.stat(path)
    assert (now.st_ino, now.st_size, now.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert names(source) == ["p0", "p2", "p9"]


@pytest.mark.usefixtures("settled")
def test_kept_is_what_a_call_would_give_without_reading_and_never_waits(
    setup: tuple[Settings, Path], trust_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, path = setup
    source = source_for(settings)
    assert source.kept() is None  # nothing read yet
    first = source()
    assert source.kept() is first and source.reads == 1
    next_tick(path)
    remove_trusted_plugin(path, trust_key, "p1")
    assert source.kept() is None and source.reads == 1  # changed: only a call reads it
    second = source()
    assert second is not first and source.kept() is second and source.reads == 2
    with source._lock:  # another thread reading the list: no waiting, no answer
        assert source.kept() is None
    assert source.kept() is second
    monkeypatch.setenv(TRUST_KEY_ENV, "00" * 32)  # another key: the list must be read again
    assert source.kept() is None and source.reads == 2
