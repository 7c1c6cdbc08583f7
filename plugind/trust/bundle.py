"""Bundles: reproducible packing of a plugin tree, safe reading of a zip from bytes, safe extraction.

A bundle is a zip with sorted entries, fixed timestamps (1980-01-01) and fixed permissions, so the
same tree always gives the same bytes. Reading works from the bytes in memory (the very bytes that
were digested and verified) and refuses anything a well-formed bundle never holds.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from plugind.errors import BundleError
from plugind.trust.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest

if TYPE_CHECKING:
    from plugind.config import Settings
    from plugind.trust.security import VerifiedBundle

BUNDLE_SUFFIX = ".plugin"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = 0o644
_EXEC_MODE = 0o755
_CHUNK = 1 << 20
_MAX_NAME_LEN = 1024
# How deep a path in a bundle may go (directories above a file). A directory is made for every
# parent of a file, so `max_files` counts files and directories together: an 85 KB bundle of 42
# entries unpacked into 20,400 directories and 80 MB.
MAX_PATH_DEPTH = 32
_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


@dataclass(frozen=True)
class BundleLimits:
    """What a bundle may hold; defaults are the config defaults (plugins.max_*)."""

    max_bundle_bytes: int = 64 * 1024 * 1024
    max_unpacked_bytes: int = 256 * 1024 * 1024
    max_files: int = 2000

    @classmethod
    def from_settings(cls, settings: Settings) -> BundleLimits:
        """The limits of `settings.plugins`."""
        p = settings.plugins
        return cls(p.max_bundle_bytes, p.max_unpacked_bytes, p.max_files)


@dataclass(frozen=True)
class BundleEntry:
    """One regular file in a bundle."""

    name: str
    size: int
    executable: bool


@dataclass(frozen=True)
class BundleContents:
    """What inspect_bundle found: the manifest and the (validated) file entries."""

    manifest: Manifest
    entries: tuple[BundleEntry, ...]

    @property
    def unpacked_bytes(self) -> int:
        """Total declared size of all files."""
        return sum(e.size for e in self.entries)


# --- packing -------------------------------------------------------------------------------------


def _skipped(name: str, is_dir: bool) -> bool:
    # Byte-code caches and dotfiles (.git, .venv, editor files) never belong in a bundle.
    if name.startswith("."):
        return True
    if is_dir:
        return name == "__pycache__"
    return name.endswith((".pyc", ".pyo"))


def _collect(src: Path) -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []

    def walk(directory: Path, prefix: str) -> None:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = prefix + entry.name
            st = entry.stat(follow_symlinks=False)
            if _skipped(entry.name, stat.S_ISDIR(st.st_mode)):
                continue
            if stat.S_ISLNK(st.st_mode):
                raise BundleError(
                    f"{rel}: is a symbolic link; a bundle holds regular files only",
                    bundle=str(src),
                    entry=rel,
                )
            if stat.S_ISDIR(st.st_mode):
                walk(Path(entry.path), rel + "/")
            elif stat.S_ISREG(st.st_mode):
                _check_name(rel, bundle=str(src))
                files.append((rel, Path(entry.path)))
            else:
                raise BundleError(
                    f"{rel}: is a special file (device, fifo or socket); a bundle holds regular files only",
                    bundle=str(src),
                    entry=rel,
                )

    walk(src, "")
    # Sort on the full path so nested files order the same on every file system.
    files.sort(key=lambda item: item[0].encode("utf-8"))
    return files


def pack_directory(src: str | os.PathLike[str]) -> tuple[Manifest, bytes]:
    """Build the bundle of a plugin source tree in memory: (manifest, zip bytes).

    Identical trees (same relative paths and contents) give identical bytes. Raises BundleError
    (no or invalid plugin.toml, symlinks, special files, bad names, missing entrypoint) or OSError.
    """
    src = Path(src)
    if not src.is_dir():
        raise BundleError(f"{src}: not a directory", bundle=str(src))
    try:
        manifest_bytes = (src / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        raise BundleError(
            f"{src}: no {MANIFEST_NAME}; create one or run `plugind new NAME`",
            bundle=str(src),
            entry=MANIFEST_NAME,
        ) from None
    manifest = Manifest.from_toml(manifest_bytes, bundle=str(src))
    files = _collect(src)
    names = {rel for rel, _ in files}
    _check_entrypoint(manifest, names, str(src))
    exec_path = manifest.entrypoint_files()[0] if manifest.is_exec else None
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for rel, path in files:
            info = zipfile.ZipInfo(rel, date_time=ZIP_EPOCH)
            info.create_system = 3  # unix, so external_attr carries the mode
            mode = _EXEC_MODE if rel == exec_path else _FILE_MODE
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)
    return manifest, buf.getvalue()


def write_bundle(
    src: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
) -> tuple[Path, Manifest, bool]:
    """Pack `src` and write NAME-VERSION.plugin (into `out` if it is or ends like a directory, else at `out`).

    Returns (path, manifest, changed); an identical existing file is left untouched. Raises as
    pack_directory.
    """
    from plugind.fsio import atomic_write

    manifest, data = pack_directory(src)
    if out is None:
        target = Path.cwd() / manifest.bundle_filename
    elif Path(out).is_dir() or str(out).endswith("/"):
        Path(out).mkdir(parents=True, exist_ok=True)
        target = Path(out) / manifest.bundle_filename
    else:
        target = Path(out)
    try:
        if target.read_bytes() == data:
            return target, manifest, False
    except FileNotFoundError:
        pass
    atomic_write(target, data, mode=0o644)
    return target, manifest, True


# --- reading -------------------------------------------------------------------------------------


def _check_name(name: str, *, bundle: str | None) -> None:
    def bad(why: str) -> BundleError:
        return BundleError(f"entry {name[:200]!r}: {why}", bundle=bundle, entry=name[:200])

    if not name or len(name) > _MAX_NAME_LEN:
        raise bad("empty or overlong name")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise bad("control character in name")
    if "\\" in name:
        raise bad("backslash in name (path separator on other systems)")
    if name.startswith("/"):
        raise bad("absolute path")
    parts = name.rstrip("/").split("/")
    if any(p == ".." for p in parts):
        raise bad("path traversal ('..')")
    if any(p in ("", ".") for p in parts):
        raise bad("empty or '.' path component")
    if ":" in parts[0] and len(parts[0]) == 2:
        raise bad("drive letter in name")


def _entry_count(data: bytes) -> int | None:
    # Read the count from the end-of-central-directory record (zip64 when the classic one is
    # saturated) before zipfile parses every header: a 100k-entry bomb is refused without building
    # 100k ZipInfo objects. None when there is no readable record (zipfile then reports the error).
    search_from = max(0, len(data) - (_EOCD.size + 0xFFFF))
    pos = data.rfind(b"PK\x05\x06", search_from)
    if pos < 0 or pos + _EOCD.size > len(data):
        return None
    fields = _EOCD.unpack_from(data, pos)
    count = max(fields[3], fields[4])
    if count != 0xFFFF:
        return count
    loc = pos - _ZIP64_LOCATOR.size
    if loc < 0 or data[loc : loc + 4] != b"PK\x06\x07":
        return count
    rec = _ZIP64_LOCATOR.unpack_from(data, loc)[2]
    if rec < 0 or rec + _ZIP64_EOCD.size > len(data) or data[rec : rec + 4] != b"PK\x06\x06":
        return count
    z = _ZIP64_EOCD.unpack_from(data, rec)
    return max(z[6], z[7])


def _open_zip(data: bytes, limits: BundleLimits, bundle: str | None) -> zipfile.ZipFile:
    if len(data) > limits.max_bundle_bytes:
        raise BundleError(
            f"bundle of {len(data)} bytes is over the limit of {limits.max_bundle_bytes} "
            "(plugins.max_bundle_bytes)",
            bundle=bundle,
        )
    count = _entry_count(data)
    if count is not None and count > limits.max_files:
        raise BundleError(
            f"bundle has {count} entries, over the limit of {limits.max_files} (plugins.max_files)",
            bundle=bundle,
        )
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except Exception as exc:
        # Untrusted input: whatever zipfile trips over (BadZipFile, struct.error, "zip file version
        # 22.6" NotImplementedError, ...) means the same thing to us.
        raise BundleError(f"not a valid bundle (zip): {exc}", bundle=bundle) from None
    # The record count can lie; the parsed directory cannot.
    if len(zf.infolist()) > limits.max_files:
        n = len(zf.infolist())
        zf.close()
        raise BundleError(
            f"bundle has {n} entries, over the limit of {limits.max_files} (plugins.max_files)", bundle=bundle
        )
    return zf


def _validate(zf: zipfile.ZipFile, limits: BundleLimits, bundle: str | None) -> list[zipfile.ZipInfo]:
    files: list[zipfile.ZipInfo] = []
    seen: set[str] = set()
    dirs: set[str] = set()
    made: set[str] = set()  # every directory extraction makes: the parents of every entry, and dirs
    total = 0
    for info in zf.infolist():
        name = info.filename
        # zipfile cuts names at a NUL byte; check the name as stored, so "a\0../x" is refused.
        _check_name(info.orig_filename, bundle=bundle)

        def bad(why: str, name: str = name) -> BundleError:
            return BundleError(f"entry {name!r}: {why}", bundle=bundle, entry=name)

        parts = name.rstrip("/").split("/")
        if len(parts) > MAX_PATH_DEPTH:
            raise bad(f"nested {len(parts) - 1} directories deep, over the limit of {MAX_PATH_DEPTH - 1}")
        made.update("/".join(parts[:i]) for i in range(1, len(parts)))
        _check_count(made, seen, limits, bundle)

        if info.flag_bits & 0x1:
            raise bad("encrypted entries are not allowed")
        mode = info.external_attr >> 16 if info.create_system == 3 else 0
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise bad("symbolic link; a bundle holds regular files only")
        if name.endswith("/") or kind == stat.S_IFDIR:
            if info.file_size:
                raise bad("directory entry with contents")
            dirs.add(name.rstrip("/"))
            made.add(name.rstrip("/"))
            continue
        if kind not in (0, stat.S_IFREG):
            raise bad("special file (device, fifo or socket); a bundle holds regular files only")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise bad(f"unsupported compression method {info.compress_type}")
        if name in seen:
            raise bad("duplicate entry")
        seen.add(name)
        total += info.file_size
        if total > limits.max_unpacked_bytes:
            raise bad(
                f"bundle unpacks to more than {limits.max_unpacked_bytes} bytes (plugins.max_unpacked_bytes)"
            )
        files.append(info)
    for name in seen:
        # "a" as a file and "a/b" in the same bundle cannot both exist on disk.
        parent = name.rpartition("/")[0]
        while parent:
            if parent in seen:
                raise BundleError(f"entry {name!r}: parent {parent!r} is a file", bundle=bundle, entry=name)
            parent = parent.rpartition("/")[0]
    for d in dirs:
        if d in seen:
            raise BundleError(f"entry {d!r}: both a file and a directory", bundle=bundle, entry=d)
    _check_count(made, seen, limits, bundle)
    return files


def _check_count(made: set[str], files: set[str], limits: BundleLimits, bundle: str | None) -> None:
    if len(made) + len(files) > limits.max_files:
        raise BundleError(
            f"bundle holds more than {limits.max_files} files and directories (plugins.max_files)",
            bundle=bundle,
        )


_LOCAL = struct.Struct("<4s5H3L2H")


def _raw_stream(data: bytes, info: zipfile.ZipInfo, bundle: str | None) -> memoryview:
    # Locate the entry's compressed bytes ourselves, checking the local header against the central
    # directory, so what we decompress is exactly what was validated.
    def bad(why: str) -> BundleError:
        return BundleError(f"entry {info.filename!r}: {why}", bundle=bundle, entry=info.filename)

    off = info.header_offset
    if off < 0 or off + _LOCAL.size > len(data):
        raise bad("local header out of range")
    fields = _LOCAL.unpack_from(data, off)
    if fields[0] != b"PK\x03\x04":
        raise bad("local header missing")
    name_len, extra_len = fields[9], fields[10]
    raw_name = data[off + _LOCAL.size : off + _LOCAL.size + name_len]
    encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
    if raw_name.decode(encoding, errors="replace") != info.orig_filename:
        raise bad("local header name differs from the central directory")
    start = off + _LOCAL.size + name_len + extra_len
    end = start + info.compress_size
    if end > len(data):
        raise bad("compressed data runs past the end of the bundle")
    return memoryview(data)[start:end]


def _read_entry(
    data: bytes,
    info: zipfile.ZipInfo,
    budget: int,
    bundle: str | None,
    sink: BinaryIO | None = None,
) -> bytes:
    """Decompress one entry, enforcing its declared size and `budget` while decompressing.

    Headers can lie, so output is produced in bounded chunks and counted; the stream must end
    exactly at its declared size with a matching CRC. Hot loop: kept in one function on purpose.
    """

    def bad(why: str) -> BundleError:
        return BundleError(f"entry {info.filename!r}: {why}", bundle=bundle, entry=info.filename)

    src = _raw_stream(data, info, bundle)
    limit = min(info.file_size, budget)
    out = bytearray()
    got = 0
    crc = 0

    def emit(chunk: bytes | memoryview) -> None:
        nonlocal got, crc
        got += len(chunk)
        if got > limit:
            raise bad(
                f"unpacks to more than its declared size ({info.file_size}) or the remaining "
                "allowance (plugins.max_unpacked_bytes)"
            )
        crc = zlib.crc32(chunk, crc)
        if sink is not None:
            sink.write(chunk)
        else:
            out.extend(chunk)

    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            raise bad("stored entry whose sizes disagree")
        for pos in range(0, len(src), _CHUNK):
            emit(src[pos : pos + _CHUNK])
    else:
        d = zlib.decompressobj(-zlib.MAX_WBITS)
        pos = 0
        try:
            while not d.eof:
                if d.unconsumed_tail:
                    inp: bytes | memoryview = d.unconsumed_tail
                elif pos < len(src):
                    inp = src[pos : pos + _CHUNK]
                    pos += len(inp)
                else:
                    inp = b""
                chunk = d.decompress(inp, _CHUNK)
                if not chunk and not inp:
                    raise bad("truncated deflate stream")
                emit(chunk)
        except zlib.error as exc:
            raise bad(f"corrupt deflate stream: {exc}") from None
        if pos < len(src) or d.unused_data or d.unconsumed_tail:
            raise bad("data after the end of the deflate stream")
    if got != info.file_size:
        raise bad(f"unpacked size {got} differs from the declared {info.file_size}")
    if crc != info.CRC:
        raise bad("CRC mismatch: the entry is corrupt")
    return bytes(out)


def _check_entrypoint(manifest: Manifest, names: set[str], bundle: str | None) -> None:
    if not any(candidate in names for candidate in manifest.entrypoint_files()):
        raise BundleError(
            f"entrypoint {manifest.entrypoint!r}: none of "
            f"{', '.join(manifest.entrypoint_files())} is in the bundle",
            bundle=bundle,
            entry=manifest.entrypoint_files()[0],
        )


def inspect_bundle(
    data: bytes, limits: BundleLimits | None = None, *, bundle: str | None = None
) -> BundleContents:
    """Validate a bundle held in memory and parse its manifest, writing nothing.

    Refuses (BundleError) anything but a zip of regular files with safe relative names, more than
    `max_files` entries, more than `max_unpacked_bytes` declared, and a missing or invalid manifest
    or entrypoint. File contents other than the manifest are only decompressed by extract_bundle.
    """
    limits = limits or BundleLimits()
    with _open_zip(data, limits, bundle) as zf:
        files = _validate(zf, limits, bundle)
        by_name = {i.filename: i for i in files}
        info = by_name.get(MANIFEST_NAME)
        if info is None:
            raise BundleError(f"no {MANIFEST_NAME} in the bundle", bundle=bundle, entry=MANIFEST_NAME)
        if info.file_size > MAX_MANIFEST_BYTES:
            raise BundleError(
                f"invalid {MANIFEST_NAME}: larger than {MAX_MANIFEST_BYTES} bytes",
                bundle=bundle,
                entry=MANIFEST_NAME,
            )
        manifest = Manifest.from_toml(_read_entry(data, info, MAX_MANIFEST_BYTES, bundle), bundle=bundle)
        _check_entrypoint(manifest, set(by_name), bundle)
        entries = tuple(
            BundleEntry(
                i.filename,
                i.file_size,
                bool((i.external_attr >> 16) & 0o111) if i.create_system == 3 else False,
            )
            for i in files
        )
    return BundleContents(manifest, entries)


# --- extraction ----------------------------------------------------------------------------------


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove an extracted (read-only) tree; a missing tree is fine. Raises OSError."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return
    # Read-only directories cannot be emptied: make each writable (never following links) first.
    for dirpath, _dirs, _files in os.walk(path):
        os.chmod(dirpath, 0o700)
    shutil.rmtree(path)


def extract_bundle(
    vb: VerifiedBundle,
    dest: str | os.PathLike[str],
    limits: BundleLimits | None = None,
    *,
    replace: bool = False,
    record: dict[str, tuple[str, int]] | None = None,
) -> Path:
    """Extract the verified bytes `vb.data` into the fresh directory `dest`, made read-only.

    `record`, when given, is filled with relative path -> (SHA-256 of the bytes written, mode) for
    every file, hashed from the decompressed stream itself (see plugind.trust.tree).

    The tree is built in a temp directory next to `dest` and renamed into place, so `dest` is
    either absent or complete. Files are 0444 (0555 for the exec entrypoint), directories 0555.
    With replace=True an existing `dest` is swapped out and removed. Raises BundleError (unsafe or
    corrupt bundle, limits exceeded, `dest` exists) or OSError.
    """
    dest = Path(dest)
    bundle = str(vb.path) if vb.path else vb.name
    limits = limits or vb.limits
    if dest.exists() and not replace:
        raise BundleError(f"{dest}: already exists; remove it or extract elsewhere", bundle=bundle)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".extract-{vb.name}-", dir=dest.parent))
    try:
        _extract_into(vb, tmp, limits, bundle, record)
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{vb.name}-", dir=dest.parent))
            os.replace(dest, old / "tree")
            os.replace(tmp, dest)
            remove_tree(old)
        else:
            os.replace(tmp, dest)
    except BaseException:
        remove_tree(tmp)
        raise
    return dest


class _HashingSink:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.h = hashlib.sha256()

    def write(self, chunk: bytes | memoryview) -> int:
        self.h.update(chunk)
        return self.f.write(chunk)


def _extract_into(
    vb: VerifiedBundle,
    root: Path,
    limits: BundleLimits,
    bundle: str,
    record: dict[str, tuple[str, int]] | None = None,
) -> None:
    exec_path = vb.manifest.entrypoint_files()[0] if vb.manifest.is_exec else None
    made_dirs: list[Path] = []
    with _open_zip(vb.data, limits, bundle) as zf:
        files = _validate(zf, limits, bundle)
        budget = limits.max_unpacked_bytes
        for info in files:
            target = root.joinpath(*info.filename.split("/"))
            for parent in reversed(target.relative_to(root).parents):
                d = root / parent
                if d != root and not d.exists():
                    d.mkdir(mode=0o700)
                    made_dirs.append(d)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                sink = _HashingSink(f)
                _read_entry(vb.data, info, budget, bundle, sink=sink)  # type: ignore[arg-type]
            budget -= info.file_size
            mode = 0o555 if info.filename == exec_path else 0o444
            os.chmod(target, mode)
            if record is not None:
                record[info.filename] = (sink.h.hexdigest(), mode)
    # Deepest first, so a parent turns read-only after its children are done.
    for d in sorted(made_dirs, key=lambda p: len(p.parts), reverse=True):
        os.chmod(d, 0o555)  # noqa: S103 - read-only on purpose; plugins run as other users
    os.chmod(root, 0o555)  # noqa: S103
