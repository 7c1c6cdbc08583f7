"""The trust list: which exact bundles (name, version, hash) the operator trusts, encrypted at rest.

File format (all integers big-endian)::

    magic        8 bytes  b"PLGDTRST"
    version      2 bytes  format version (2; version 1 is still read)
    generation   8 bytes  (version 2 only) bumped on every write: rollback protection
    valid_until  8 bytes  (version 2 only) signed Unix time after which the list is refused, 0 = never
    nonce       12 bytes  fresh random nonce per write
    rest                  AES-256-GCM(key, nonce, JSON payload, aad = the whole header above)

The header is authenticated (it is the AEAD's associated data): changing the generation or the
expiry breaks the tag. A version-1 list reads as generation 0 with no expiry and is written as
version 2 by the next change. The key is 32 bytes, given as 64 hex characters in PLUGIN_TRUST_KEY.
A wrong key, a truncated, empty or altered file raises TrustListError: never an empty list by
accident. Writes are atomic (temp file, fsync, rename, fsync dir) and read-modify-write cycles hold
an flock on `PATH.lock`. Which generations were already seen is `plugind.trust.freshness`'s job.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from plugind.errors import InvalidKey, TrustListError
from plugind.fsio import atomic_write, read_regular, stale_temp_files
from plugind.trust.digest import DIGEST_HEX_LEN
from plugind.trust.manifest import NAME_RE
from plugind.trust.signature import PluginSignature
from plugind.trust.version import PluginVersion

MAGIC = b"PLGDTRST"
FORMAT_VERSION = 2
_HEADER = struct.Struct(">8sH")
_HEADER_V2 = struct.Struct(">8sHQq")
_NONCE_LEN = 12
_TAG_LEN = 16
MAX_TRUST_LIST_BYTES = 64 * 1024 * 1024
TRUST_KEY_ENV = "PLUGIN_TRUST_KEY"
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True, init=False)
class TrustedPluginEntry:
    """One trusted bundle: the exact name, version and SHA3-512 hash, its signature, a note.

    `version` may be given as a `PluginVersion` and `signature` as a `PluginSignature`; both are
    kept as their text (what the trust list stores). Raises ValueError naming the bad field.
    """

    name: str
    version: str
    hash: str
    signature: str
    note: str

    def __init__(
        self,
        name: str,
        version: str | PluginVersion,
        hash: str,
        signature: str | PluginSignature,
        note: str = "",
    ) -> None:
        if isinstance(version, PluginVersion):
            version = str(version)
        if isinstance(signature, PluginSignature):
            signature = signature.hex
        for attr, value in (("name", name), ("version", version), ("hash", hash), ("signature", signature),
                             ("note", note)):
            object.__setattr__(self, attr, value)
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.name, str) or not NAME_RE.fullmatch(self.name):
            raise ValueError(f"trust entry: invalid plugin name {str(self.name)[:80]!r}")
        if not isinstance(self.version, str):
            raise ValueError(
                f"trust entry: version must be a str or PluginVersion, not {type(self.version).__name__}"
            )
        try:
            PluginVersion.parse(self.version)
        except ValueError as exc:
            raise ValueError(f"trust entry: version {exc}") from None
        if (
            not isinstance(self.hash, str)
            or len(self.hash) != DIGEST_HEX_LEN
            or not _HEX.fullmatch(self.hash)
        ):
            raise ValueError("trust entry: hash must be 128 lowercase hex characters (SHA3-512)")
        if (
            not isinstance(self.signature, str)
            or len(self.signature) != 128
            or not _HEX.fullmatch(self.signature)
        ):
            raise ValueError("trust entry: signature must be 128 lowercase hex characters (Ed25519)")
        if not isinstance(self.note, str) or len(self.note) > 1000:
            raise ValueError("trust entry: note must be a string of at most 1000 characters")

    def to_dict(self) -> dict[str, str]:
        """A JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> TrustedPluginEntry:
        """Rebuild from to_dict output. Raises ValueError."""
        if not isinstance(data, dict) or set(data) != {"name", "version", "hash", "signature", "note"}:
            raise ValueError("trust entry: expected keys name, version, hash, signature, note")
        return cls(**data)


