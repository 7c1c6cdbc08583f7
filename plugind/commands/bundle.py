"""`plugind pack DIR`, `plugind sign BUNDLE --key FILE`, `plugind verify BUNDLE`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the pack, sign and verify commands."""
    p = subparsers.add_parser("pack", help="build a reproducible NAME-VERSION.plugin bundle from DIR")
    p.add_argument("dir", metavar="DIR", help="plugin source directory (with plugin.toml)")
    p.add_argument("-o", "--output", metavar="OUT", help="output file, or directory for NAME-VERSION.plugin")
    p.set_defaults(func=run_pack)

    s = subparsers.add_parser("sign", help="sign a bundle with an Ed25519 private key (writes BUNDLE.sig)")
    s.add_argument("bundle", metavar="BUNDLE")
    s.add_argument("--key", required=True, metavar="FILE", help="private key file from `plugind keygen`")
    s.add_argument("--config", metavar="FILE", help="config file, for plugins.max_bundle_bytes")
    s.set_defaults(func=run_sign)

    v = subparsers.add_parser("verify", help="check a bundle: digest, signing key, trust level")
    v.add_argument("bundle", metavar="BUNDLE")
    v.add_argument("--config", metavar="FILE", help="config file (default config/plugins.toml)")
    v.add_argument("--trust-list", metavar="FILE", help="trust list (default security.trust_list_path)")
    v.set_defaults(func=run_verify)


def run_pack(args: argparse.Namespace) -> int:
    """Pack DIR. Raises BundleError (no or bad plugin.toml, links, special files, missing entrypoint)."""
    import sys

    from plugind.trust.bundle import write_bundle
    from plugind.trust.digest import bundle_digest
    from plugind.trust.signature import signature_path

    path, manifest, changed = write_bundle(args.dir, args.output)
    digest = bundle_digest(path.read_bytes())
    print(f"{path}")
    print(f"{manifest.name} {manifest.version} sha3-512:{digest}")
    if changed and signature_path(path).exists():
        print(f"note: {signature_path(path)} belongs to the previous bundle; sign again", file=sys.stderr)
    return 0


def run_sign(args: argparse.Namespace) -> int:
    """Sign BUNDLE's digest. Raises InvalidKey (bad or too-open key file), BundleError (not a bundle)."""
    from pathlib import Path

    from plugind.config import load_config
    from plugind.fsio import atomic_write
    from plugind.trust.bundle import BundleLimits, inspect_bundle
    from plugind.trust.digest import read_and_digest, signed_message
    from plugind.trust.keys import PrivateKey
    from plugind.trust.signature import signature_path

    limits = BundleLimits.from_settings(load_config(args.config))
    key = PrivateKey.load(args.key)
    bundle = Path(args.bundle)
    data, digest = read_and_digest(bundle, limits.max_bundle_bytes)
    # Refuse to put a signature on something the loader would refuse anyway.
    manifest = inspect_bundle(data, limits, bundle=str(bundle)).manifest
    sig = key.sign(signed_message(digest))
    out = signature_path(bundle)
    atomic_write(out, (sig.hex + "\n").encode("ascii"), mode=0o644)
    print(f"{out}")
    print(f"{manifest.name} {manifest.version} signed by public key {key.public_key.hex}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Print digest, key and trust level; exit 2 when the policy would refuse the bundle.

    Raises SignatureInvalid, BundleError, TrustListError, InvalidKey (all exit 1).
    """
    import os

    from plugind.config import load_config
    from plugind.errors import UntrustedPlugin
    from plugind.trust.security import PluginSecurity
    from plugind.trust.trustlist import TRUST_KEY_ENV

    settings = load_config(args.config)
    trust_key = os.environ.get(TRUST_KEY_ENV) or None
    security = PluginSecurity.from_settings(settings, trust_key, trust_list_path=args.trust_list)
    vb = security.verify_bundle(args.bundle)
    print(f"bundle:  {args.bundle}")
    print(f"plugin:  {vb.name} {vb.version}")
    print(f"digest:  sha3-512:{vb.digest}")
    print(f"key:     {vb.key_name or '-'}")
    print(f"trust:   {vb.trust_level.value}")
    if trust_key is None:
        print(f"note:    {TRUST_KEY_ENV} is not set; the trust list was not consulted")
    try:
        security.check_policy(vb)
    except UntrustedPlugin as exc:
        print(f"policy:  refused: {exc}")
        return 2
    print(f"policy:  allowed (security.min_trust_level is {security.policy.level.value!r})")
    return 0
