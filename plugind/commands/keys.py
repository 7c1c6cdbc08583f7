"""`plugind keygen NAME`: a new Ed25519 signing key pair (NAME.key mode 0600, NAME.pub)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the keygen command."""
    p = subparsers.add_parser("keygen", help="generate an Ed25519 signing key pair")
    p.add_argument("name", metavar="NAME", help="key name: writes NAME.key (private, 0600) and NAME.pub")
    p.add_argument("--out-dir", default=".", help="directory for the key files (default: current)")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    p.set_defaults(func=run_keygen)


def run_keygen(args: argparse.Namespace) -> int:
    """Write NAME.key and NAME.pub. Raises PluginError (bad name, files exist without --force)."""
    from pathlib import Path

    from plugind.config import PLUGIN_NAME_RE
    from plugind.errors import PluginError
    from plugind.trust.keys import PrivateKey, write_public_key

    if not PLUGIN_NAME_RE.match(args.name):
        raise PluginError(f"key name {args.name!r} must match [a-z0-9][a-z0-9_-]{{0,62}}")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out / f"{args.name}.key", out / f"{args.name}.pub"
    if not args.force:
        for path in (key_path, pub_path):
            if path.exists():
                raise PluginError(f"{path} already exists; refusing to overwrite a key (use --force)")
    key = PrivateKey.generate()
    try:
        key.save(key_path, overwrite=args.force)
        write_public_key(pub_path, key.public_key, overwrite=args.force)
    except FileExistsError as exc:
        raise PluginError(f"{exc.filename or key_path} already exists; refusing to overwrite a key") from None
    print(f"private key: {key_path} (mode 0600; keep it secret)")
    print(f"public key:  {pub_path}")
    print("configure it with:")
    print(f'  [security.public_keys]\n  {args.name} = "{key.public_key.hex}"')
    return 0
