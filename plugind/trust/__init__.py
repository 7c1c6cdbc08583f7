"""plugind.trust: digests, Ed25519 signatures, the encrypted trust list, bundle pack/read/extract."""

from __future__ import annotations

from plugind.trust.bundle import (
    BundleContents,
    BundleEntry,
    BundleLimits,
    extract_bundle,
    inspect_bundle,
    pack_directory,
    remove_tree,
    write_bundle,
)
from plugind.trust.digest import bundle_digest, read_and_digest, read_bundle_file, signed_message
from plugind.trust.keys import PrivateKey, PublicKey
from plugind.trust.manifest import Manifest, Requires
from plugind.trust.security import PluginSecurity, SecurityPolicy, TrustLevel, VerifiedBundle
from plugind.trust.signature import PluginSignature, read_signature_file, signature_path
from plugind.trust.trustlist import (
    TrustedPluginEntry,
    add_trusted_plugin,
    encrypt_and_save_trust_list,
    init_trust_list,
    load_and_decrypt_trust_list,
    parse_trust_key,
    remove_trusted_plugin,
)
from plugind.trust.version import PluginVersion

__all__ = [
    "BundleContents",
    "BundleEntry",
    "BundleLimits",
    "Manifest",
    "PluginSecurity",
    "PluginSignature",
    "PluginVersion",
    "PrivateKey",
    "PublicKey",
    "Requires",
    "SecurityPolicy",
    "TrustLevel",
    "TrustedPluginEntry",
    "VerifiedBundle",
    "add_trusted_plugin",
    "bundle_digest",
    "encrypt_and_save_trust_list",
    "extract_bundle",
    "init_trust_list",
    "inspect_bundle",
    "load_and_decrypt_trust_list",
    "pack_directory",
    "parse_trust_key",
    "read_and_digest",
    "read_bundle_file",
    "read_signature_file",
    "remove_tree",
    "remove_trusted_plugin",
    "signature_path",
    "signed_message",
    "write_bundle",
]
