"""The state file's format (plugind/host/state.py): what reads back, and what is unreadable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plugind.host.state import StateUnreadable, decode_state, encode_state, read_state, write_state

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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loaded.json", "loaded.json.d"]


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
