"""plugind.trust's public API is its sorted __all__."""

from __future__ import annotations

import plugind.trust


def test_all_is_sorted_and_importable() -> None:
    assert plugind.trust.__all__ == sorted(plugind.trust.__all__)
    for name in plugind.trust.__all__:
        assert getattr(plugind.trust, name) is not None


def test_integration_guide_names_are_exported() -> None:
    expected = {
        "PluginSecurity",
        "PublicKey",
        "PluginSignature",
        "TrustedPluginEntry",
        "PluginVersion",
        "SecurityPolicy",
        "TrustLevel",
        "VerifiedBundle",
        "extract_bundle",
        "encrypt_and_save_trust_list",
        "load_and_decrypt_trust_list",
        "add_trusted_plugin",
    }
    assert expected <= set(plugind.trust.__all__)