def parse_trust_key(text: str | None) -> bytes:
    """The 32-byte trust-list key from 64 hex characters. Raises InvalidKey (never echoes the key)."""
    if text is None or not text.strip():
        raise InvalidKey(f"{TRUST_KEY_ENV} is not set; it must be 64 hex characters (32 bytes)")
    text = text.strip()
    if len(text) != 64 or not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise InvalidKey(
            f"{TRUST_KEY_ENV} is malformed: expected 64 hex characters (32 bytes), got {len(text)} characters"
        )
    return bytes.fromhex(text)


def _sorted(entries: Iterable[TrustedPluginEntry]) -> list[TrustedPluginEntry]:
    unique: dict[tuple[str, str], TrustedPluginEntry] = {}
    for entry in entries:
        unique[(entry.name, entry.version)] = entry
    return sorted(unique.values(), key=lambda e: (e.name, PluginVersion.parse(e.version)._key(), e.version))


@dataclass(frozen=True)
class TrustList:
    """A decrypted trust list: its entries and its authenticated header fields."""

    entries: list[TrustedPluginEntry] = field(default_factory=list)
    generation: int = 0  # 0: a version-1 list (no generation) or a fresh one
    valid_until: int | None = None  # Unix seconds; None: never expires

    def expired(self, now: float | None = None) -> bool:
        """True when the list has an expiry and it has passed."""
        return self.valid_until is not None and (time.time() if now is None else now) >= self.valid_until


