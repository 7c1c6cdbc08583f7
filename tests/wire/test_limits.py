"""The value limits every boundary applies (plugind.wire.limits) and the send-side frame check."""

from __future__ import annotations

import json
import socket
from typing import Any

import msgpack
import pytest

from plugind.errors import ProtocolViolation
from plugind.wire import BlockingChannel, decode, decode_body, encode
from plugind.wire.frames import check_outgoing
from plugind.wire.limits import MAX_DEPTH, json_problem, lone_surrogate, too_deep


def lists(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def maps(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = {f"k{i}": value, "flat": [1, 2, 3][: i % 3]} if i % 2 else {"k": value}
    return value


def mixed(depth: int) -> Any:
    # The deep branch is the last of shallow ones (no deeper than it), in both maps and lists.
    value: Any = "leaf"
    shapes = (lambda v: {"x": [1], "y": {}, "z": v}, lambda v: [0, {"a": 1}, v])
    for i in range(depth):
        value = shapes[i % 2](value) if i else [value]
    return value


SHAPES = {"lists": lists, "maps": maps, "mixed": mixed}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("depth", "refused"), [(0, False), (1, False), (MAX_DEPTH - 1, False),
                                                (MAX_DEPTH, False), (MAX_DEPTH + 1, True),
                                                (1000, True), (100_000, True)],
                         ids=["scalar", "one", "limit-1", "limit", "limit+1", "1000", "100000"])
def test_too_deep_at_and_past_the_limit(shape: str, depth: int, refused: bool) -> None:
    value = SHAPES[shape](depth)
    assert too_deep(value) is refused
    # Far past Python's recursion limit it answers without recursing.
    assert too_deep(value, depth) is False
    assert too_deep(value, max(depth - 1, 0)) is (depth > 0)


@pytest.mark.parametrize(("value", "deep"), [
    ([], 1), ({}, 1), ([[], []], 2), ({"a": {"b": []}}, 3), ((1, (2,)), 2), ("[[[", 0), (b"{{", 0),
], ids=["empty-list", "empty-map", "siblings", "maps", "tuples", "str", "bytes"])
def test_depth_counts_containers(value: Any, deep: int) -> None:
    assert too_deep(value, deep) is False
    assert too_deep(value, deep - 1) is (deep > 0)


@pytest.mark.parametrize(("depth", "ok"), [(MAX_DEPTH, True), (MAX_DEPTH + 1, False)],
                         ids=["limit", "limit+1"])
def test_json_at_and_past_the_limit(depth: int, ok: bool) -> None:
    raw = json.dumps({"data": lists(depth)}).encode()
    problem = json_problem(raw, json.loads(raw)["data"], "data")
    if ok:
        assert problem is None
    else:
        assert problem == f"data is nested deeper than {MAX_DEPTH} levels (the limit for any value)"


@pytest.mark.parametrize("depth", [MAX_DEPTH, MAX_DEPTH + 1], ids=["limit", "limit+1"])
def test_msgpack_carries_the_limit_and_more(depth: int) -> None:
    # The limit is plugind's, well inside msgpack's own (1024): a frame at the limit, in its envelope,
    # encodes and decodes; one past it too, and is refused by whoever receives it (too_deep).
    frame = encode({"type": "result", "id": 1, "ok": True, "data": lists(depth)})
    data = decode(frame)["data"]
    assert data == lists(depth)
    assert too_deep(data) is (depth > MAX_DEPTH)


@pytest.mark.parametrize(("raw", "refused"), [
    (rb'"a\ud800b"', True),
    (rb'"\uDFFF"', True),
    (rb'{"\udc00": 1}', True),  # a key
    (rb'[1, {"x": ["\ud83d"]}]', True),  # a high surrogate without its low half
    (rb'"\ud83d\ude00"', False),  # a pair: one character
    (rb'"\\ud800"', False),  # an escaped backslash, then letters: no surrogate
    ('"caf\u00e9 \u2603"'.encode(), False),
    (b'"plain"', False),
    # json.loads(bytes) takes a surrogate's raw UTF-8 bytes ("surrogatepass"), and UTF-16 and UTF-32
    # bodies, whose escapes and bytes are not those of UTF-8.
    (b'{"data": "\xed\xa0\x80"}', True),
    ('{"data": "\ud800"}'.encode("utf-16-le", "surrogatepass"), True),
    ('["x", "\udfff"]'.encode("utf-32-be", "surrogatepass"), True),
    ('{"data": "caf\u00e9"}'.encode("utf-16"), False),  # with its BOM
    (b'{"data": "\xed\x9f\xbf"}', False),  # U+D7FF, the last character before the surrogates
], ids=["lone-high", "lone-low-upper", "key", "half-pair", "pair", "escaped-backslash", "non-ascii",
        "ascii", "raw-utf8-bytes", "utf-16", "utf-32", "utf-16-no-surrogate", "below-the-surrogates"])
def test_lone_surrogates(raw: bytes, refused: bool) -> None:
    value = json.loads(raw)
    assert lone_surrogate(value) is refused
    problem = json_problem(raw, value, "value")
    assert (problem is not None) is refused
    if refused:
        assert problem is not None and "lone surrogate" in problem
        with pytest.raises(UnicodeEncodeError):
            msgpack.packb(value)  # what would have failed further in


def test_the_raw_body_spares_the_walk() -> None:
    # The decision is read off the bytes first: a body that cannot hold a problem is not walked.
    deep_value = lists(MAX_DEPTH + 1)
    assert json_problem(b"{}", deep_value, "data") is None
    assert json_problem(b'"\\ud800"', "fine", "data") is None


@pytest.mark.parametrize(("length", "ok"), [(1024, True), (1025, False)], ids=["cap", "cap+1"])
def test_check_outgoing(length: int, ok: bool) -> None:
    if ok:
        check_outgoing(length, 1024)
    else:
        with pytest.raises(ProtocolViolation, match="message of 1025 bytes exceeds the maximum frame "
                                                    "size of 1024 bytes") as info:
            check_outgoing(length, 1024)
        assert info.value.detail == "frame too large to send"


def test_a_channel_refuses_to_send_a_frame_its_peer_would_refuse() -> None:
    a, b = socket.socketpair()
    with a, b:
        chan = BlockingChannel(a, max_frame=1024)
        body_at_cap = {"type": "log", "msg": ""}
        body_at_cap["msg"] = "x" * (1024 - len(msgpack.packb(body_at_cap)) - 2)  # a str16 header
        assert len(msgpack.packb(body_at_cap)) == 1024
        chan.send(body_at_cap)
        with pytest.raises(ProtocolViolation, match="exceeds the maximum frame size of 1024 bytes"):
            chan.send({"type": "log", "msg": "x" * 2000})
        chan.send({"type": "log", "msg": "after"})
        peer = BlockingChannel(b, max_frame=1024)
        assert peer.recv() == body_at_cap
        assert peer.recv() == {"type": "log", "msg": "after"}  # nothing of the refused one was sent


@pytest.mark.parametrize("body", [b"\x91" * 1000 + b"\x01", b"\x81\x01" + b"\x91" * 1000 + b"\x01"],
                         ids=["list", "map-without-type"])
def test_a_deep_frame_that_is_not_a_message_is_a_violation(body: bytes) -> None:
    # Within msgpack's own limit (1024), past what repr() survives: the refusal must still say why.
    with pytest.raises(ProtocolViolation, match="frame is not a map with a string 'type'") as info:
        decode_body(body)
    assert info.value.detail is not None and info.value.detail.startswith("not a message: ")
