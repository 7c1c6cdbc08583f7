"""Prepare the development set-up that `make run` starts (idempotent; safe to run again).

On first run: a dev signing key (data/keys/dev.key, 0600), a dev PLUGIN_TRUST_KEY and an API token
(data/dev-api-token, 0600, printed once). Every run: packs each examples/*/ with a plugin.toml into
the plugin directory, signs it, puts it on data/trust.list, and writes data/dev.env (0600) for the
Makefile to source. Packing never imports plugin code.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from plugind.config import load_config  # noqa: E402
from plugind.errors import PluginError  # noqa: E402
from plugind.fsio import atomic_write  # noqa: E402
from plugind.trust.digest import bundle_digest, signed_message  # noqa: E402
from plugind.trust.keys import PrivateKey, write_public_key  # noqa: E402
from plugind.trust.security import PluginSecurity  # noqa: E402
from plugind.trust.signature import signature_path  # noqa: E402
from plugind.trust.trustlist import (  # noqa: E402
    TrustedPluginEntry,
    add_trusted_plugin,
    init_trust_list,
    load_and_decrypt_trust_list,
    parse_trust_key,
)

KEY_NAME = "dev"


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def dev_key(data: Path) -> PrivateKey:
    """The dev signing key, generated on first run."""
    keys = _private_dir(data / "keys")
    key_path = keys / f"{KEY_NAME}.key"
    if key_path.exists():
        return PrivateKey.load(key_path)
    key = PrivateKey.generate()
    key.save(key_path)
    write_public_key(keys / f"{KEY_NAME}.pub", key.public_key, overwrite=True)
    print(f"dev_prepare: created signing key {key_path}")
    return key


def trust_key_hex(env_file: Path) -> str:
    """PLUGIN_TRUST_KEY from data/dev.env, or a fresh one on first run."""
    if env_file.exists():
        for line in env_file.read_text(encoding="utf-8").splitlines():
            if line.startswith("PLUGIN_TRUST_KEY="):
                return line.split("=", 1)[1].strip()
    return secrets.token_hex(32)


def api_token(data: Path) -> None:
    """data/dev-api-token, generated and printed once."""
    path = data / "dev-api-token"
    if path.exists():
        return
    token = secrets.token_urlsafe(32)
    atomic_write(path, (token + "\n").encode("ascii"), mode=0o600, overwrite=False)
    print(f"dev_prepare: API token (stored in {path}, shown only now): {token}")


def prepare(repo: Path, config: Path) -> int:
    """Run every step; returns the number of example bundles prepared. Raises PluginError, OSError."""
    data = _private_dir(repo / "data")
    key = dev_key(data)
    env_file = data / "dev.env"
    tk_hex = trust_key_hex(env_file)
    tk = parse_trust_key(tk_hex)
    api_token(data)
    public_keys = {KEY_NAME: key.public_key.hex}
    env = f"PLUGIN_TRUST_KEY={tk_hex}\nPLUGIND_SECURITY__PUBLIC_KEYS='{json.dumps(public_keys)}'\n"
    atomic_write(env_file, env.encode("ascii"), mode=0o600)

    settings = load_config(config)
    settings.security.public_keys = {**settings.security.public_keys, **public_keys}
    plugin_dir = settings.plugins.directory
    if not plugin_dir.is_absolute():
        plugin_dir = repo / plugin_dir
    trust_path = settings.security.trust_list_path
    if not trust_path.is_absolute():
        trust_path = repo / trust_path
    if not trust_path.exists():
        # Above every generation the daemon has seen: a re-created list must not read as a rollback.
        from plugind.trust.freshness import TrustListGuard

        seen = TrustListGuard.from_settings(settings).highest(trust_path)
        init_trust_list(trust_path, tk, generation=seen + 1)
    try:
        listed = {(e.name, e.version, e.hash) for e in load_and_decrypt_trust_list(trust_path, tk)}
    except PluginError as exc:
        raise PluginError(
            f"{exc}; the dev trust key in {env_file} does not open it: delete {trust_path}"
        ) from None

    from plugind.trust.bundle import write_bundle

    plugin_dir.mkdir(parents=True, exist_ok=True)
    security = PluginSecurity.from_settings(settings)
    count = 0
    for src in sorted(p.parent for p in (repo / "examples").glob("*/plugin.toml")):
        bundle, manifest, changed = write_bundle(src, plugin_dir)
        digest = bundle_digest(bundle.read_bytes())
        sig = key.sign(signed_message(digest))
        sig_path = signature_path(bundle)
        if not sig_path.exists() or sig_path.read_text(encoding="ascii").strip() != sig.hex:
            atomic_write(sig_path, (sig.hex + "\n").encode("ascii"), mode=0o644)
        vb = security.verify_bundle(bundle)  # the same check the daemon makes, before trusting it
        if (vb.name, vb.version, vb.digest) not in listed:
            add_trusted_plugin(
                trust_path, tk, TrustedPluginEntry(vb.name, vb.version, vb.digest, sig.hex, "dev")
            )
        state = "packed" if changed else "unchanged"
        print(f"dev_prepare: {manifest.name} {manifest.version}: {state}, signed, trusted ({bundle.name})")
        count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors print one line and exit 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout to prepare (default: this one)")
    parser.add_argument("--config", type=Path, help="config file (default REPO/config/plugins.toml)")
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    os.chdir(repo)  # relative paths in the config are relative to the start directory
    try:
        count = prepare(repo, args.config or repo / "config" / "plugins.toml")
    except (PluginError, OSError) as exc:
        print(f"dev_prepare: error: {exc}", file=sys.stderr)
        return 1
    print(f"dev_prepare: {count} example plugin(s) ready; environment in {repo / 'data' / 'dev.env'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
