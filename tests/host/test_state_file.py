"""The state file's format (plugind/host/state.py): what reads back, and what is unreadable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plugind.fsio import atomic_write
from plugind.host.state import (
    StateRead,
    StateUnreadable,
    StateWriter,
    decode_state,
    encode_state,
    journal_path,
    keep_aside,
    read_state,
    write_state,
)

GOOD = encode_state(["alpha", "beta-2"])


def test_round_trip_keeps_order_and_drops_repeats() -> None:
    assert decode_state(GOOD) == ["alpha", "beta-2"]
    assert decode_state(encode_state(["b", "a", "b"])) == ["b", "a"]
    assert decode_state(json.dumps({"version": 1, "loaded": ["x"]}).encode()) == ["x"]  # older format


def test_every_truncation_is_unreadable() -> None:
    # All but the trailing newline is still the whole document; anything shorter is not.
    for length in range(len(GOOD.rstrip())):
        with pytest.raises(StateUnreadable):
            decode_state(GOOD[:length])


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        pytest.param(b"", "empty; truncated or overwritten?", id="empty"),
        pytest.param(b"\xff\xfe", "not JSON", id="not-utf8"),
        pytest.param(b"[]", "not a JSON object", id="a-list"),
        pytest.param(b'{"version": 3, "loaded": []}', "unknown format version 3", id="newer-version"),
        pytest.param(b'{"version": 2}', "no 'loaded' list of names", id="no-list"),
        pytest.param(b'{"version": 1, "loaded": [3]}', "no 'loaded' list of names", id="not-names"),
        pytest.param(GOOD.replace(b'"alpha"', b'"alpho"'), "checksum mismatch", id="altered-name"),
        pytest.param(b'{"version": 1, "loaded": ["../etc"]}', "invalid plugin name '../etc'", id="a-path"),
    ],
)
def test_unreadable_files_say_why(raw: bytes, why: str) -> None:
    with pytest.raises(StateUnreadable, match="^" + why.replace("(", r"\(").replace("?", r"\?")):
        decode_state(raw)


def test_read_state_tells_missing_from_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "loaded.json"
    assert read_state(path).names is None and read_state(path).problem is None  # a first start
    write_state(path, ["one"])
    assert read_state(path).names == ["one"]
    path.write_bytes(path.read_bytes()[:20])
    found = read_state(path)
    assert found.names is None
    assert found.problem is not None
    assert found.problem.startswith(f"state file {path} is unreadable: not JSON")


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "loaded.json"
    write_state(path, ["one"])
    before = path.read_bytes()
    (tmp_path / "loaded.json.d").mkdir()
    blocked = tmp_path / "loaded.json.d" / "x"
    blocked.mkdir()
    with pytest.raises(OSError):
        write_state(tmp_path / "loaded.json.d", ["two"])  # a rename onto a non-empty directory
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "loaded.json", "loaded.json.d", "loaded.json.journal"]


def test_pinned_versions_are_covered_by_the_checksum() -> None:
    from plugind.host.state import decode_state_full

    raw = encode_state(["alpha", "beta"], {"alpha": "2.0.0", "gone": "1.0.0"})
    assert decode_state_full(raw) == (["alpha", "beta"], {"alpha": "2.0.0"})  # pins of loaded names only
    doc = json.loads(raw)
    dropped = {k: v for k, v in doc.items() if k != "versions"}
    changed, odd = {**doc, "versions": {"alpha": "1.0.0"}}, {**doc, "versions": {"alpha": "../../x"}}
    for altered in (changed, dropped, odd):
        with pytest.raises(StateUnreadable):
            decode_state_full(json.dumps(altered).encode())


# -- the journal: a change is one appended record ------------------------------------------------


def test_a_change_appends_one_record_and_leaves_the_base_alone(tmp_path: Path) -> None:
    path = tmp_path / "loaded.json"
    writer = StateWriter(path)
    writer.write(["a", "b"])  # the first write after a start rewrites both files
    base = path.read_bytes()
    assert decode_state(base) == ["a", "b"]
    lines = journal_path(path).read_bytes().splitlines()
    assert len(lines) == 1  # the header only
    writer.write(["a", "b", "c"])
    writer.write(["b", "c"], {"c": "2.0.0"})
    assert path.read_bytes() == base  # not rewritten
    assert len(journal_path(path).read_bytes().splitlines()) == 1 + 3  # set c, del a, set c's pin
    found = read_state(path)
    assert (found.names, found.versions) == (["b", "c"], {"c": "2.0.0"})
    writer.write(["b", "c"])  # the pin dropped (a plain load)
    assert read_state(path).versions == {}


def test_the_journal_is_folded_into_the_base_after_max_64_n_records(tmp_path: Path) -> None:
    path = tmp_path / "loaded.json"
    writer = StateWriter(path)
    names: list[str] = []

    def rewrites(changes: list[list[str]]) -> int:
        count = 0
        for change in changes:
            before = path.read_bytes() if path.exists() else b""
            writer.write(change)
            count += path.read_bytes() != before
            assert read_state(path).names == change
        return count

    # 300 loads from nothing: the base is written once (the first write), the journal holds N.
    for i in range(300):
        names.append(f"p{i:03d}")
    assert rewrites([names[:i + 1] for i in range(300)]) == 1
    # 400 changes to a set of 10: a rewrite each 64 records, never at every change.
    writer.fold()
    churn = [names[:10] if i % 2 else [*names[:10], "x"] for i in range(400)]
    assert rewrites(churn) == 1 + 399 // 64  # the first: 290 removals at once, more than 64
    assert len(journal_path(path).read_bytes().splitlines()) <= 1 + 64
    assert writer.fold() is True
    assert decode_state(path.read_bytes()) == names[:10]  # the base alone says everything
    assert len(journal_path(path).read_bytes().splitlines()) == 1
    assert writer.fold() is False


def test_names_that_change_order_are_journaled_not_rewritten(tmp_path: Path) -> None:
    # Loads started together finish in another order than they were written in (the running ones
    # first, then those still starting): 1 write in 4 of a 200-plugin load rewrote both files.
    path = tmp_path / "loaded.json"
    writer = StateWriter(path)
    writer.write(["a", "b", "c", "d"], {"c": "1.0.0"})
    base = path.read_bytes()
    writer.write(["a", "d", "b", "c", "e"], {"c": "1.0.0"})
    assert path.read_bytes() == base  # not rewritten
    # From the first name that moved on: removed, then set again in the new order (pins too).
    records = [json.loads(line) for line in journal_path(path).read_bytes().splitlines()[1:]]
    assert [(r["op"], r["name"]) for r in records] == [
        ("del", "b"), ("del", "c"), ("del", "d"), ("set", "d"), ("set", "b"), ("set", "c"), ("set", "e")]
    found = read_state(path)
    assert (found.names, found.versions) == (["a", "d", "b", "c", "e"], {"c": "1.0.0"})


def test_any_sequence_of_intents_reads_back_as_written(tmp_path: Path) -> None:
    # Loads, unloads, moves and pins in a fixed pseudo-random order; each write reads back exactly,
    # whether it was journaled or folded into the base.
    import random

    rng = random.Random(20261202)
    path = tmp_path / "loaded.json"
    writer = StateWriter(path)
    names: list[str] = []
    pins: dict[str, str] = {}
    fresh = (f"p{i}" for i in range(10_000))
    for _ in range(600):
        roll = rng.random()
        if roll < 0.4 or len(names) < 2:
            names.append(next(fresh))
        elif roll < 0.6:
            pins.pop(names.pop(rng.randrange(len(names))), None)
        elif roll < 0.85:
            names.insert(rng.randrange(len(names)), names.pop(rng.randrange(len(names))))
        else:
            name = rng.choice(names)
            pins[name] = f"{rng.randrange(1, 9)}.0.0"
        writer.write(names, pins)
        found = read_state(path)
        assert (found.names, found.versions) == (names, pins)


def journaled(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "loaded.json"
    writer = StateWriter(path)
    writer.write(["a"])
    writer.write(["a", "b"])
    writer.write(["a", "b", "c"], {"c": "1.2.0"})
    writer.write(["b", "c"], {"c": "1.2.0"})
    return path, journal_path(path).read_bytes()


def test_a_journal_cut_anywhere_after_its_header_reads_as_its_whole_records(tmp_path: Path) -> None:
    path, whole = journaled(tmp_path)
    assert read_state(path).names == ["b", "c"]
    ends = [i + 1 for i, byte in enumerate(whole) if byte == ord("\n")]
    # The state after each whole record, as the journal cut right after it reads.
    after = {}
    for end in ends:
        journal_path(path).write_bytes(whole[:end])
        found = read_state(path)
        assert found.names is not None and found.problem is None and found.note is None, end
        after[end] = (found.names, found.versions)
    assert len(set(map(repr, after.values()))) > 2  # the records do change the state
    for length in range(len(whole)):
        journal_path(path).write_bytes(whole[:length])
        found = read_state(path)
        if length < ends[0]:  # empty, or no whole header: the header is written whole, atomically
            assert found.names is None, length  # load nothing
            assert found.problem is not None and "is unreadable: its journal" in found.problem, length
            continue
        # Whole records, then perhaps an append a crash cut short (never acknowledged): the state
        # before that append, as after a crash before it; the part-written record is named.
        whole_end = max(e for e in ends if e <= length)
        assert (found.names, found.versions) == after[whole_end], length
        assert found.problem is None, length
        assert (found.note is None) == (length == whole_end), length
        if found.note is not None:
            assert f"part-written record ({length - whole_end} bytes" in found.note


@pytest.mark.parametrize("where", [1, 2, 3])
def test_a_garbled_record_is_unreadable(tmp_path: Path, where: int) -> None:
    path, whole = journaled(tmp_path)
    lines = whole.splitlines(keepends=True)
    for old, new in ((b'"b"', b'"x"'), (b'"set"', b'"del"'), (b'"sha256":"', b'"sha256":"0')):
        if old in lines[where]:
            garbled = [*lines[:where], lines[where].replace(old, new, 1), *lines[where + 1:]]
            journal_path(path).write_bytes(b"".join(garbled))
            found = read_state(path)
            assert found.names is None and found.problem is not None, (where, old)
    # A record moved, dropped from the middle, or repeated breaks the chain.
    for shuffled in ([lines[0], *lines[2:]], [*lines[:2], lines[1], *lines[2:]],
                     [lines[0], lines[2], lines[1], *lines[3:]]):
        journal_path(path).write_bytes(b"".join(shuffled))
        assert read_state(path).names is None


@pytest.mark.parametrize(
    ("record", "why"),
    [
        pytest.param({"op": "del", "name": "zz"}, "removes 'zz', which is not listed", id="del-unlisted"),
        pytest.param({"op": "set", "name": "../etc", "version": None}, "invalid plugin name", id="a-path"),
        pytest.param({"op": "set", "name": "a", "version": "../x"}, "invalid pinned version", id="odd-pin"),
        pytest.param({"op": "put", "name": "a"}, "is not a change", id="unknown-op"),
    ],
)
def test_a_well_chained_but_invalid_record_is_unreadable(tmp_path: Path, record: dict[str, object],
                                                         why: str) -> None:
    from plugind.host import state

    path, whole = journaled(tmp_path)
    chain = json.loads(whole.splitlines()[-1])["sha256"]
    data, _ = state._records(chain, [record])
    journal_path(path).write_bytes(whole + data)
    found = read_state(path)
    assert found.names is None and found.problem is not None and why in found.problem


def test_a_stale_journal_is_ignored_and_a_missing_base_is_a_first_start(tmp_path: Path) -> None:
    path, whole = journaled(tmp_path)
    # A compaction cut short after its new base: the old journal names the old base.
    atomic_write(path, encode_state(["b", "c", "d"]))
    assert read_state(path).names == ["b", "c", "d"]
    # The operator puts a file of their own in place: it wins, whatever journal lies next to it.
    path.write_text(json.dumps({"version": 1, "loaded": ["z"]}))
    assert read_state(path).names == ["z"]
    path.unlink()
    assert read_state(path) == StateRead(None)
    assert journal_path(path).read_bytes() == whole


def test_an_empty_journal_is_unreadable_and_kept_aside(tmp_path: Path) -> None:
    path, whole = journaled(tmp_path)
    journal_path(path).write_bytes(b"")
    assert read_state(path).names is None
    journal_path(path).write_bytes(whole[:-3])
    aside = keep_aside(path)
    assert aside is not None and aside.read_bytes() == path.read_bytes()
    assert Path(f"{journal_path(path)}.unreadable").read_bytes() == whole[:-3]


APPEND_ON_A_FULL_DISK = r"""
import os, resource, signal, sys
from pathlib import Path
from plugind.host.state import StateWriter, journal_path, read_state
path = Path(sys.argv[1])
writer = StateWriter(path)
writer.write(["a"])
whole = journal_path(path).read_bytes()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
# The kernel lets the next write(2) put 10 bytes in (a short write): a torn record.
resource.setrlimit(resource.RLIMIT_FSIZE, (len(whole) + 10, resource.RLIM_INFINITY))
try:
    writer.write(["a", "b"])
except OSError as exc:
    print("refused:", exc.strerror)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
assert journal_path(path).read_bytes() == whole, "the torn record was left in"
assert read_state(path).names == ["a"]
writer.write(["a", "c"])
assert read_state(path).names == ["a", "c"]
print("ok")
"""


def test_a_part_written_record_is_cut_off_again(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", APPEND_ON_A_FULL_DISK, str(tmp_path / "loaded.json")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["refused: No space left on device", "ok"]
