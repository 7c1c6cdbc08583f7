"""PluginSecurity: digest, signature, trust list and policy give a verdict before any plugin code runs."""

from __future__ import annotations

import enum
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from plugind import fsio
from plugind.errors import BundleError, InvalidKey, SignatureInvalid, UntrustedPlugin
from plugind.fsio import FileIdentity, file_identity
from plugind.trust.bundle import BundleContents, BundleLimits, inspect_bundle
from plugind.trust.digest import bundle_digest, read_bundle_file, signed_message
from plugind.trust.freshness import TrustListGuard
from plugind.trust.keys import PublicKey
from plugind.trust.manifest import Manifest
from plugind.trust.signature import PluginSignature, read_signature_file
from plugind.trust.trustlist import (
    TRUST_KEY_ENV,
    TrustedPluginEntry,
    load_trust_document,
    parse_trust_key,
)
from plugind.trust.version import PluginVersion

if TYPE_CHECKING:
    from plugind.config import Settings


class TrustLevel(enum.StrEnum):
    """How far a bundle is trusted."""

    TRUSTED = "trusted"  # valid signature under a configured key AND exact name+version+hash listed
    SIGNED = "signed"  # valid signature under a configured key, not on the trust list
    UNTRUSTED = "untrusted"  # no signature

    def __str__(self) -> str:
        return self.value


_RANK = {TrustLevel.UNTRUSTED: 0, TrustLevel.SIGNED: 1, TrustLevel.TRUSTED: 2}


