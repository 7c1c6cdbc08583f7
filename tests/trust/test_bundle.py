"""Bundles: reproducible packing, refusals when reading untrusted zips, extraction into a read-only tree."""

from __future__ import annotations

import io
import os
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugind.errors import BundleError, SignatureInvalid
from plugind.trust import (
    BundleLimits,
    PluginSecurity,
    PrivateKey,
    TrustedPluginEntry,
    TrustLevel,
    bundle,
    bundle_digest,
    inspect_bundle,
    pack_directory,
    signed_message,
    write_bundle,
)
from plugind.trust.bundle import extract_bundle, remove_tree

from .conftest import MANIFEST, RawEntry, manifest_entry, raw_zip, write_plugin, zeros_deflate

LIMITS = BundleLimits()


# --- packing -------------------------------------------------------------------------------------


def test_identical_trees_give_identical_bytes(tmp_path: Path) -> None:
    a = write_plugin(tmp_path / "a")
    b = write_plugin(tmp_path / "b")
    # Different mtimes, permissions and creation order must not matter.
    os.utime(b / "hello.py", (1_000_000_000, 1_000_000_000))
    os.chmod(b / "pkg" / "util.py", 0o600)
    (a / "zzz.txt").write_text("z")
    (b / "zzz.txt").write_text("z")
    assert pack_directory(a)[1] == pack_directory(b)[1]


def test_bundle_layout_is_fixed(plugin_src: Path) -> None:
    (plugin_src / "__pycache__").mkdir()
    (plugin_src / "__pycache__" / "hello.cpython-311.pyc").write_bytes(b"x")
    (plugin_src / "stale.pyc").write_bytes(b"x")
    (plugin_src / ".git").mkdir()
    (plugin_src / ".git" / "HEAD").write_text("ref")
    (plugin_src / ".env").write_text("SECRET=1")
    manifest, data = pack_directory(plugin_src)
    assert (manifest.name, manifest.version) == ("hello", "1.0.0")
    zf = zipfile.ZipFile(io.BytesIO(data))
    names = [i.filename for i in zf.infolist()]
    assert names == ["data/table.bin", "hello.py", "pkg/util.py", "plugin.toml"]
    for info in zf.infolist():
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert info.external_attr >> 16 == stat.S_IFREG | 0o644
        assert info.compress_type == zipfile.ZIP_DEFLATED


def test_exec_entrypoint_is_packed_executable(tmp_path: Path) -> None:
    src = write_plugin(tmp_path, entrypoint="exec:bin/plugin", files={"bin/plugin": b"#!/bin/sh\n"})
    _, data = pack_directory(src)
    modes = {i.filename: i.external_attr >> 16 for i in zipfile.ZipFile(io.BytesIO(data)).infolist()}
    assert modes["bin/plugin"] == stat.S_IFREG | 0o755
    assert modes["plugin.toml"] == stat.S_IFREG | 0o644


def test_write_bundle_names_the_file_and_is_idempotent(plugin_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    path, manifest, changed = write_bundle(plugin_src, out)
    assert path == out / "hello-1.0.0.plugin"
    assert changed
    mtime = path.stat().st_mtime_ns
    assert write_bundle(plugin_src, out) == (path, manifest, False)
    assert path.stat().st_mtime_ns == mtime
    assert write_bundle(plugin_src, f"{tmp_path}/new-dir/")[0] == tmp_path / "new-dir" / "hello-1.0.0.plugin"
    assert write_bundle(plugin_src, tmp_path / "named.plugin")[0] == tmp_path / "named.plugin"


def test_pack_refuses_a_symlink(plugin_src: Path) -> None:
    (plugin_src / "link.py").symlink_to("/etc/passwd")
    with pytest.raises(
        BundleError, match=r"^link\.py: is a symbolic link; a bundle holds regular files only$"
    ) as exc:
        pack_directory(plugin_src)
    assert exc.value.entry == "link.py"


def test_pack_refuses_a_symlinked_directory(plugin_src: Path) -> None:
    (plugin_src / "etc").symlink_to("/etc")
    with pytest.raises(BundleError, match=r"^etc: is a symbolic link"):
        pack_directory(plugin_src)


def test_pack_refuses_a_fifo(plugin_src: Path) -> None:
    os.mkfifo(plugin_src / "pipe")
    with pytest.raises(BundleError, match=r"^pipe: is a special file \(device, fifo or socket\)"):
        pack_directory(plugin_src)


def test_pack_refuses_a_tree_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"no plugin\.toml; create one or run `plugind new NAME`"):
        pack_directory(tmp_path)


