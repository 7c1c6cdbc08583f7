"""The `.sig` file: 128 hex characters next to the bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugind.errors import SignatureInvalid
from plugind.trust import PluginSignature, PrivateKey, read_signature_file, signature_path


def test_hex_round_trip(signing_key: PrivateKey) -> None:
    sig = signing_key.sign(b"m")
    assert PluginSignature.from_hex(sig.hex) == sig
    assert PluginSignature.from_hex(" " + sig.hex.upper() + "\n") == sig


@pytest.mark.parametrize(
    "text", ["", "ab" * 63, "ab" * 65, "zz" * 64], ids=["empty", "short", "long", "nonhex"]
)
def test_malformed_signature_is_refused(text: str) -> None:
    with pytest.raises(SignatureInvalid, match=r"^not a valid signature: expected 128 hex characters"):
        PluginSignature.from_hex(text)


def test_signature_lives_next_to_the_bundle(tmp_path: Path, signing_key: PrivateKey) -> None:
    bundle = tmp_path / "hello-1.0.0.plugin"
    assert signature_path(bundle) == tmp_path / "hello-1.0.0.plugin.sig"
    assert read_signature_file(bundle) is None
    sig = signing_key.sign(b"m")
    signature_path(bundle).write_text(sig.hex + "\n")
    assert read_signature_file(bundle) == sig


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not hex at all", "hello-1.0.0.plugin.sig: not a valid signature"),
        (b"\xff\xfe" * 64, "hello-1.0.0.plugin.sig: not a valid signature"),
        (b"a" * 2000, r"hello-1.0.0.plugin.sig: not a signature file \(too large\)"),
    ],
    ids=["text", "binary", "huge"],
)
def test_malformed_sig_file_is_refused(tmp_path: Path, content: bytes, message: str) -> None:
    bundle = tmp_path / "hello-1.0.0.plugin"
    signature_path(bundle).write_bytes(content)
    with pytest.raises(SignatureInvalid, match=message) as exc:
        read_signature_file(bundle)
    assert exc.value.bundle == str(bundle)
