"""PluginSecurity: the verdict (trusted / signed / untrusted) and every refusal before code runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from plugind.config import Settings
from plugind.errors import BundleError, SignatureInvalid, TrustListError, UntrustedPlugin
from plugind.trust import (
    PluginSecurity,
    PrivateKey,
    PublicKey,
    SecurityPolicy,
    TrustedPluginEntry,
    TrustLevel,
    bundle_digest,
    encrypt_and_save_trust_list,
    extract_bundle,
    signature_path,
    signed_message,
    write_bundle,
)

from .conftest import write_plugin


def sign(bundle: Path, key: PrivateKey) -> str:
    sig = key.sign(signed_message(bundle_digest(bundle.read_bytes())))
    signature_path(bundle).write_text(sig.hex + "\n")
    return sig.hex


@pytest.fixture
def bundle(plugin_src: Path, tmp_path: Path) -> Path:
    out = tmp_path / "plugins"
    out.mkdir()
    return write_bundle(plugin_src, out)[0]


def entry_for(bundle: Path, sig_hex: str, name: str = "hello", version: str = "1.0.0") -> TrustedPluginEntry:
    return TrustedPluginEntry(name, version, bundle_digest(bundle.read_bytes()), sig_hex, "")


def test_signed_and_listed_is_trusted(
    bundle: Path, signing_key: PrivateKey, public_keys: dict[str, PublicKey]
) -> None:
    sig = sign(bundle, signing_key)
    security = PluginSecurity(public_keys, trust_entries=[entry_for(bundle, sig)])
    vb = security.verify_bundle(bundle)
    assert (vb.name, vb.version, vb.trust_level, vb.key_name) == (
        "hello",
        "1.0.0",
        TrustLevel.TRUSTED,
        "release",
    )
    assert vb.digest == bundle_digest(bundle.read_bytes())
    assert vb.data == bundle.read_bytes()
    assert vb.trust_entry == entry_for(bundle, sig)
    security.check_policy(vb)
    assert "hello 1.0.0" in repr(vb) and len(repr(vb)) < 200


def test_signed_but_not_listed_is_refused_when_only_trusted(
    bundle: Path, signing_key: PrivateKey, public_keys: dict[str, PublicKey]
) -> None:
    sign(bundle, signing_key)
    security = PluginSecurity(public_keys, trust_entries=[])
    vb = security.verify_bundle(bundle)
    assert vb.trust_level is TrustLevel.SIGNED
    with pytest.raises(
        UntrustedPlugin,
        match=r"^hello 1\.0\.0 is signed and security\.min_trust_level is 'trusted': its hash is not on the "
        r"trust list",
    ) as exc:
        security.check_policy(vb)
    assert (exc.value.plugin, exc.value.level) == ("hello", "signed")
    PluginSecurity(public_keys, policy=SecurityPolicy(only_trusted=False), trust_entries=[]).check_policy(vb)


def test_unsigned_is_untrusted_and_refused(bundle: Path, public_keys: dict[str, PublicKey]) -> None:
    security = PluginSecurity(public_keys, trust_entries=[])
    vb = security.verify_bundle(bundle)
    assert (vb.trust_level, vb.key_name) == (TrustLevel.UNTRUSTED, None)
    with pytest.raises(
        UntrustedPlugin, match=r"is untrusted and security\.min_trust_level is 'trusted': it has no signature"
    ) as exc:
        security.check_policy(vb)
    assert exc.value.level == "untrusted"


def test_listed_hash_does_not_help_an_unsigned_bundle(
    bundle: Path, signing_key: PrivateKey, public_keys: dict[str, PublicKey]
) -> None:
    sig = sign(bundle, signing_key)
    signature_path(bundle).unlink()
    vb = PluginSecurity(public_keys, trust_entries=[entry_for(bundle, sig)]).verify_bundle(bundle)
    assert vb.trust_level is TrustLevel.UNTRUSTED


def test_one_flipped_byte_in_a_trusted_bundle_is_refused(
    bundle: Path, signing_key: PrivateKey, public_keys: dict[str, PublicKey]
) -> None:
    sig = sign(bundle, signing_key)
    entries = [entry_for(bundle, sig)]
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    bundle.write_bytes(bytes(data))
    with pytest.raises(
        SignatureInvalid,
        match=r"^hello-1\.0\.0\.plugin was modified after signing: its digest differs from the one trusted "
        r"for hello 1\.0\.0",
    ) as exc:
        PluginSecurity(public_keys, trust_entries=entries).verify_bundle(bundle)
    assert exc.value.bundle == str(bundle)
    # Without a trust list to compare with, the signature alone still refuses it.
    with pytest.raises(
        SignatureInvalid, match=r"the signature does not verify under any configured key \(release\)"
    ):
        PluginSecurity(public_keys).verify_bundle(bundle)


def test_signature_by_an_unconfigured_key_is_refused(
    bundle: Path, other_key: PrivateKey, public_keys: dict[str, PublicKey]
) -> None:
    sign(bundle, other_key)
    with pytest.raises(
        SignatureInvalid,
        match=r"^hello-1\.0\.0\.plugin: the signature does not verify under any configured key "
        r"\(release\): .*"
        r"or it was signed by a key that is not configured$",
    ):
        PluginSecurity(public_keys, trust_entries=[]).verify_bundle(bundle)
    with pytest.raises(SignatureInvalid, match=r"no public keys are configured \(security\.public_keys\)"):
        PluginSecurity({}).verify_bundle(bundle)


def test_malformed_sig_file_is_refused(bundle: Path, public_keys: dict[str, PublicKey]) -> None:
    signature_path(bundle).write_text("deadbeef\n")
    with pytest.raises(SignatureInvalid, match=r"^hello-1\.0\.0\.plugin\.sig: not a valid signature"):
        PluginSecurity(public_keys).verify_bundle(bundle)


def test_manifest_disagreeing_with_its_trust_entry_is_refused(
    bundle: Path, signing_key: PrivateKey, public_keys: dict[str, PublicKey]
) -> None:
    sig = sign(bundle, signing_key)
    for name, version in [("hello", "2.0.0"), ("other", "1.0.0")]:
        entries = [entry_for(bundle, sig, name, version)]
        with pytest.raises(
            BundleError,
            match=rf"^manifest says hello 1\.0\.0 but the trust entry for this hash is "
            rf"{name} {re.escape(version)}; refusing the mismatch$",
        ) as exc:
            PluginSecurity(public_keys, trust_entries=entries).verify_bundle(bundle)
        assert exc.value.plugin == "hello"


def test_oversized_bundle_is_refused_before_reading(
    tmp_path: Path, public_keys: dict[str, PublicKey]
) -> None:
    settings = Settings()
    settings.plugins.max_bundle_bytes = 100
    big = tmp_path / "big.plugin"
    big.write_bytes(b"\0" * 101)
    with pytest.raises(BundleError, match=r"big\.plugin: 101 bytes is over the limit of 100"):
        PluginSecurity.from_settings(settings).verify_bundle(big)


def test_from_settings_reads_the_trust_list(
    tmp_path: Path, bundle: Path, signing_key: PrivateKey, trust_key: bytes
) -> None:
    sig = sign(bundle, signing_key)
    settings = Settings()
    settings.security.public_keys = {"release": signing_key.public_key.hex}
    settings.security.trust_list_path = tmp_path / "trust.list"
    encrypt_and_save_trust_list([entry_for(bundle, sig)], settings.security.trust_list_path, trust_key)
    vb = PluginSecurity.from_settings(settings, trust_key.hex()).verify_bundle(bundle)
    assert vb.trust_level is TrustLevel.TRUSTED
    assert PluginSecurity.from_settings(settings).verify_bundle(bundle).trust_level is TrustLevel.SIGNED
    with pytest.raises(TrustListError, match="wrong PLUGIN_TRUST_KEY"):
        PluginSecurity.from_settings(settings, "00" * 32)


def test_extraction_uses_the_verified_bytes_not_the_file(
    bundle: Path, signing_key: PrivateKey, public_keys: dict[str, PublicKey], tmp_path: Path
) -> None:
    sig = sign(bundle, signing_key)
    vb = PluginSecurity(public_keys, trust_entries=[entry_for(bundle, sig)]).verify_bundle(bundle)
    # Swap the file for another plugin after verification: extraction must not notice.
    evil_src = write_plugin(tmp_path / "evil", files={"hello.py": b"import os; os.system('evil')\n"})
    write_bundle(evil_src, bundle)
    dest = extract_bundle(vb, tmp_path / "x" / "hello")
    assert (dest / "hello.py").read_bytes() == b"plugin = None\n"


def test_policy_table() -> None:
    strict, lax = SecurityPolicy(only_trusted=True), SecurityPolicy(only_trusted=False)
    assert [strict.allows(level) for level in TrustLevel] == [True, False, False]
    # only_trusted = false is the deprecated spelling of min_trust_level "signed": unsigned never loads.
    assert [lax.allows(level) for level in TrustLevel] == [True, True, False]
    anything = SecurityPolicy(min_level=TrustLevel.UNTRUSTED)
    assert [anything.allows(level) for level in TrustLevel] == [True, True, True]
    assert not anything.allows("invalid")
    assert [str(level) for level in TrustLevel] == ["trusted", "signed", "untrusted"]
