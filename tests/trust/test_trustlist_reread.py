"""The trust list is re-read before every load: an unchanged file is decoded once (its cost grows with
the number of entries), and anything else (other bytes, another key) is decoded, and refused, afresh."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from plugind.errors import TrustListError
from plugind.trust import TrustedPluginEntry, add_trusted_plugin, init_trust_list, remove_trusted_plugin
from plugind.trust.trustlist import decrypt_trust_document, load_trust_document


def entry(name: str, n: int) -> TrustedPluginEntry:
    return TrustedPluginEntry(name, "1.0.0", f"{n:0128x}", f"{n + 1:0128x}", "")


@pytest.fixture
def listed(tmp_path: Path, trust_key: bytes) -> Path:
    path = tmp_path / "trust.list"
    init_trust_list(path, trust_key)
    for i in range(3):
        add_trusted_plugin(path, trust_key, entry(f"p{i}", i))
    return path


def test_an_unchanged_list_is_decoded_once(listed: Path, trust_key: bytes,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[object] = []
    real = TrustedPluginEntry.from_dict.__func__  # type: ignore[attr-defined]

    def counted(cls: type[TrustedPluginEntry], data: object) -> TrustedPluginEntry:
        decoded.append(data)
        return real(cls, data)  # type: ignore[no-any-return]

    first = load_trust_document(listed, trust_key)
    monkeypatch.setattr(TrustedPluginEntry, "from_dict", classmethod(counted))
    for _ in range(5):
        again = load_trust_document(listed, trust_key)
        assert again == first
    assert decoded == []
    # A caller changing its copy changes nothing for the next reader.
    again.entries.clear()
    assert load_trust_document(listed, trust_key).entries == first.entries
    # A change of the file is decoded (and seen) at once.
    remove_trusted_plugin(listed, trust_key, "p1")
    changed = load_trust_document(listed, trust_key)
    assert [e.name for e in changed.entries] == ["p0", "p2"] and len(decoded) == 2
    assert changed.generation == first.generation + 1


def test_the_same_bytes_under_another_key_are_refused(listed: Path, trust_key: bytes) -> None:
    blob = listed.read_bytes()
    assert len(decrypt_trust_document(blob, trust_key).entries) == 3
    with pytest.raises(TrustListError, match="cannot decrypt the trust list"):
        decrypt_trust_document(blob, os.urandom(32))
    assert len(decrypt_trust_document(blob, trust_key).entries) == 3


def test_altered_bytes_are_refused_after_a_good_read(listed: Path, trust_key: bytes) -> None:
    assert len(load_trust_document(listed, trust_key).entries) == 3
    blob = bytearray(listed.read_bytes())
    blob[-1] ^= 1
    listed.write_bytes(bytes(blob))
    with pytest.raises(TrustListError, match="cannot decrypt the trust list"):
        load_trust_document(listed, trust_key)
    listed.write_bytes(b"")
    with pytest.raises(TrustListError, match="empty"):
        load_trust_document(listed, trust_key)
