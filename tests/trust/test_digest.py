"""Digest of bundle bytes: SHA3-512 hex, the signed message, reading a bundle file once."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from plugind.errors import BundleError
from plugind.trust.digest import bundle_digest, read_and_digest, read_bundle_file, signed_message


def test_digest_is_sha3_512_hex_and_agrees_with_openssl(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    path = tmp_path / "b.plugin"
    path.write_bytes(data)
    digest = bundle_digest(data)
    assert digest == hashlib.sha3_512(data).hexdigest()
    assert len(digest) == 128
    out = subprocess.run(
        ["openssl", "dgst", "-sha3-512", "-r", str(path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.split()[0] == digest


def test_signed_message_is_the_ascii_hex_digest() -> None:
    digest = bundle_digest(b"x")
    assert signed_message(digest) == digest.encode("ascii")


@pytest.mark.parametrize(
    "bad", ["", "ab" * 63, "AB" * 64, "zz" * 64, "a" * 129], ids=["empty", "short", "upper", "nonhex", "long"]
)
def test_signed_message_refuses_anything_but_a_digest(bad: str) -> None:
    with pytest.raises(ValueError, match="128 lowercase hex characters"):
        signed_message(bad)


def test_read_returns_the_bytes_and_their_digest(tmp_path: Path) -> None:
    path = tmp_path / "b.plugin"
    path.write_bytes(b"abc" * 1000)
    data, digest = read_and_digest(path, max_bytes=3000)
    assert data == b"abc" * 1000
    assert digest == bundle_digest(data)


def test_oversized_bundle_is_refused_from_its_size(tmp_path: Path) -> None:
    path = tmp_path / "big.plugin"
    path.write_bytes(b"\0" * 1001)
    with pytest.raises(
        BundleError, match=r"big.plugin: 1001 bytes is over the limit of 1000 \(plugins.max_bundle_bytes\)"
    ) as exc:
        read_bundle_file(path, max_bytes=1000)
    assert exc.value.bundle == str(path)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "fifo.plugin"
    os.mkfifo(path)
    with pytest.raises(BundleError, match=r"fifo\.plugin: not a regular file"):
        read_bundle_file(path, max_bytes=1000)


def test_missing_bundle_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_bundle_file(tmp_path / "nope.plugin", max_bytes=1000)