def format_time(ts: int) -> str:
    """A Unix time as `2026-11-30T14:55:00Z`."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def encrypt_trust_list(
    entries: Iterable[TrustedPluginEntry],
    key: bytes,
    *,
    generation: int = 0,
    valid_until: int | None = None,
) -> bytes:
    """The encrypted file contents for `entries` (one entry per name+version, the last wins)."""
    if len(key) != 32:
        raise InvalidKey("trust-list key must be 32 bytes")
    if not 0 <= generation < 2**63:
        raise ValueError("trust list generation out of range")
    if valid_until is not None and not 0 < valid_until < 2**62:
        raise ValueError("trust list valid_until out of range")
    payload = json.dumps(
        {"entries": [e.to_dict() for e in _sorted(entries)]}, separators=(",", ":"), sort_keys=True
    ).encode("utf-8")
    header = _HEADER_V2.pack(MAGIC, FORMAT_VERSION, generation, valid_until or 0)
    nonce = os.urandom(_NONCE_LEN)
    return header + nonce + AESGCM(key).encrypt(nonce, payload, header)


def decrypt_trust_list(blob: bytes, key: bytes, *, path: str | None = None) -> list[TrustedPluginEntry]:
    """Decrypt and validate file contents. Raises TrustListError saying what is wrong."""
    return decrypt_trust_document(blob, key, path=path).entries


# The last list decrypted and validated: (key, file contents, result). The daemon re-reads the
# trust list before every load (so `plugind trust add/remove` takes effect at once), and decoding
# it costs ~9 us per entry (9 ms at 1,000 entries, in every load: quadratic over N loads). The same
# bytes under the same key always decode to the same list, so an unchanged file is decoded once;
# any change of a single byte (a new nonce on every write) decodes it afresh. Failures are not kept.
_decoded: tuple[bytes, bytes, TrustList] | None = None
_decoded_lock = threading.Lock()


def decrypt_trust_document(blob: bytes, key: bytes, *, path: str | None = None) -> TrustList:
    """Decrypt and validate file contents, header fields included. Raises TrustListError.

    Expiry is not checked here (the CLI must still read an expired list to renew it): callers that
    decide what loads go through `plugind.trust.freshness.TrustListGuard`.
    """
    global _decoded
    blob, key = bytes(blob), bytes(key)
    with _decoded_lock:
        last = _decoded
    if last is not None and last[1] == blob and hmac.compare_digest(last[0], key):  # the key: a secret
        doc = last[2]
        return TrustList(list(doc.entries), doc.generation, doc.valid_until)
    doc = _decrypt_trust_document(blob, key, path=path)
    with _decoded_lock:
        _decoded = (key, blob, TrustList(list(doc.entries), doc.generation, doc.valid_until))
    return doc


def _decrypt_trust_document(blob: bytes, key: bytes, *, path: str | None = None) -> TrustList:
    where = f"{path}: " if path else ""

    def bad(msg: str) -> TrustListError:
        return TrustListError(f"{where}{msg}", path=path)

    if len(key) != 32:
        raise InvalidKey("trust-list key must be 32 bytes")
    if not blob:
        raise bad(
            "trust list is empty (0 bytes); restore it from a backup or run `plugind trust init --force`"
        )
    if blob[: len(MAGIC)] != MAGIC:
        if len(blob) < len(MAGIC) and MAGIC.startswith(blob):
            raise bad("trust list is truncated (shorter than its header)")
        raise bad("not a plugind trust list (bad magic)")
    if len(blob) < _HEADER.size:
        raise bad("trust list is truncated (shorter than its header)")
    _magic, version = _HEADER.unpack_from(blob)
    generation, valid_until = 0, 0
    if version == 1:
        size = _HEADER.size
    elif version == 2:
        size = _HEADER_V2.size
        if len(blob) < size:
            raise bad("trust list is truncated (shorter than its header)")
        _m, _v, generation, valid_until = _HEADER_V2.unpack_from(blob)
    else:
        raise bad(
            f"unsupported trust list format version {version} (this plugind reads versions 1 and "
            f"{FORMAT_VERSION})"
        )
    if len(blob) < size + _NONCE_LEN + _TAG_LEN:
        raise bad("trust list is truncated")
    header = blob[:size]
    nonce = blob[size : size + _NONCE_LEN]
    try:
        payload = AESGCM(key).decrypt(nonce, blob[size + _NONCE_LEN :], header)
    except InvalidTag:
        raise bad(
            f"cannot decrypt the trust list: wrong {TRUST_KEY_ENV}, or the file was truncated or altered"
        ) from None
    if valid_until < 0:
        raise bad("trust list payload is invalid: negative valid_until")
    try:
        doc = json.loads(payload)
        if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
            raise ValueError("no entries list")
        entries = [TrustedPluginEntry.from_dict(e) for e in doc["entries"]]
    except ValueError as exc:
        # Authenticated but unreadable: written by a buggy or different tool. Refuse, never guess.
        raise bad(f"trust list payload is invalid: {exc}") from None
    return TrustList(entries, generation, valid_until or None)


def load_and_decrypt_trust_list(path: str | os.PathLike[str], key: bytes) -> list[TrustedPluginEntry]:
    """Read and decrypt the trust list at `path`. Raises TrustListError (missing, wrong key, damaged)."""
    return load_trust_document(path, key).entries


def load_trust_document(path: str | os.PathLike[str], key: bytes) -> TrustList:
    """Read and decrypt the trust list at `path`, header fields included. Raises TrustListError."""
    path = Path(path)
    try:
        blob = read_regular(path, MAX_TRUST_LIST_BYTES)
    except FileNotFoundError:
        raise TrustListError(
            f"{path}: trust list not found; create it with `plugind trust init`", path=str(path)
        ) from None
    except OSError as exc:
        raise TrustListError(f"{path}: cannot read the trust list: {exc.strerror}", path=str(path)) from None
    if len(blob) > MAX_TRUST_LIST_BYTES:
        raise TrustListError(
            f"{path}: trust list is larger than {MAX_TRUST_LIST_BYTES} bytes", path=str(path)
        )
    return decrypt_trust_document(blob, key, path=str(path))


def encrypt_and_save_trust_list(
    entries: Iterable[TrustedPluginEntry],
    path: str | os.PathLike[str],
    key: bytes,
    *,
    generation: int = 0,
    valid_until: int | None = None,
) -> None:
    """Encrypt `entries` with a fresh nonce and replace the file at `path` atomically (mode 0600).

    Temp files left by writers that died mid-save are removed. Raises InvalidKey, OSError.
    """
    path = Path(path)
    blob = encrypt_trust_list(entries, key, generation=generation, valid_until=valid_until)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        for stale in stale_temp_files(path):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        atomic_write(path, blob, mode=0o600)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


_KEEP = object()


def modify_trust_list(
    path: str | os.PathLike[str],
    key: bytes,
    change: Callable[[list[TrustedPluginEntry]], tuple[list[TrustedPluginEntry], Any]],
    *,
    valid_until: int | object | None = _KEEP,
    seen: Callable[[TrustList], None] | None = None,
    floor: int = 0,
) -> tuple[TrustList, Any]:
    """Read, change and rewrite the list under its lock, one generation up. Returns (new list, result).

    `seen` is called with the list as read (the CLI's rollback check raises there); the new
    generation is above both the old one and `floor` (the highest generation seen elsewhere).
    `valid_until` replaces the expiry (None: never) or, by default, keeps the list's own.
    Raises TrustListError, InvalidKey, OSError.
    """
    path = Path(path)
    with _locked(path):
        old = load_trust_document(path, key)
        if seen is not None:
            seen(old)
        new_entries, result = change(old.entries)
        until = old.valid_until if valid_until is _KEEP else valid_until
        assert until is None or isinstance(until, int)
        new = TrustList(_sorted(new_entries), max(old.generation, floor) + 1, until)
        blob = encrypt_trust_list(new.entries, key, generation=new.generation, valid_until=until)
        for stale in stale_temp_files(path):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        atomic_write(path, blob, mode=0o600)
    return new, result


def _modify(path: Path, key: bytes, change: Any) -> Any:
    return modify_trust_list(path, key, change)[1]


def init_trust_list(
    path: str | os.PathLike[str],
    key: bytes,
    *,
    force: bool = False,
    generation: int = 1,
    valid_until: int | None = None,
) -> None:
    """Create an empty trust list. Raises TrustListError when one exists (unless force), OSError.

    `generation` should be above every generation seen for this path (the CLI passes its record + 1),
    so a replaced list is never older than the one it replaces.
    """
    path = Path(path)
    if path.exists() and not force:
        raise TrustListError(
            f"{path}: a trust list already exists; use --force to replace it", path=str(path)
        )
    encrypt_and_save_trust_list([], path, key, generation=generation, valid_until=valid_until)


def add_trusted_plugin(
    path: str | os.PathLike[str], key: bytes, entry: TrustedPluginEntry
) -> TrustedPluginEntry | None:
    """Add `entry` (replacing the one with the same name and version); returns the replaced entry.

    Raises TrustListError (no list, wrong key, damaged), OSError.
    """

    def change(
        entries: list[TrustedPluginEntry],
    ) -> tuple[list[TrustedPluginEntry], TrustedPluginEntry | None]:
        old = next((e for e in entries if (e.name, e.version) == (entry.name, entry.version)), None)
        return [*entries, entry], old

    result: TrustedPluginEntry | None = _modify(Path(path), key, change)
    return result


def remove_trusted_plugin(
    path: str | os.PathLike[str], key: bytes, name: str, version: str | None = None
) -> list[TrustedPluginEntry]:
    """Remove every entry of `name` (or only `name` `version`); returns the removed entries.

    Raises TrustListError (nothing matched, no list, wrong key, damaged), OSError.
    """

    def change(
        entries: list[TrustedPluginEntry],
    ) -> tuple[list[TrustedPluginEntry], list[TrustedPluginEntry]]:
        def match(e: TrustedPluginEntry) -> bool:
            return e.name == name and (version is None or e.version == version)

        removed = [e for e in entries if match(e)]
        if not removed:
            what = f"{name} {version}" if version else name
            raise TrustListError(f"{path}: no trust entry for {what}", path=str(path))
        return [e for e in entries if not match(e)], removed

    result: list[TrustedPluginEntry] = _modify(Path(path), key, change)
    return result
