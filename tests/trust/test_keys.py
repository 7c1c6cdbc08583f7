"""Ed25519 keys: hex parsing, key files (0600, never overwritten silently), signing and verifying."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from plugind.errors import InvalidKey
from plugind.trust import PrivateKey, PublicKey
from plugind.trust.keys import write_public_key


def test_public_key_hex_round_trip(signing_key: PrivateKey) -> None:
    pub = signing_key.public_key
    assert PublicKey.from_hex(pub.hex) == pub
    assert PublicKey.from_hex(pub.hex.upper() + "\n") == pub


@pytest.mark.parametrize(
    "text",
    ["", "abc", "0" * 63, "0" * 65, "g" * 64, "0x" + "0" * 62, " " * 64],
    ids=["empty", "short", "63", "65", "nonhex", "0x-prefix", "spaces"],
)
def test_malformed_public_key_is_refused(text: str) -> None:
    with pytest.raises(InvalidKey, match=r"^malformed public key: expected 64 hex characters \(32 bytes\)$"):
        PublicKey.from_hex(text)


def test_sign_and_verify(signing_key: PrivateKey, other_key: PrivateKey) -> None:
    sig = signing_key.sign(b"message")
    assert signing_key.public_key.verify(b"message", sig)
    assert not signing_key.public_key.verify(b"messagE", sig)
    assert not other_key.public_key.verify(b"message", sig)


def test_key_file_is_0600_and_loads_back(tmp_path: Path, signing_key: PrivateKey) -> None:
    path = tmp_path / "k.key"
    signing_key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert PrivateKey.load(path).public_key == signing_key.public_key


def test_key_file_is_never_overwritten_silently(
    tmp_path: Path, signing_key: PrivateKey, other_key: PrivateKey
) -> None:
    path = tmp_path / "k.key"
    signing_key.save(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        other_key.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["k.key"]  # no temp file left behind
    other_key.save(path, overwrite=True)
    assert PrivateKey.load(path).public_key == other_key.public_key


def test_key_readable_by_others_is_refused(tmp_path: Path, signing_key: PrivateKey) -> None:
    path = tmp_path / "k.key"
    signing_key.save(path)
    os.chmod(path, 0o644)
    with pytest.raises(
        InvalidKey, match=r"k.key: private key is accessible by others \(mode 0644\); run chmod 600"
    ):
        PrivateKey.load(path)


def test_garbage_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(b"\xff" * 40)
    os.chmod(path, 0o600)
    with pytest.raises(InvalidKey, match=r"k.key: malformed private key: expected 64 hex characters"):
        PrivateKey.load(path)


def test_repr_never_shows_the_seed(tmp_path: Path, signing_key: PrivateKey) -> None:
    path = tmp_path / "k.key"
    signing_key.save(path)
    seed = path.read_text().strip()
    assert seed not in repr(signing_key)
    assert seed[:16] not in repr(signing_key)


def test_public_key_file(tmp_path: Path, signing_key: PrivateKey) -> None:
    path = tmp_path / "k.pub"
    write_public_key(path, signing_key.public_key)
    assert PublicKey.from_hex(path.read_text()) == signing_key.public_key