@dataclass(frozen=True)
class SecurityPolicy:
    """What may load: a bundle whose level is at least `min_level`, the same rule for auto-load,
    explicit load and every restart. A bundle whose signature does not verify never loads.

    `only_trusted` is the deprecated spelling: True is min_level TRUSTED, False is SIGNED.
    """

    only_trusted: bool | None = None
    min_level: TrustLevel | None = None

    def __post_init__(self) -> None:
        if self.min_level is None:
            level = TrustLevel.SIGNED if self.only_trusted is False else TrustLevel.TRUSTED
            object.__setattr__(self, "min_level", level)
        else:
            object.__setattr__(self, "min_level", TrustLevel(self.min_level))

    @property
    def level(self) -> TrustLevel:
        """The lowest level that loads."""
        assert self.min_level is not None
        return self.min_level

    @classmethod
    def from_settings(cls, settings: Settings) -> SecurityPolicy:
        """The policy of `settings.security`."""
        return cls(min_level=TrustLevel(settings.security.min_trust_level))

    def allows(self, level: TrustLevel | str) -> bool:
        """True when a bundle of `level` may load ("invalid" and unknown levels never do)."""
        try:
            return _RANK[TrustLevel(level)] >= _RANK[self.level]
        except ValueError:
            return False

    @property
    def needs_trust_list(self) -> bool:
        """True when nothing can load without the trust list (min level TRUSTED)."""
        return self.level is TrustLevel.TRUSTED


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle read once into memory and verified; `data` are the bytes to extract from."""

    name: str
    version: str
    digest: str
    trust_level: TrustLevel
    key_name: str | None
    manifest: Manifest
    data: bytes
    path: Path | None
    signature: PluginSignature | None
    contents: BundleContents
    limits: BundleLimits
    trust_entry: TrustedPluginEntry | None = None

    @property
    def plugin_version(self) -> PluginVersion:
        """The version, parsed."""
        return PluginVersion.parse(self.version)

    def __repr__(self) -> str:  # keep megabytes of bundle bytes out of logs and tracebacks
        level = self.trust_level.value
        return f"VerifiedBundle({self.name} {self.version}, {level}, digest={self.digest[:16]}...)"


def check_trust_key(settings: Settings, value: str | None = None) -> None:
    """Fail closed at start: raise InvalidKey (one line naming PLUGIN_TRUST_KEY and how to set it)
    when the policy needs the trust list (min_trust_level "trusted") and the key is unset, or when
    a key is set but malformed. `value` defaults to $PLUGIN_TRUST_KEY."""
    if value is None:
        value = os.environ.get(TRUST_KEY_ENV)
    policy = SecurityPolicy.from_settings(settings)
    how = f"generate one with `plugind trust genkey` and export {TRUST_KEY_ENV}=<64 hex characters>"
    if value is None or not value.strip():
        if not policy.needs_trust_list:
            return
        raise InvalidKey(
            f"{TRUST_KEY_ENV} is not set: security.min_trust_level = \"trusted\" needs the trust list and "
            f"its key; {how} (the key that encrypted {settings.security.trust_list_path}), or set "
            "security.min_trust_level = \"signed\" to run without a trust list"
        )
    try:
        parse_trust_key(value)
    except InvalidKey as exc:
        raise InvalidKey(f"{exc}; {how}") from None


class PluginSecurity:
    """Verifies bundles against the configured public keys, the trust list and the policy."""

    def __init__(
        self,
        public_keys: Mapping[str, PublicKey],
        *,
        policy: SecurityPolicy | None = None,
        trust_entries: list[TrustedPluginEntry] | None = None,
        limits: BundleLimits | None = None,
    ) -> None:
        self.public_keys = dict(sorted(public_keys.items()))
        self.policy = policy or SecurityPolicy()
        # None: no trust list consulted (no key given), so nothing can be TRUSTED.
        self.trust_entries = trust_entries
        self.limits = limits or BundleLimits()
        # The trust list's valid_until (Unix time) when one was read and it expires, else None.
        self.trust_valid_until: int | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        trust_key: str | bytes | None = None,
        *,
        trust_list_path: str | os.PathLike[str] | None = None,
        guard: TrustListGuard | None = None,
    ) -> PluginSecurity:
        """Build from the config; `trust_key` (hex or bytes, usually $PLUGIN_TRUST_KEY) opens the trust list.

        Without a key the trust list is not read and no bundle can be TRUSTED. The list read must not
        be older than one `guard` (default: one on `security.trust_state_file`) has seen, nor
        expired. Raises InvalidKey (malformed public key or trust key), TrustListError (missing,
        wrong key, damaged, rolled back or expired list).
        """
        keys = {name: PublicKey.from_hex(hexkey) for name, hexkey in settings.security.public_keys.items()}
        entries = None
        valid_until = None
        if trust_key is not None:
            key = trust_key if isinstance(trust_key, bytes) else parse_trust_key(trust_key)
            path = trust_list_path if trust_list_path is not None else settings.security.trust_list_path
            doc = load_trust_document(path, key)
            (guard or TrustListGuard.from_settings(settings)).check(doc, path)
            entries = doc.entries
            valid_until = doc.valid_until
        security = cls(
            keys,
            policy=SecurityPolicy.from_settings(settings),
            trust_entries=entries,
            limits=BundleLimits.from_settings(settings),
        )
        security.trust_valid_until = valid_until
        return security

    @classmethod
    def from_environment(cls, settings: Settings, *, guard: TrustListGuard | None = None) -> PluginSecurity:
        """As from_settings, with the trust key from $PLUGIN_TRUST_KEY when it is set."""
        return cls.from_settings(settings, os.environ.get(TRUST_KEY_ENV) or None, guard=guard)

    def verify_bundle(self, path: str | os.PathLike[str]) -> VerifiedBundle:
        """Read the bundle at `path` ONCE and verify it; everything after works from those bytes.

        The signature is read from `path.sig`. Raises BundleError (too large, unsafe or invalid
        zip, bad manifest, manifest disagreeing with its trust entry), SignatureInvalid (a signature
        that no configured key verifies, malformed .sig), OSError.
        """
        path = Path(path)
        data = read_bundle_file(path, self.limits.max_bundle_bytes)
        signature = read_signature_file(path)
        return self.verify_bytes(data, signature, path=path)

    def verify_bytes(
        self, data: bytes, signature: PluginSignature | None, *, path: Path | None = None
    ) -> VerifiedBundle:
        """Verify bundle bytes held in memory with an optional signature. Raises as verify_bundle."""
        label = str(path) if path else "bundle"
        shown = path.name if path else "bundle"
        digest = bundle_digest(data)
        key_name = None
        if signature is not None:
            key_name = self._signer(digest, signature)
            if key_name is None:
                raise SignatureInvalid(self._why_invalid(shown, digest, signature), bundle=label)
        contents = _inspect(data, digest, self.limits, label)
        manifest = contents.manifest
        entry = self._entry_for(digest, manifest, label)
        if key_name is None:
            level = TrustLevel.UNTRUSTED
        elif entry is not None:
            level = TrustLevel.TRUSTED
        else:
            level = TrustLevel.SIGNED
        return VerifiedBundle(
            name=manifest.name,
            version=manifest.version,
            digest=digest,
            trust_level=level,
            key_name=key_name,
            manifest=manifest,
            data=data,
            path=path,
            signature=signature,
            contents=contents,
            limits=self.limits,
            trust_entry=entry if key_name is not None else None,
        )

    def check_policy(self, vb: VerifiedBundle) -> None:
        """Raise UntrustedPlugin when the policy does not let `vb` load."""
        if self.policy.allows(vb.trust_level):
            return
        if vb.trust_level is TrustLevel.SIGNED:
            how = (
                "its hash is not on the trust list; add it with "
                f"`plugind trust add {vb.path or vb.manifest.bundle_filename}`"
                if self.trust_entries is not None
                else f"the trust list was not consulted ({TRUST_KEY_ENV} is not set)"
            )
        else:
            how = (
                "it has no signature; sign it with `plugind sign BUNDLE --key FILE`, then `plugind trust add`"
            )
        if self.policy.level is TrustLevel.SIGNED:
            how = "it has no signature; sign it with `plugind sign BUNDLE --key FILE`"
        raise UntrustedPlugin(
            f"{vb.name} {vb.version} is {vb.trust_level.value} and security.min_trust_level is "
            f"{self.policy.level.value!r}: {how}",
            plugin=vb.name,
            level=vb.trust_level.value,
        )

    def verify_and_check(self, path: str | os.PathLike[str]) -> VerifiedBundle:
        """verify_bundle then check_policy. Raises as both."""
        vb = self.verify_bundle(path)
        self.check_policy(vb)
        return vb

    # --- helpers ---------------------------------------------------------------------------------

    def _signer(self, digest: str, signature: PluginSignature) -> str | None:
        message = signed_message(digest)
        for name, key in self.public_keys.items():
            if key.verify(message, signature):
                return name
        return None

    def _why_invalid(self, shown: str, digest: str, signature: PluginSignature) -> str:
        # Ed25519 cannot tell which key made a signature, so use what we know: a listed entry with
        # this very signature means the bytes changed after signing.
        if self.trust_entries:
            listed = next((e for e in self.trust_entries if e.signature == signature.hex), None)
            if listed is not None and listed.hash != digest:
                return (
                    f"{shown} was modified after signing: its digest differs from the one trusted for "
                    f"{listed.name} {listed.version}; rebuild or re-download it"
                )
        if not self.public_keys:
            return (
                f"{shown}: cannot verify the signature: no public keys are configured (security.public_keys)"
            )
        names = ", ".join(self.public_keys)
        return (
            f"{shown}: the signature does not verify under any configured key ({names}): the bundle was "
            "modified after signing, or it was signed by a key that is not configured"
        )

    def _entry_for(self, digest: str, manifest: Manifest, label: str) -> TrustedPluginEntry | None:
        if self.trust_entries is None:
            return None
        for entry in self.trust_entries:
            if entry.hash != digest:
                continue
            if (entry.name, entry.version) != (manifest.name, manifest.version):
                raise BundleError(
                    f"manifest says {manifest.name} {manifest.version} but the trust entry for this hash "
                    f"is {entry.name} {entry.version}; refusing the mismatch",
                    plugin=manifest.name,
                    bundle=label,
                )
            return entry
        return None


class SecuritySource:
    """`PluginSecurity.from_environment(settings, guard=guard)` for every load and scan, built again
    only when something it was built from may have changed.

    Reading, decrypting and checking the trust list cost ~0.2-0.6 ms of every load. The security
    built from it is kept while the trust-list file has the same device, inode, size, mode, owner,
    mtime and ctime (any write, rename, `cp -p` or `touch` changes the ctime, which no user can
    set), the same $PLUGIN_TRUST_KEY and the same security settings, and until the list's
    `valid_until` passes (then it is read again, and refused as expired). It is kept only when the
    file did not change while it was read and its last change was at least fsio.SETTLE_S before: a list
    changed twice within one clock tick is read again at every refresh until it has settled.
    Anything else reads the list again, exactly as `from_environment` does, raising as it does.
    Thread-safe.
    """

    def __init__(self, settings: Settings, *, guard: TrustListGuard | None = None) -> None:
        self.settings = settings
        self.guard = guard
        self._lock = threading.Lock()
        # (inputs, trust-list identity, security) of the last build that may be reused, or None.
        self._kept: tuple[tuple[object, ...], FileIdentity | None, PluginSecurity] | None = None
        self.reads = 0  # how many times the trust list was read and checked (tests, diagnostics)

    def _inputs(self, key: str | None, path: str) -> tuple[object, ...]:
        sec, plugins = self.settings.security, self.settings.plugins
        return (key, path, sec.min_trust_level, tuple(sorted(sec.public_keys.items())),
                plugins.max_bundle_bytes, plugins.max_unpacked_bytes, plugins.max_files)

    def kept(self) -> PluginSecurity | None:
        """The PluginSecurity a call would return without reading the list (the kept one, still
        valid: a stat of the file), else None. Never reads the list, never raises for it and never
        waits: None while another thread holds the lock (reading it, maybe)."""
        key = os.environ.get(TRUST_KEY_ENV) or None
        path = str(self.settings.security.trust_list_path)
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._reusable(key, path, self._inputs(key, path))
        finally:
            self._lock.release()

    def _reusable(self, key: str | None, path: str, inputs: tuple[object, ...]) -> PluginSecurity | None:
        # Under _lock: the kept security while it is still valid, else None.
        kept = self._kept
        if kept is None or kept[0] != inputs:
            return None
        security = kept[2]
        if key is None:  # no list read: the settings alone
            return security
        expires = security.trust_valid_until
        if (expires is None or time.time() < expires) and file_identity(path) == kept[1]:
            return security
        return None

    def __call__(self) -> PluginSecurity:
        """The current PluginSecurity. Raises InvalidKey, TrustListError as `from_environment`."""
        key = os.environ.get(TRUST_KEY_ENV) or None
        path = str(self.settings.security.trust_list_path)
        inputs = self._inputs(key, path)
        with self._lock:
            reusable = self._reusable(key, path, inputs)
            if reusable is not None:
                return reusable
            self._kept = None
            before = file_identity(path) if key is not None else None
            started = time.time_ns()
            if key is not None:
                self.reads += 1
            security = PluginSecurity.from_settings(self.settings, key, trust_list_path=path,
                                                    guard=self.guard)
            if key is not None:
                after = file_identity(path)
                if after != before or not fsio.settled(after, started):
                    return security
            self._kept = (inputs, before, security)
            return security


# inspect_bundle is a pure function of the bundle's bytes and the limits: what it found for bytes
# already inspected (the same SHA3-512 digest and length, the same limits) is reused instead of
# parsing the zip and the manifest again at every load of an unchanged bundle. Keyed by content, so
# a bundle that changed in any byte is inspected afresh; only successes are kept (a refused bundle
# is refused again, the same way); the signature, the trust entry and the policy are still checked
# at every verification. The values are immutable (frozen dataclasses of str, int and tuples).
INSPECTED_MAX = 256
_inspected: OrderedDict[tuple[str, int, BundleLimits], BundleContents] = OrderedDict()
_inspected_lock = threading.Lock()


def _inspect(data: bytes, digest: str, limits: BundleLimits, label: str) -> BundleContents:
    key = (digest, len(data), limits)
    with _inspected_lock:
        found = _inspected.get(key)
        if found is not None:
            _inspected.move_to_end(key)
            return found
    contents = inspect_bundle(data, limits, bundle=label)
    with _inspected_lock:
        _inspected[key] = contents
        while len(_inspected) > INSPECTED_MAX:
            _inspected.popitem(last=False)
    return contents
