"""`plugind trust genkey|init|add|list|remove|renew`: the encrypted trust list (key from $PLUGIN_TRUST_KEY).

Every write bumps the list's generation; every read is checked against the highest generation
seen (`security.trust_state_file`): a rolled-back copy is refused with a clear error.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from plugind.config import Settings
    from plugind.trust.freshness import TrustListGuard
    from plugind.trust.trustlist import TrustList

_DURATION = re.compile(r"^(\d{1,9})([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds from `30d`, `12h`, `90m`, `3600s` or `3600`. Raises argparse.ArgumentTypeError."""
    match = _DURATION.match(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text[:40]!r}: use e.g. 30d, 12h, 90m or 3600s")
    return int(match.group(1)) * _UNIT[match.group(2)]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the trust command group."""
    p = subparsers.add_parser("trust", help="manage the encrypted trust list (key in $PLUGIN_TRUST_KEY)")
    sub = p.add_subparsers(dest="trust_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser, *, expiry: bool = True) -> None:
        q.add_argument("--config", metavar="FILE", help="config file (default config/plugins.toml)")
        q.add_argument("--file", metavar="FILE", help="trust list path (default security.trust_list_path)")
        if expiry:
            q.add_argument(
                "--valid-for", metavar="DURATION", type=parse_duration,
                help="the written list expires after DURATION (30d, 12h, 90m, 3600s); default: keep "
                "the list's expiry (init: none)",
            )

    g = sub.add_parser("genkey", help="print a fresh random trust-list key for PLUGIN_TRUST_KEY")
    g.set_defaults(func=run_genkey)

    i = sub.add_parser("init", help="create an empty trust list")
    common(i)
    i.add_argument("--force", action="store_true", help="replace an existing list with an empty one")
    i.set_defaults(func=run_init)

    a = sub.add_parser("add", help="trust this exact signed bundle (name, version, hash)")
    common(a)
    a.add_argument("bundle", metavar="BUNDLE")
    a.add_argument("--note", default="", help="free text stored with the entry")
    a.set_defaults(func=run_add)

    ls = sub.add_parser("list", help="show the trusted bundles, the generation and the expiry")
    common(ls, expiry=False)
    ls.set_defaults(func=run_list)

    r = sub.add_parser("remove", help="stop trusting NAME (every version, or only VERSION)")
    common(r)
    r.add_argument("name", metavar="NAME")
    r.add_argument("version", metavar="VERSION", nargs="?")
    r.set_defaults(func=run_remove)

    n = sub.add_parser("renew", help="rewrite the list with a new generation and expiry")
    common(n)
    n.add_argument("--no-expiry", action="store_true", help="the renewed list never expires")
    n.set_defaults(func=run_renew)


def _context(args: argparse.Namespace) -> tuple[Settings, Path, bytes, TrustListGuard]:
    import os
    from pathlib import Path

    from plugind.config import load_config
    from plugind.trust.freshness import TrustListGuard
    from plugind.trust.trustlist import TRUST_KEY_ENV, parse_trust_key

    settings = load_config(args.config)
    path = Path(args.file) if args.file else settings.security.trust_list_path
    key = parse_trust_key(os.environ.get(TRUST_KEY_ENV))
    return settings, path, key, TrustListGuard.from_settings(settings)


def _until(args: argparse.Namespace) -> int | None:
    import time

    seconds = getattr(args, "valid_for", None)
    return int(time.time()) + seconds if seconds else None


def _write(args: argparse.Namespace, change: object) -> tuple[TrustList, object, Path]:
    """Read (refusing a rolled-back list; an expired one may be rewritten), change, write one
    generation up, record the new generation. Raises TrustListError, InvalidKey, OSError."""
    from plugind.trust.trustlist import modify_trust_list

    _settings, path, key, guard = _context(args)
    kw: dict[str, object] = {}
    if getattr(args, "valid_for", None):
        kw["valid_until"] = _until(args)
    elif getattr(args, "no_expiry", False):
        kw["valid_until"] = None
    new, result = modify_trust_list(
        path, key, change,  # type: ignore[arg-type]
        seen=lambda doc: guard.check(doc, path, allow_expired=True),
        floor=guard.highest(path),
        **kw,
    )
    guard.remember(path, new.generation)
    return new, result, path


def _describe(doc: TrustList) -> str:
    from plugind.trust.trustlist import format_time

    text = f"generation {doc.generation}"
    if doc.valid_until is not None:
        text += f", {'expired' if doc.expired() else 'valid until'} {format_time(doc.valid_until)}"
    return text


def run_genkey(args: argparse.Namespace) -> int:
    """Print 64 hex characters from the system's CSPRNG (the format PLUGIN_TRUST_KEY expects)."""
    import secrets

    print(secrets.token_hex(32))
    return 0