def test_pack_refuses_a_missing_entrypoint(tmp_path: Path) -> None:
    src = write_plugin(tmp_path, entrypoint="missing:plugin")
    with pytest.raises(
        BundleError, match=r"entrypoint 'missing:plugin': none of missing\.py, missing/__init__\.py"
    ):
        pack_directory(src)


def test_pack_refuses_a_bad_manifest(tmp_path: Path) -> None:
    src = write_plugin(tmp_path, version="1.0")
    with pytest.raises(
        BundleError, match=r"invalid plugin\.toml: plugin\.version: '1\.0' is not a semantic version"
    ):
        pack_directory(src)


# --- reading untrusted zips ----------------------------------------------------------------------


def _zip_with(name: str, data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for e in manifest_entry():
            zf.writestr(e.name, e.data)
        zf.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../evil.py", r"entry '\.\./evil\.py': path traversal \('\.\.'\)"),
        ("pkg/../../evil.py", r"path traversal"),
        ("/etc/cron.d/evil", r"entry '/etc/cron\.d/evil': absolute path"),
        ("pkg\\..\\evil.py", r"backslash in name"),
        ("C:/evil.py", r"drive letter in name"),
        ("pkg//x.py", r"empty or '\.' path component"),
        ("./x.py", r"empty or '\.' path component"),
        ("x\x01.py", r"control character in name"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "backslash", "drive", "empty-part", "dot", "control"],
)
def test_unsafe_entry_names_are_refused(name: str, message: str) -> None:
    with pytest.raises(BundleError, match=message) as exc:
        inspect_bundle(_zip_with(name), LIMITS, bundle="b.plugin")
    assert exc.value.bundle == "b.plugin"


def test_nul_byte_in_a_stored_name_is_refused() -> None:
    # zipfile would silently cut this name to "hello2.py".
    data = raw_zip([*manifest_entry(), RawEntry("hello2.py\x00/../../evil", b"x")])
    with pytest.raises(BundleError, match=r"control character in name"):
        inspect_bundle(data, LIMITS)


def test_symlink_entry_is_refused() -> None:
    data = raw_zip([*manifest_entry(), RawEntry("link", b"/etc/passwd", mode=stat.S_IFLNK | 0o777)])
    with pytest.raises(
        BundleError, match=r"^entry 'link': symbolic link; a bundle holds regular files only$"
    ) as exc:
        inspect_bundle(data, LIMITS)
    assert exc.value.entry == "link"


@pytest.mark.parametrize(
    "kind", [stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK], ids=["chr", "blk", "fifo", "sock"]
)
def test_special_file_entry_is_refused(kind: int) -> None:
    data = raw_zip([*manifest_entry(), RawEntry("dev", b"", mode=kind | 0o666)])
    with pytest.raises(BundleError, match=r"^entry 'dev': special file \(device, fifo or socket\)"):
        inspect_bundle(data, LIMITS)


def test_duplicate_and_conflicting_entries_are_refused() -> None:
    dup = raw_zip([*manifest_entry(), RawEntry("a.py", b"1"), RawEntry("a.py", b"2")])
    with pytest.raises(BundleError, match=r"^entry 'a\.py': duplicate entry$"):
        inspect_bundle(dup, LIMITS)
    clash = raw_zip([*manifest_entry(), RawEntry("a", b"1"), RawEntry("a/b", b"2")])
    with pytest.raises(BundleError, match=r"^entry 'a/b': parent 'a' is a file$"):
        inspect_bundle(clash, LIMITS)


