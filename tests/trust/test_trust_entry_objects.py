"""`TrustedPluginEntry` takes the trust module's own `PluginVersion` and `PluginSignature` objects
(as the guide's `add_trusted_plugin` does), keeps their text, and says what is wrong otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from plugind.trust import (
    PluginSignature,
    PluginVersion,
    PrivateKey,
    TrustedPluginEntry,
    add_trusted_plugin,
    init_trust_list,
    load_and_decrypt_trust_list,
)

HASH = "ab" * 64


def test_objects_are_accepted_and_stored_as_text(tmp_path: Path) -> None:
    signature = PrivateKey.generate().sign(b"digest")
    version = PluginVersion.parse("1.2.0-rc.1+build.7")
    entry = TrustedPluginEntry("hello", version, HASH, signature, "reviewed")
    assert entry.version == "1.2.0-rc.1+build.7"
    assert entry.signature == signature.hex
    assert entry == TrustedPluginEntry("hello", "1.2.0-rc.1+build.7", HASH, signature.hex, "reviewed")
    key = os.urandom(32)
    path = tmp_path / "trust.list"
    init_trust_list(path, key)
    add_trusted_plugin(path, key, entry)
    assert load_and_decrypt_trust_list(path, key) == [entry]


@pytest.mark.parametrize(
    ("version", "signature", "message"),
    [
        (1, "cd" * 64, "version must be a str or PluginVersion, not int"),
        ("one", "cd" * 64, "trust entry: version 'one' is not a semantic version"),
        ("1.0.0", PluginSignature(b"\0" * 10), "signature must be 128 lowercase hex characters"),
        ("1.0.0", b"\0" * 64, "signature must be 128 lowercase hex characters"),
    ],
    ids=["int-version", "bad-version", "short-signature", "raw-bytes-signature"],
)
def test_wrong_types_say_what_is_wrong(version: object, signature: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrustedPluginEntry("hello", version, HASH, signature)  # type: ignore[arg-type]
