"""Ed25519 bundle signatures: the `.sig` file holds 128 hex characters (64 signature bytes)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from plugind.errors import SignatureInvalid
from plugind.fsio import NotARegularFile, read_regular

_SIG_HEX = re.compile(r"[0-9a-fA-F]{128}")
SIG_SUFFIX = ".sig"
MAX_SIG_FILE_BYTES = 1024


@dataclass(frozen=True)
class PluginSignature:
    """A 64-byte Ed25519 signature over a bundle digest (see digest.signed_message)."""

    raw: bytes

    @classmethod
    def from_hex(cls, text: str, *, bundle: str | None = None) -> PluginSignature:
        """Parse 128 hex characters (surrounding whitespace allowed). Raises SignatureInvalid."""
        text = text.strip()
        if not _SIG_HEX.fullmatch(text):
            raise SignatureInvalid(
                "not a valid signature: expected 128 hex characters (an Ed25519 signature)",
                bundle=bundle,
            )
        return cls(bytes.fromhex(text))

    @property
    def hex(self) -> str:
        """The signature as 128 lowercase hex characters."""
        return self.raw.hex()


def signature_path(bundle: str | Path) -> Path:
    """Where the signature of `bundle` lives: next to it, with `.sig` appended."""
    bundle = Path(bundle)
    return bundle.with_name(bundle.name + SIG_SUFFIX)


def read_signature_file(bundle: str | Path) -> PluginSignature | None:
    """The signature next to `bundle`, or None when there is none. Raises SignatureInvalid, OSError."""
    path = signature_path(bundle)
    try:
        raw = read_regular(path, MAX_SIG_FILE_BYTES)
    except FileNotFoundError:
        return None
    except NotARegularFile:
        raise SignatureInvalid(f"{path.name}: not a signature file (not a regular file)",
                               bundle=str(bundle)) from None
    if len(raw) > MAX_SIG_FILE_BYTES:
        raise SignatureInvalid(f"{path.name}: not a signature file (too large)", bundle=str(bundle))
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    try:
        return PluginSignature.from_hex(text, bundle=str(bundle))
    except SignatureInvalid as exc:
        raise SignatureInvalid(f"{path.name}: {exc}", bundle=str(bundle)) from None