def run_init(args: argparse.Namespace) -> int:
    """Create an empty list, one generation above any seen: in the state file, and of the list it
    replaces when that one can be read (with the state file gone, a list started again at 1 let an
    older copy of the replaced one, generation 3, pass for newer). Raises InvalidKey, TrustListError."""
    from plugind.errors import TrustListError
    from plugind.trust.trustlist import init_trust_list, load_trust_document

    _settings, path, key, guard = _context(args)
    replaced = 0
    if args.force:
        with contextlib.suppress(TrustListError):  # none, damaged, or under another key
            replaced = load_trust_document(path, key).generation
    generation = max(guard.highest(path), replaced) + 1
    init_trust_list(path, key, force=args.force, generation=generation, valid_until=_until(args))
    guard.remember(path, generation)
    print(f"{path}: empty trust list created (generation {generation})")
    return 0


def run_add(args: argparse.Namespace) -> int:
    """Verify BUNDLE's signature under a configured key, then list its name, version and hash.

    Raises InvalidKey, TrustListError, SignatureInvalid (no or bad signature), BundleError.
    """
    from plugind.errors import SignatureInvalid
    from plugind.trust.security import PluginSecurity
    from plugind.trust.signature import signature_path
    from plugind.trust.trustlist import TrustedPluginEntry, load_trust_document

    settings, path, key, guard = _context(args)
    guard.check(load_trust_document(path, key), path, allow_expired=True)  # fail early
    vb = PluginSecurity.from_settings(settings).verify_bundle(args.bundle)
    if vb.signature is None or vb.key_name is None:
        raise SignatureInvalid(
            f"{args.bundle}: no signature ({signature_path(args.bundle)} is missing); "
            "sign it first with `plugind sign BUNDLE --key FILE`",
            plugin=vb.name,
            bundle=str(args.bundle),
        )
    entry = TrustedPluginEntry(vb.name, vb.version, vb.digest, vb.signature.hex, args.note)

    def change(entries: list[TrustedPluginEntry]) -> tuple[list[TrustedPluginEntry], object]:
        old = next((e for e in entries if (e.name, e.version) == (entry.name, entry.version)), None)
        return [*entries, entry], old

    new, old, _path = _write(args, change)
    verb = "replaced" if old is not None and old != entry else "trusted"
    print(f"{verb}: {vb.name} {vb.version} sha3-512:{vb.digest[:32]}... (signed by {vb.key_name}); "
          f"{_describe(new)}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Print the entries. Raises InvalidKey, TrustListError (rolled back)."""
    from plugind.trust.trustlist import load_trust_document

    _settings, path, key, guard = _context(args)
    doc = load_trust_document(path, key)
    guard.check(doc, path, allow_expired=True)
    print(f"{path}: {_describe(doc)}")
    if not doc.entries:
        print(f"{path}: no trusted plugins")
        return 0
    print(f"{'NAME':<24} {'VERSION':<12} {'HASH (sha3-512)':<34} NOTE")
    for e in doc.entries:
        print(f"{e.name:<24} {e.version:<12} {e.hash[:32]:<34} {e.note}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    """Remove entries. Raises InvalidKey, TrustListError (nothing matched, rolled back)."""
    from plugind.errors import TrustListError
    from plugind.trust.trustlist import TrustedPluginEntry

    def change(entries: list[TrustedPluginEntry]) -> tuple[list[TrustedPluginEntry], object]:
        def match(e: TrustedPluginEntry) -> bool:
            return e.name == args.name and (args.version is None or e.version == args.version)

        removed = [e for e in entries if match(e)]
        if not removed:
            what = f"{args.name} {args.version}" if args.version else args.name
            raise TrustListError(f"no trust entry for {what}")
        return [e for e in entries if not match(e)], removed

    new, removed, _path = _write(args, change)
    assert isinstance(removed, list)
    for e in removed:
        print(f"removed: {e.name} {e.version}")
    print(f"now {_describe(new)}")
    return 0


def run_renew(args: argparse.Namespace) -> int:
    """Rewrite the list unchanged but one generation up, with a new expiry. Raises as run_remove."""
    if not args.valid_for and not args.no_expiry:
        from plugind.errors import ConfigError

        raise ConfigError("trust renew: give --valid-for DURATION (e.g. 30d) or --no-expiry")
    new, _result, path = _write(args, lambda entries: (entries, None))
    print(f"{path}: renewed, {_describe(new)}")
    return 0