def test_directories_count_against_max_files_and_paths_have_a_depth_limit() -> None:
    # Each file's parents are made on extraction: 42 entries 500 directories deep each made 20,400
    # directories (and 80 MB of them) from an 85 KB bundle.
    from plugind.trust.bundle import MAX_PATH_DEPTH

    deep = "/".join(["d"] * MAX_PATH_DEPTH) + "/x.py"
    with pytest.raises(BundleError, match=rf"nested {MAX_PATH_DEPTH} directories deep, over the limit "
                                          rf"of {MAX_PATH_DEPTH - 1}$"):
        inspect_bundle(raw_zip([*manifest_entry(), RawEntry(deep, b"x")]), LIMITS)
    at_limit = "/".join(["d"] * (MAX_PATH_DEPTH - 1)) + "/x.py"
    assert inspect_bundle(raw_zip([*manifest_entry(), RawEntry(at_limit, b"x")]), LIMITS)
    small = BundleLimits(max_files=40)
    # 5 files, each in a chain of 7 directories of its own: 35 directories + 7 files (manifest, code).
    spread = [RawEntry("/".join(f"{i}{j}" for j in range(7)) + "/f.py", b"") for i in range(5)]
    with pytest.raises(BundleError, match=r"^bundle holds more than 40 files and directories "
                                          r"\(plugins\.max_files\)$"):
        inspect_bundle(raw_zip([*manifest_entry(), *spread]), small)
    assert inspect_bundle(raw_zip([*manifest_entry(), *spread[:4]]), small)


def test_encrypted_entry_is_refused() -> None:
    data = bytearray(_zip_with("x.py"))
    # Set the "encrypted" flag in the last central directory header.
    pos = data.rfind(b"PK\x01\x02")
    data[pos + 8] |= 0x1
    with pytest.raises(BundleError, match=r"^entry 'x\.py': encrypted entries are not allowed$"):
        inspect_bundle(bytes(data), LIMITS)


def test_hundred_thousand_tiny_files_are_refused_before_their_headers_are_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entries = [RawEntry(f"f{i}", b"") for i in range(100_000)]
    data = raw_zip([*manifest_entry(), *entries])

    def parse_directory(*args: object, **kwargs: object) -> zipfile.ZipFile:
        raise AssertionError("zipfile parsed the central directory: 100k headers")

    # Refused from the end record, before zipfile builds 100k ZipInfo objects.
    monkeypatch.setattr(zipfile, "ZipFile", parse_directory)
    with pytest.raises(
        BundleError, match=r"^bundle has 100002 entries, over the limit of 2000 \(plugins\.max_files\)$"
    ):
        inspect_bundle(data, LIMITS)


def test_a_lying_entry_count_is_caught_by_the_parsed_directory() -> None:
    data = raw_zip([*manifest_entry(), *(RawEntry(f"f{i}", b"") for i in range(2500))], claimed_count=3)
    with pytest.raises(BundleError, match=r"^bundle has 2502 entries, over the limit of 2000"):
        inspect_bundle(data, LIMITS)


@pytest.fixture(scope="module")
def gigabyte_of_zeros() -> tuple[bytes, int]:
    return zeros_deflate(1 << 30)


def test_a_gigabyte_entry_is_refused_from_its_declared_size(gigabyte_of_zeros: tuple[bytes, int]) -> None:
    stream, crc = gigabyte_of_zeros
    assert len(stream) < 2 << 20  # a ~1 MB file...
    bomb = RawEntry("zeros.bin", stream, method=8, crc=crc, size=1 << 30)  # ...that unpacks to 1 GiB
    with pytest.raises(
        BundleError,
        match=r"^entry 'zeros\.bin': bundle unpacks to more than 268435456 bytes "
        r"\(plugins\.max_unpacked_bytes\)$",
    ):
        inspect_bundle(raw_zip([*manifest_entry(), bomb]), LIMITS)


