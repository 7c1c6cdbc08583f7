"""Fixtures for the trust tests: plugin trees, keys, a hand-written zip writer for malicious bundles."""

from __future__ import annotations

import os
import stat
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from plugind.trust import PrivateKey, PublicKey

MANIFEST = """\
[plugin]
name = "{name}"
version = "{version}"
entrypoint = "{entrypoint}"
api = 1
description = "test plugin"
"""


def write_plugin(
    root: Path,
    name: str = "hello",
    version: str = "1.0.0",
    *,
    entrypoint: str | None = None,
    files: dict[str, bytes] | None = None,
) -> Path:
    """A plugin source tree under root/name; returns its path."""
    src = root / name
    src.mkdir(parents=True)
    (src / "plugin.toml").write_text(
        MANIFEST.format(name=name, version=version, entrypoint=entrypoint or "hello:plugin")
    )
    default = {"hello.py": b"plugin = None\n", "pkg/util.py": b"X = 1\n", "data/table.bin": bytes(range(256))}
    for rel, content in (files if files is not None else default).items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return src


@dataclass
class RawEntry:
    """A zip entry written byte by byte, so headers can say whatever a test needs."""

    name: str
    data: bytes = b""  # the bytes stored (already compressed when method is 8)
    method: int = 0  # 0 stored, 8 deflated
    crc: int | None = None  # default: CRC of data (stored only)
    size: int | None = None  # declared uncompressed size; default len(data)
    mode: int = stat.S_IFREG | 0o644


def raw_zip(entries: list[RawEntry], *, claimed_count: int | None = None) -> bytes:
    """Build a zip archive by hand; `claimed_count` lets the end record lie about the entry count."""
    out = bytearray()
    central = bytearray()
    for e in entries:
        name = e.name.encode("utf-8")
        crc = e.crc if e.crc is not None else zlib.crc32(e.data)
        size = e.size if e.size is not None else len(e.data)
        offset = len(out)
        flags = 0x800
        out += struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, flags, e.method, 0, 33, crc, len(e.data), size, len(name), 0
        )
        out += name + e.data
        central += struct.pack(
            "<4s6H3L5H2L",
            b"PK\x01\x02",
            (3 << 8) | 20,
            20,
            flags,
            e.method,
            0,
            33,
            crc,
            len(e.data),
            size,
            len(name),
            0,
            0,
            0,
            0,
            e.mode << 16,
            offset,
        )
        central += name
    count = len(entries) if claimed_count is None else claimed_count
    cd_offset = len(out)
    out += central
    if count > 0xFFFF:
        # Zip64 end record + locator; the classic record then says 0xFFFF, as real tools write it.
        z64 = len(out)
        out += struct.pack(
            "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, len(central), cd_offset
        )
        out += struct.pack("<4sLQL", b"PK\x06\x07", 0, z64, 1)
        count = 0xFFFF
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(central), cd_offset, 0)
    return bytes(out)


def zeros_deflate(total: int) -> tuple[bytes, int]:
    """A raw deflate stream that inflates to `total` zero bytes (a few KB per GB), and its CRC.

    Built cheaply: one 1 MiB block compressed once and repeated (a full flush makes each repetition
    byte-identical and byte-aligned).
    """
    mib = 1 << 20
    assert total % mib == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(mib)) + c.flush(zlib.Z_FULL_FLUSH)
    stream = block * (total // mib) + c.flush(zlib.Z_FINISH)
    crc = 0
    zero = bytes(mib)
    for _ in range(total // mib):
        crc = zlib.crc32(zero, crc)
    return stream, crc


def manifest_entry(name: str = "hello", version: str = "1.0.0") -> list[RawEntry]:
    """A valid manifest and entrypoint module as raw entries."""
    toml = MANIFEST.format(name=name, version=version, entrypoint="hello:plugin").encode()
    return [RawEntry("hello.py", b"plugin = None\n"), RawEntry("plugin.toml", toml)]


@pytest.fixture
def plugin_src(tmp_path: Path) -> Path:
    return write_plugin(tmp_path / "src")


@pytest.fixture(scope="session")
def signing_key() -> PrivateKey:
    return PrivateKey.generate()


@pytest.fixture(scope="session")
def other_key() -> PrivateKey:
    return PrivateKey.generate()


@pytest.fixture
def trust_key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def public_keys(signing_key: PrivateKey) -> dict[str, PublicKey]:
    return {"release": signing_key.public_key}


@pytest.fixture
def make_plugin() -> Callable[..., Path]:
    return write_plugin
