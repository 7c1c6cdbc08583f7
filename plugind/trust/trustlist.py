"""The trust list: which exact bundles (name, version, hash) the operator trusts, encrypted at rest.

File format (all integers big-endian)::

    magic   8 bytes  b"PLGDTRST"
    version 2 bytes  format version (1)
    nonce  12 bytes  fresh random nonce per write
    rest             AES-256-GCM(key, nonce, JSON payload, aad = magic + version)

The key is 32 bytes, given as 64 hex characters in PLUGIN_TRUST_KEY. A wrong key, a truncated,
empty or altered file raises TrustListError: never an empty list by accident. Writes are atomic
(temp file, fsync, rename, fsync dir) and read-modify-write cycles hold an flock on `PATH.lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from plugind.errors import InvalidKey, TrustListError
from plugind.fsio import atomic_write, stale_temp_files
from plugind.trust.digest import DIGEST_HEX_LEN
from plugind.trust.manifest import NAME_RE
from plugind.trust.signature import PluginSignature
from plugind.trust.version import PluginVersion

MAGIC = b"PLGDTRST"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">8sH")
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
        for field, value in (("name", name), ("version", version), ("hash", hash), ("signature", signature),
                             ("note", note)):
            object.__setattr__(self, field, value)
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


def encrypt_trust_list(entries: Iterable[TrustedPluginEntry], key: bytes) -> bytes:
    """The encrypted file contents for `entries` (one entry per name+version, the last wins)."""
    if len(key) != 32:
        raise InvalidKey("trust-list key must be 32 bytes")
    payload = json.dumps(
        {"entries": [e.to_dict() for e in _sorted(entries)]}, separators=(",", ":"), sort_keys=True
    ).encode("utf-8")
    header = _HEADER.pack(MAGIC, FORMAT_VERSION)
    nonce = os.urandom(_NONCE_LEN)
    return header + nonce + AESGCM(key).encrypt(nonce, payload, header)


def decrypt_trust_list(blob: bytes, key: bytes, *, path: str | None = None) -> list[TrustedPluginEntry]:
    """Decrypt and validate file contents. Raises TrustListError saying what is wrong."""
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
    if version != FORMAT_VERSION:
        raise bad(
            f"unsupported trust list format version {version} (this plugind reads version {FORMAT_VERSION})"
        )
    if len(blob) < _HEADER.size + _NONCE_LEN + _TAG_LEN:
        raise bad("trust list is truncated")
    header = blob[: _HEADER.size]
    nonce = blob[_HEADER.size : _HEADER.size + _NONCE_LEN]
    try:
        payload = AESGCM(key).decrypt(nonce, blob[_HEADER.size + _NONCE_LEN :], header)
    except InvalidTag:
        raise bad(
            f"cannot decrypt the trust list: wrong {TRUST_KEY_ENV}, or the file was truncated or altered"
        ) from None
    try:
        doc = json.loads(payload)
        if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
            raise ValueError("no entries list")
        return [TrustedPluginEntry.from_dict(e) for e in doc["entries"]]
    except ValueError as exc:
        # Authenticated but unreadable: written by a buggy or different tool. Refuse, never guess.
        raise bad(f"trust list payload is invalid: {exc}") from None


def load_and_decrypt_trust_list(path: str | os.PathLike[str], key: bytes) -> list[TrustedPluginEntry]:
    """Read and decrypt the trust list at `path`. Raises TrustListError (missing, wrong key, damaged)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            blob = f.read(MAX_TRUST_LIST_BYTES + 1)
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
    return decrypt_trust_list(blob, key, path=str(path))


def encrypt_and_save_trust_list(
    entries: Iterable[TrustedPluginEntry], path: str | os.PathLike[str], key: bytes
) -> None:
    """Encrypt `entries` with a fresh nonce and replace the file at `path` atomically (mode 0600).

    Temp files left by writers that died mid-save are removed. Raises InvalidKey, OSError.
    """
    path = Path(path)
    blob = encrypt_trust_list(entries, key)
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


def _modify(path: Path, key: bytes, change: Any) -> Any:
    with _locked(path):
        entries = load_and_decrypt_trust_list(path, key)
        new_entries, result = change(entries)
        blob = encrypt_trust_list(new_entries, key)
        for stale in stale_temp_files(path):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        atomic_write(path, blob, mode=0o600)
    return result


def init_trust_list(path: str | os.PathLike[str], key: bytes, *, force: bool = False) -> None:
    """Create an empty trust list. Raises TrustListError when one exists (unless force), OSError."""
    path = Path(path)
    if path.exists() and not force:
        raise TrustListError(
            f"{path}: a trust list already exists; use --force to replace it", path=str(path)
        )
    encrypt_and_save_trust_list([], path, key)


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