def test_a_gigabyte_entry_that_lies_about_its_size_is_refused_while_decompressing(
    gigabyte_of_zeros: tuple[bytes, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream, _ = gigabyte_of_zeros
    # Declares 1000 bytes (with the CRC of 1000 zeros), actually inflates to 1 GiB.
    liar = RawEntry("zeros.bin", stream, method=8, crc=zlib.crc32(bytes(1000)), size=1000)
    data = raw_zip([*manifest_entry(), liar])
    vb = PluginSecurity({}).verify_bytes(data, None)  # structurally valid from its headers
    dest = tmp_path / "x" / "hello"
    inflated = []

    class Counted:
        """The decompressor, counting what it hands out."""

        def __init__(self, wbits: int) -> None:
            self.d = zlib.decompressobj(wbits)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            out = self.d.decompress(data, max_length)
            inflated.append(len(out))
            return out

        def __getattr__(self, name: str) -> object:
            return getattr(self.d, name)

    monkeypatch.setattr(bundle, "zlib", SimpleNamespace(decompressobj=Counted, MAX_WBITS=zlib.MAX_WBITS,
                                                        crc32=zlib.crc32, error=zlib.error))
    with pytest.raises(
        BundleError,
        match=r"^entry 'zeros\.bin': unpacks to more than its declared size \(1000\) "
        r"or the remaining allowance",
    ):
        extract_bundle(vb, dest)
    assert len(inflated) == 1  # stopped at the first chunk, not after a gigabyte
    assert not dest.exists()
    assert list((tmp_path / "x").iterdir()) == []  # the temp tree is gone too


def test_truncated_and_corrupt_streams_are_refused(tmp_path: Path) -> None:
    good = zlib.compressobj(6, zlib.DEFLATED, -15)
    payload = os.urandom(5000)
    stream = good.compress(payload) + good.flush()
    cases = {
        "truncated": RawEntry("d.bin", stream[:-100], method=8, crc=zlib.crc32(payload), size=len(payload)),
        "crc": RawEntry("d.bin", stream, method=8, crc=zlib.crc32(payload) ^ 1, size=len(payload)),
        "trailing": RawEntry("d.bin", stream + b"junk", method=8, crc=zlib.crc32(payload), size=len(payload)),
        "short": RawEntry("d.bin", stream, method=8, crc=zlib.crc32(payload), size=len(payload) + 10),
    }
    messages = {
        "truncated": "truncated deflate stream",
        "crc": "CRC mismatch: the entry is corrupt",
        "trailing": "data after the end of the deflate stream",
        "short": f"unpacked size {len(payload)} differs from the declared {len(payload) + 10}",
    }
    for case, entry in cases.items():
        vb = PluginSecurity({}).verify_bytes(raw_zip([*manifest_entry(), entry]), None)
        dest = tmp_path / case
        with pytest.raises(BundleError, match=r"^entry 'd\.bin': " + messages[case]):
            extract_bundle(vb, dest)
        assert not dest.exists()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([RawEntry("hello.py", b"")], r"^no plugin\.toml in the bundle$"),
        (
            [
                RawEntry(
                    "plugin.toml",
                    MANIFEST.format(name="hello", version="1.0.0", entrypoint="hello:plugin").encode(),
                )
            ],
            r"^entrypoint 'hello:plugin': none of hello\.py",
        ),
        (
            [
                RawEntry("hello.py", b""),
                RawEntry(
                    "plugin.toml",
                    MANIFEST.format(name="Bad!", version="1.0.0", entrypoint="hello:plugin").encode(),
                ),
            ],
            r"^invalid plugin\.toml: plugin\.name: 'Bad!' must match",
        ),
        (
            [
                RawEntry("hello.py", b""),
                RawEntry(
                    "plugin.toml",
                    MANIFEST.format(name="hello", version="v1", entrypoint="hello:plugin").encode(),
                ),
            ],
            r"^invalid plugin\.toml: plugin\.version: 'v1' is not a semantic version",
        ),
    ],
    ids=["no-manifest", "no-entrypoint", "bad-name", "bad-version"],
)
def test_bad_manifests_in_bundles_are_refused(entries: list[RawEntry], message: str) -> None:
    with pytest.raises(BundleError, match=message):
        inspect_bundle(raw_zip(entries), LIMITS)


@pytest.mark.parametrize(
    "blob", [b"", b"PK\x03\x04garbage", os.urandom(4096)], ids=["empty", "garbage", "random"]
)
def test_not_a_zip_is_refused(blob: bytes) -> None:
    with pytest.raises(BundleError, match=r"^not a valid bundle \(zip\)"):
        inspect_bundle(blob, LIMITS)


# --- extraction ----------------------------------------------------------------------------------


