"""Ed25519 keys: public keys configured by value (hex), private key files written 0600 by keygen."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing

from plugind.errors import InvalidKey
from plugind.fsio import atomic_write
from plugind.trust.signature import PluginSignature

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def _parse_hex32(text: str, what: str) -> bytes:
    text = text.strip()
    if not _HEX64.fullmatch(text):
        raise InvalidKey(f"malformed {what}: expected 64 hex characters (32 bytes)")
    return bytes.fromhex(text)


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key; verifies bundle signatures."""

    raw: bytes

    @classmethod
    def from_hex(cls, text: str) -> PublicKey:
        """Parse 64 hex characters. Raises InvalidKey."""
        raw = _parse_hex32(text, "public key")
        try:
            nacl.signing.VerifyKey(raw)
        except (ValueError, nacl.exceptions.CryptoError) as exc:  # pragma: no cover - any 32 bytes parse
            raise InvalidKey(f"malformed public key: {exc}") from None
        return cls(raw)

    @property
    def hex(self) -> str:
        """The key as 64 lowercase hex characters."""
        return self.raw.hex()

    def verify(self, message: bytes, signature: PluginSignature) -> bool:
        """True when `signature` is this key's signature over `message`."""
        try:
            nacl.signing.VerifyKey(self.raw).verify(message, signature.raw)
        except nacl.exceptions.BadSignatureError:
            return False
        return True


class PrivateKey:
    """An Ed25519 signing key. The file holds the 32-byte seed as 64 hex characters, mode 0600."""

    def __init__(self, seed: bytes) -> None:
        self._key = nacl.signing.SigningKey(seed)

    def __repr__(self) -> str:  # never show the seed
        return f"PrivateKey(public={self.public_key.hex[:16]}...)"

    @classmethod
    def generate(cls) -> PrivateKey:
        """A fresh random key."""
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @classmethod
    def from_hex(cls, text: str) -> PrivateKey:
        """Parse a 64-hex-character seed. Raises InvalidKey."""
        return cls(_parse_hex32(text, "private key"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrivateKey:
        """Read a private key file; refuses one that group or others may read. Raises InvalidKey, OSError."""
        path = Path(path)
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & 0o077:
                raise InvalidKey(
                    f"{path}: private key is accessible by others (mode {stat.S_IMODE(mode):04o}); "
                    f"run chmod 600 {path}"
                )
            raw = f.read(256)
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        try:
            return cls.from_hex(text)
        except InvalidKey as exc:
            raise InvalidKey(f"{path}: {exc}") from None

    @property
    def public_key(self) -> PublicKey:
        """The matching public key."""
        return PublicKey(bytes(self._key.verify_key))

    def sign(self, message: bytes) -> PluginSignature:
        """Sign `message`."""
        return PluginSignature(self._key.sign(message).signature)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the key file atomically with mode 0600. Raises FileExistsError unless overwrite, OSError."""
        seed_hex = bytes(self._key).hex()
        atomic_write(Path(path), (seed_hex + "\n").encode("ascii"), mode=0o600, overwrite=overwrite)


def write_public_key(path: str | os.PathLike[str], key: PublicKey, *, overwrite: bool = False) -> None:
    """Write a `.pub` file (64 hex characters). Raises FileExistsError unless overwrite, OSError."""
    atomic_write(Path(path), (key.hex + "\n").encode("ascii"), mode=0o644, overwrite=overwrite)
