"""`plugind trust init|add|list|remove`: the encrypted trust list (key from $PLUGIN_TRUST_KEY)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from plugind.config import Settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the trust command group."""
    p = subparsers.add_parser("trust", help="manage the encrypted trust list (key in $PLUGIN_TRUST_KEY)")
    sub = p.add_subparsers(dest="trust_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", metavar="FILE", help="config file (default config/plugins.toml)")
        q.add_argument("--file", metavar="FILE", help="trust list path (default security.trust_list_path)")

    i = sub.add_parser("init", help="create an empty trust list")
    common(i)
    i.add_argument("--force", action="store_true", help="replace an existing list with an empty one")
    i.set_defaults(func=run_init)

    a = sub.add_parser("add", help="trust this exact signed bundle (name, version, hash)")
    common(a)
    a.add_argument("bundle", metavar="BUNDLE")
    a.add_argument("--note", default="", help="free text stored with the entry")
    a.set_defaults(func=run_add)

    ls = sub.add_parser("list", help="show the trusted bundles")
    common(ls)
    ls.set_defaults(func=run_list)

    r = sub.add_parser("remove", help="stop trusting NAME (every version, or only VERSION)")
    common(r)
    r.add_argument("name", metavar="NAME")
    r.add_argument("version", metavar="VERSION", nargs="?")
    r.set_defaults(func=run_remove)


def _context(args: argparse.Namespace) -> tuple[Settings, Path, bytes]:
    import os
    from pathlib import Path

    from plugind.config import load_config
    from plugind.trust.trustlist import TRUST_KEY_ENV, parse_trust_key

    settings = load_config(args.config)
    path = Path(args.file) if args.file else settings.security.trust_list_path
    return settings, path, parse_trust_key(os.environ.get(TRUST_KEY_ENV))


def run_init(args: argparse.Namespace) -> int:
    """Create an empty list. Raises InvalidKey, TrustListError (exists without --force)."""
    from plugind.trust.trustlist import init_trust_list

    _settings, path, key = _context(args)
    init_trust_list(path, key, force=args.force)
    print(f"{path}: empty trust list created")
    return 0


def run_add(args: argparse.Namespace) -> int:
    """Verify BUNDLE's signature under a configured key, then list its name, version and hash.

    Raises InvalidKey, TrustListError, SignatureInvalid (no or bad signature), BundleError.
    """
    from plugind.errors import SignatureInvalid
    from plugind.trust.security import PluginSecurity
    from plugind.trust.signature import signature_path
    from plugind.trust.trustlist import TrustedPluginEntry, add_trusted_plugin, load_and_decrypt_trust_list

    settings, path, key = _context(args)
    load_and_decrypt_trust_list(path, key)  # fail early: no list, wrong key
    vb = PluginSecurity.from_settings(settings).verify_bundle(args.bundle)
    if vb.signature is None or vb.key_name is None:
        raise SignatureInvalid(
            f"{args.bundle}: no signature ({signature_path(args.bundle)} is missing); "
            "sign it first with `plugind sign BUNDLE --key FILE`",
            plugin=vb.name,
            bundle=str(args.bundle),
        )
    entry = TrustedPluginEntry(vb.name, vb.version, vb.digest, vb.signature.hex, args.note)
    old = add_trusted_plugin(path, key, entry)
    verb = "replaced" if old is not None and old != entry else "trusted"
    print(f"{verb}: {vb.name} {vb.version} sha3-512:{vb.digest[:32]}... (signed by {vb.key_name})")
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Print the entries. Raises InvalidKey, TrustListError."""
    from plugind.trust.trustlist import load_and_decrypt_trust_list

    _settings, path, key = _context(args)
    entries = load_and_decrypt_trust_list(path, key)
    if not entries:
        print(f"{path}: no trusted plugins")
        return 0
    print(f"{'NAME':<24} {'VERSION':<12} {'HASH (sha3-512)':<34} NOTE")
    for e in entries:
        print(f"{e.name:<24} {e.version:<12} {e.hash[:32]:<34} {e.note}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    """Remove entries. Raises InvalidKey, TrustListError (nothing matched)."""
    from plugind.trust.trustlist import remove_trusted_plugin

    _settings, path, key = _context(args)
    removed = remove_trusted_plugin(path, key, args.name, args.version)
    for e in removed:
        print(f"removed: {e.name} {e.version}")
    return 0