def test_extraction_is_read_only_and_complete(tmp_path: Path) -> None:
    src = write_plugin(
        tmp_path / "src",
        entrypoint="exec:bin/plugin",
        files={"bin/plugin": b"#!/bin/sh\n", "lib/a/b.txt": b"b"},
    )
    _, data = pack_directory(src)
    vb = PluginSecurity({}).verify_bytes(data, None)
    dest = extract_bundle(vb, tmp_path / "x" / "hello")
    assert (dest / "lib" / "a" / "b.txt").read_bytes() == b"b"
    assert stat.S_IMODE((dest / "bin" / "plugin").stat().st_mode) == 0o555
    assert stat.S_IMODE((dest / "plugin.toml").stat().st_mode) == 0o444
    assert stat.S_IMODE((dest / "lib" / "a").stat().st_mode) == 0o555
    assert stat.S_IMODE(dest.stat().st_mode) == 0o555
    with pytest.raises(BundleError, match=r"already exists; remove it or extract elsewhere"):
        extract_bundle(vb, dest)
    assert extract_bundle(vb, dest, replace=True) == dest
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["hello"]
    remove_tree(dest)
    assert not dest.exists()


# --- property: pack, verify, extract round trip --------------------------------------------------

_segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8)
_tree = st.dictionaries(
    st.lists(_segment, min_size=1, max_size=3).map(lambda parts: "/".join(parts) + ".dat"),
    st.binary(max_size=2000),
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=_tree, flip=st.integers(min_value=0, max_value=10**6))
def test_pack_sign_verify_extract_round_trip(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes], flip: int
) -> None:
    # A file and a directory of the same name cannot coexist in a real tree.
    names = set(files)
    files = {n: d for n, d in files.items() if not any(o.startswith(n[: -len(".dat")] + "/") for o in names)}
    root = tmp_path_factory.mktemp("prop")
    src = write_plugin(root / "a", files={"hello.py": b"plugin = None\n", **files})
    src2 = write_plugin(root / "b", files={**files, "hello.py": b"plugin = None\n"})
    manifest, data = pack_directory(src)
    assert pack_directory(src2)[1] == data  # reproducible whatever the creation order
    key = PrivateKey.from_hex("11" * 32)
    digest = bundle_digest(data)
    sig = key.sign(signed_message(digest))
    entry = TrustedPluginEntry(manifest.name, manifest.version, digest, sig.hex, "")
    security = PluginSecurity({"k": key.public_key}, trust_entries=[entry])
    vb = security.verify_bytes(data, sig)
    assert (vb.name, vb.version, vb.trust_level) == (manifest.name, manifest.version, TrustLevel.TRUSTED)
    # Any single flipped bit anywhere in the bundle is refused.
    pos = flip % len(data)
    tampered = data[:pos] + bytes([data[pos] ^ (1 << (flip % 8))]) + data[pos + 1 :]
    with pytest.raises(SignatureInvalid, match="modified after signing"):
        security.verify_bytes(tampered, sig)
    dest = extract_bundle(vb, root / "x")
    for rel, content in files.items():
        assert (dest / rel).read_bytes() == content
    extracted = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert extracted == sorted(["hello.py", "plugin.toml", *files])


def test_unsupported_zip_version_is_a_bundle_error() -> None:
    data = bytearray(raw_zip(manifest_entry()))
    pos = data.find(b"PK\x01\x02")
    data[pos + 6 : pos + 8] = (99).to_bytes(2, "little")  # "version needed to extract" 9.9
    with pytest.raises(BundleError, match=r"^not a valid bundle \(zip\): zip file version 9\.9$"):
        inspect_bundle(bytes(data), LIMITS)


@settings(max_examples=300, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_bundles_only_ever_raise_bundle_errors(edits: list[tuple[int, int]]) -> None:
    # Whatever the damage, reading fails with a BundleError (never a foreign exception) or succeeds.
    data = bytearray(_FUZZ_BASE)
    for pos, value in edits:
        data[pos % len(data)] = value
    try:
        vb = PluginSecurity({}).verify_bytes(bytes(data), None)
    except BundleError:
        return
    root = Path(tempfile.mkdtemp())
    try:
        extract_bundle(vb, root / "x")
    except BundleError:
        pass
    finally:
        remove_tree(root / "x")
        root.rmdir()


_FUZZ_BASE = raw_zip(
    [
        *manifest_entry(),
        RawEntry(
            "pkg/util.py",
            zlib.compress(b"X = 1\n" * 50)[2:-4],
            method=8,
            crc=zlib.crc32(b"X = 1\n" * 50),
            size=300,
        ),
    ]
)
