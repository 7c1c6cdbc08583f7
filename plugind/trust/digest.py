"""Bundle digests: SHA3-512 of the bundle bytes, as lowercase hex, and the message that gets signed."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from plugind.errors import BundleError

DIGEST_HEX_LEN = 128


def bundle_digest(data: bytes | bytearray | memoryview) -> str:
    """SHA3-512 of `data` as 128 lowercase hex characters."""
    return hashlib.sha3_512(data).hexdigest()


def signed_message(digest_hex: str) -> bytes:
    """What an Ed25519 bundle signature covers: the ASCII bytes of the 128-char lowercase hex digest.

    Raises ValueError when `digest_hex` is not a SHA3-512 hex digest.
    """
    if len(digest_hex) != DIGEST_HEX_LEN or digest_hex.strip("0123456789abcdef"):
        raise ValueError("a bundle digest is 128 lowercase hex characters")
    return digest_hex.encode("ascii")


def read_bundle_file(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """Read a bundle file ONCE into memory, refusing it before reading when it exceeds `max_bytes`.

    Raises BundleError (not a regular file, too large) or OSError.
    """
    path = Path(path)
    # O_NONBLOCK: opening a FIFO planted in the plugin directory must not hang the caller.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{path.name}: not a regular file", bundle=str(path))
        if st.st_size > max_bytes:
            raise BundleError(
                f"{path.name}: {st.st_size} bytes is over the limit of {max_bytes} "
                "(plugins.max_bundle_bytes)",
                bundle=str(path),
            )
        # +1 catches a file that grew after fstat without reading more than the limit allows.
        data = f.read(min(st.st_size, max_bytes) + 1)
    if len(data) > max_bytes:
        raise BundleError(
            f"{path.name}: larger than the limit of {max_bytes} bytes (plugins.max_bundle_bytes)",
            bundle=str(path),
        )
    return data


def read_and_digest(path: str | os.PathLike[str], max_bytes: int) -> tuple[bytes, str]:
    """The verify path's first step: the bundle bytes and their digest. Raises as read_bundle_file."""
    data = read_bundle_file(path, max_bytes)
    return data, bundle_digest(data)
