"""The encrypted trust list: round trips, every way a file or key can be wrong, atomic saves under SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugind.errors import InvalidKey, TrustListError
from plugind.trust import (
    TrustedPluginEntry,
    add_trusted_plugin,
    encrypt_and_save_trust_list,
    init_trust_list,
    load_and_decrypt_trust_list,
    parse_trust_key,
    remove_trusted_plugin,
)
from plugind.trust.trustlist import MAGIC, decrypt_trust_list, encrypt_trust_list

REPO = Path(__file__).resolve().parents[2]


def entry(name: str = "hello", version: str = "1.0.0", n: int = 0, note: str = "") -> TrustedPluginEntry:
    return TrustedPluginEntry(name, version, f"{n:0128x}", f"{n + 1:0128x}", note)


@pytest.fixture
def listed(tmp_path: Path, trust_key: bytes) -> Path:
    path = tmp_path / "trust.list"
    encrypt_and_save_trust_list([entry(), entry("other", "2.0.0", 5, "from CI")], path, trust_key)
    return path


def test_round_trip_sorted_and_private(listed: Path, trust_key: bytes) -> None:
    assert load_and_decrypt_trust_list(listed, trust_key) == [entry(), entry("other", "2.0.0", 5, "from CI")]
    assert stat.S_IMODE(listed.stat().st_mode) == 0o600
    blob = listed.read_bytes()
    assert blob.startswith(MAGIC + b"\x00\x02")
    assert b"hello" not in blob and b"from CI" not in blob


def test_every_write_uses_a_fresh_nonce(trust_key: bytes) -> None:
    a = encrypt_trust_list([entry()], trust_key)
    b = encrypt_trust_list([entry()], trust_key)
    assert a[26:38] != b[26:38]
    assert a != b
    assert decrypt_trust_list(a, trust_key) == decrypt_trust_list(b, trust_key) == [entry()]


def test_wrong_key_is_refused(listed: Path) -> None:
    with pytest.raises(
        TrustListError, match=r"cannot decrypt the trust list: wrong PLUGIN_TRUST_KEY, or the file"
    ) as exc:
        load_and_decrypt_trust_list(listed, os.urandom(32))
    assert exc.value.path == str(listed)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b"", r"trust list is empty \(0 bytes\)"),
        (lambda b: b[:5], r"trust list is truncated \(shorter than its header\)"),
        (lambda b: b[:9], r"trust list is truncated \(shorter than its header\)"),
        (lambda b: b[:20], r"trust list is truncated \(shorter than its header\)"),
        (lambda b: b[:30], r"trust list is truncated$"),
        (
            lambda b: b[: len(b) // 2],
            r"cannot decrypt the trust list: wrong PLUGIN_TRUST_KEY, or the file was truncated or altered",
        ),
        (lambda b: b[:-1], r"cannot decrypt the trust list"),
        (lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:], r"cannot decrypt the trust list"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 0x80]), r"cannot decrypt the trust list"),
        (lambda b: b[:30] + bytes([b[30] ^ 1]) + b[31:], r"cannot decrypt the trust list"),  # nonce
        (lambda b: b[:17] + bytes([b[17] ^ 1]) + b[18:], r"cannot decrypt the trust list"),  # generation
        (lambda b: b[:25] + bytes([b[25] ^ 1]) + b[26:], r"cannot decrypt the trust list"),  # expiry
        (lambda b: b + b"\0", r"cannot decrypt the trust list"),
        (lambda b: b"XXXXXXXX" + b[8:], r"not a plugind trust list \(bad magic\)"),
        (
            lambda b: b[:8] + b"\x00\x03" + b[10:],
            r"unsupported trust list format version 3 \(this plugind reads versions 1 and 2\)",
        ),
        (lambda b: b"[]", r"not a plugind trust list \(bad magic\)"),
    ],
    ids=[
        "empty",
        "5-bytes",
        "9-bytes",
        "20-bytes",
        "header-only",
        "half",
        "last-byte-cut",
        "flip-body",
        "flip-tag",
        "flip-nonce",
        "flip-generation",
        "flip-expiry",
        "appended",
        "magic",
        "version",
        "json",
    ],
)
def test_damaged_file_is_refused_and_never_read_as_empty(
    listed: Path, trust_key: bytes, damage, message: str
) -> None:  # type: ignore[no-untyped-def]
    listed.write_bytes(damage(listed.read_bytes()))
    before = listed.read_bytes()
    with pytest.raises(TrustListError, match=message):
        load_and_decrypt_trust_list(listed, trust_key)
    # A write path must refuse too, leaving the damaged file as it was (for the operator to inspect).
    with pytest.raises(TrustListError, match=message):
        add_trusted_plugin(listed, trust_key, entry("new"))
    assert listed.read_bytes() == before


def test_missing_file_is_an_error_not_an_empty_list(tmp_path: Path, trust_key: bytes) -> None:
    with pytest.raises(TrustListError, match=r"trust list not found; create it with `plugind trust init`"):
        load_and_decrypt_trust_list(tmp_path / "nope.list", trust_key)


@pytest.mark.parametrize(
    "text",
    [None, "", "abc", "0" * 63, "z" * 64, "0" * 128],
    ids=["unset", "empty", "short", "63", "nonhex", "128"],
)
def test_malformed_trust_key_is_refused(text: str | None) -> None:
    message = (
        r"PLUGIN_TRUST_KEY is not set"
        if not text
        else r"PLUGIN_TRUST_KEY is malformed: expected 64 hex characters"
    )
    with pytest.raises(InvalidKey, match=message) as exc:
        parse_trust_key(text)
    if text:
        assert text not in str(exc.value)  # never echo key material


def test_trust_key_parses() -> None:
    assert parse_trust_key("ab" * 32 + "\n") == bytes([0xAB]) * 32


def test_add_replace_remove(tmp_path: Path, trust_key: bytes) -> None:
    path = tmp_path / "t.list"
    init_trust_list(path, trust_key)
    assert load_and_decrypt_trust_list(path, trust_key) == []
    with pytest.raises(TrustListError, match=r"a trust list already exists; use --force"):
        init_trust_list(path, trust_key)
    assert add_trusted_plugin(path, trust_key, entry()) is None
    assert add_trusted_plugin(path, trust_key, entry(version="1.1.0")) is None
    assert add_trusted_plugin(path, trust_key, entry(n=7)) == entry()  # same name+version: replaced
    assert load_and_decrypt_trust_list(path, trust_key) == [entry(n=7), entry(version="1.1.0")]
    assert remove_trusted_plugin(path, trust_key, "hello", "1.1.0") == [entry(version="1.1.0")]
    with pytest.raises(TrustListError, match=r"no trust entry for hello 1\.1\.0"):
        remove_trusted_plugin(path, trust_key, "hello", "1.1.0")
    assert remove_trusted_plugin(path, trust_key, "hello") == [entry(n=7)]
    assert load_and_decrypt_trust_list(path, trust_key) == []


def test_versions_sort_by_precedence(tmp_path: Path, trust_key: bytes) -> None:
    path = tmp_path / "t.list"
    versions = ["1.10.0", "1.2.0", "1.2.0-rc.1"]
    encrypt_and_save_trust_list([entry(version=v) for v in versions], path, trust_key)
    assert [e.version for e in load_and_decrypt_trust_list(path, trust_key)] == [
        "1.2.0-rc.1",
        "1.2.0",
        "1.10.0",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad"}, "invalid plugin name 'Bad'"),
        ({"version": "1"}, "'1' is not a semantic version"),
        ({"hash": "ab"}, "hash must be 128 lowercase hex characters"),
        ({"hash": "AB" * 64}, "hash must be 128 lowercase hex characters"),
        ({"signature": "x"}, "signature must be 128 lowercase hex characters"),
        ({"note": "n" * 1001}, "note must be a string of at most 1000 characters"),
    ],
    ids=["name", "version", "hash", "upper-hash", "signature", "note"],
)
def test_invalid_entries_are_refused(kwargs: dict[str, str], message: str) -> None:
    fields = {"name": "hello", "version": "1.0.0", "hash": "a" * 128, "signature": "b" * 128, "note": ""}
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message):
        TrustedPluginEntry(**fields)


_entries = st.lists(
    st.builds(
        TrustedPluginEntry,
        name=st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True),
        version=st.builds(lambda a, b, c: f"{a}.{b}.{c}", *(st.integers(0, 999),) * 3),
        hash=st.binary(min_size=64, max_size=64).map(bytes.hex),
        signature=st.binary(min_size=64, max_size=64).map(bytes.hex),
        note=st.text(max_size=50),
    ),
    max_size=20,
    unique_by=lambda e: (e.name, e.version),
)


@settings(max_examples=60, deadline=None)
@given(entries=_entries, key=st.binary(min_size=32, max_size=32))
def test_encryption_round_trip(entries: list[TrustedPluginEntry], key: bytes) -> None:
    blob = encrypt_trust_list(entries, key)
    got = decrypt_trust_list(blob, key)
    assert sorted(got, key=lambda e: (e.name, e.version)) == sorted(
        entries, key=lambda e: (e.name, e.version)
    )
    flipped = bytes([key[0] ^ 1]) + key[1:]
    with pytest.raises(TrustListError, match="cannot decrypt"):
        decrypt_trust_list(blob, flipped)


WRITER = textwrap.dedent(
    """
    import sys
    import time
    from plugind.trust import TrustedPluginEntry, encrypt_and_save_trust_list
    path, key = sys.argv[1], bytes.fromhex(sys.argv[2])
    def version(tag):
        # ~3000 entries so a save takes long enough to be killed in the middle of it
        return [
            TrustedPluginEntry(f"p{i}", "1.0.0", f"{tag:0128x}", f"{i:0128x}", "x" * 200) for i in range(3000)
        ]
    lists = [version(1), version(2)]
    n = 0
    while True:
        encrypt_and_save_trust_list(lists[n % 2], path, key)
        n += 1
        print(time.monotonic(), flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_in_the_middle_of_saving_leaves_a_complete_list(tmp_path: Path, trust_key: bytes) -> None:
    path = tmp_path / "trust.list"
    rng = random.Random(os.getpid())
    tags = set()
    leftovers = 0
    for round_no in range(12):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), trust_key.hex()],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert proc.stdout is not None
        # Wait for two completed saves (events) to learn how long one takes, then kill without
        # warning: on even rounds as soon as the temp file of the next save exists (the writer is
        # provably mid-write), on odd rounds at a random moment of the next save.
        first = float(proc.stdout.readline())
        second = float(proc.stdout.readline())
        if round_no % 2 == 0:
            deadline = time.monotonic() + 10
            while not any(n.startswith(".plugind-tmp-") for n in os.listdir(tmp_path)):
                assert time.monotonic() < deadline, "the writer never started another save"
        else:
            time.sleep(rng.uniform(0, second - first))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        entries = load_and_decrypt_trust_list(path, trust_key)  # never raises: old or new, complete
        assert len(entries) == 3000
        assert len({e.hash for e in entries}) == 1
        tags.add(entries[0].hash)
        leftovers += len(list(tmp_path.glob(".plugind-tmp-*")))
    # Most polled rounds must have caught the writer with its temp file open, or the test proves nothing.
    assert leftovers >= 3, f"only {leftovers} kills landed mid-write"
    # The next save cleans what the killed writers left behind.
    encrypt_and_save_trust_list([entry()], path, trust_key)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trust.list", "trust.list.lock"]
    assert load_and_decrypt_trust_list(path, trust_key) == [entry()]


def test_concurrent_adders_lose_nothing(tmp_path: Path, trust_key: bytes) -> None:
    path = tmp_path / "trust.list"
    init_trust_list(path, trust_key)
    script = textwrap.dedent(
        """
        import sys
        from plugind.trust import TrustedPluginEntry, add_trusted_plugin
        path, key, who = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3]
        for i in range(15):
            add_trusted_plugin(path, key, TrustedPluginEntry(f"{who}{i}", "1.0.0", "a" * 128, "b" * 128, ""))
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path), trust_key.hex(), who], cwd=REPO)
        for who in "ab"
    ]
    assert [p.wait() for p in procs] == [0, 0]
    names = {e.name for e in load_and_decrypt_trust_list(path, trust_key)}
    assert names == {f"{w}{i}" for w in "ab" for i in range(15)}
