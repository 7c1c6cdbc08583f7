"""Frames: encoding, the size cap checked before the body, garbage, partial reads, both transports."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time
from types import SimpleNamespace

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugind.errors import ProtocolViolation
from plugind.wire import BlockingChannel, FrameBuffer, FrameEncoder, RecvBuffer, decode, encode, frames
from plugind.wire.aio import read_message, write_message
from plugind.wire.frames import SMALL_FRAME
from plugind.wire.limits import MAX_DEPTH, too_deep

VALUES = [None, True, False, 0, -1, 2**63 - 1, -(2**63), 1.5, "", "héllo", b"\x00\xff",
          [1, [2, [3]]], {"a": {"b": [None]}}, {1: "int key"}]


@pytest.mark.parametrize("value", VALUES, ids=[repr(v)[:20] for v in VALUES])
def test_round_trip(value: object) -> None:
    frame = encode({"type": "x", "data": value})
    assert struct.unpack(">I", frame[:4])[0] == len(frame) - 4
    assert decode(frame) == {"type": "x", "data": value}


def test_encode_refuses_non_msgpack_values() -> None:
    with pytest.raises(ProtocolViolation, match="cannot encode message") as info:
        encode({"type": "x", "data": object()})
    assert "msgpack values" in info.value.message


BAD_BODIES = [
    (b"\xc1", "not valid msgpack"),
    (msgpack.packb([1, 2]), "not a map with a string 'type'"),
    (msgpack.packb({"data": 1}), "not a map with a string 'type'"),
    (msgpack.packb({"type": 5}), "not a map with a string 'type'"),
    (msgpack.packb({"type": "x"}) + b"\x00", "not valid msgpack"),
    (msgpack.packb({"type": "x", "t": msgpack.ExtType(5, b"a")}), "extension type 5"),
]


@pytest.mark.parametrize(("body", "message"), BAD_BODIES, ids=["reserved-byte", "array", "no-type",
                                                                 "int-type", "trailing", "ext"])
def test_garbage_bodies_are_violations(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolViolation, match=message):
        decode(struct.pack(">I", len(body)) + body)


def test_length_mismatch_and_short_header() -> None:
    body = msgpack.packb({"type": "x"})
    with pytest.raises(ProtocolViolation, match="announces 10 bytes"):
        decode(struct.pack(">I", 10) + body)
    with pytest.raises(ProtocolViolation, match="truncated frame header"):
        decode(b"\x00\x00")


def test_buffer_rejects_oversized_prefix_from_the_header_alone() -> None:
    buf = FrameBuffer(max_frame=1024)
    with pytest.raises(ProtocolViolation, match="2147483648 bytes exceeds the maximum of 1024") as info:
        buf.feed(struct.pack(">I", 2**31))
    assert info.value.detail == "oversized frame: 2147483648 > 1024"


def test_buffer_rejects_zero_length() -> None:
    with pytest.raises(ProtocolViolation, match="empty frame"):
        FrameBuffer().feed(b"\x00\x00\x00\x00")


def test_buffer_reassembles_byte_by_byte_and_splits_batches() -> None:
    frames = b"".join(encode({"type": "x", "id": i, "pad": "p" * i}) for i in range(50))
    buf = FrameBuffer()
    got = []
    for i in range(len(frames)):
        got.extend(buf.feed(frames[i : i + 1]))
    assert [m["id"] for m in got] == list(range(50))
    assert buf.pending == 0
    assert [m["id"] for m in buf.feed(frames)] == list(range(50))


def test_buffer_compacts_after_many_frames() -> None:
    buf = FrameBuffer()
    frame = encode({"type": "x", "pad": "p" * 1000})
    for _ in range(200):
        assert len(buf.feed(frame + frame[:10])) >= 1
        buf.feed(frame[10:])
    assert buf.pending == 0


def receive(rb: RecvBuffer, data: bytes, step: int = 1 << 30) -> list[dict[str, object]]:
    """Hand `data` to `rb` the way a transport does, at most `step` bytes per receive."""
    out: list[dict[str, object]] = []
    while data:
        view = rb.get_buffer()
        n = min(len(view), len(data), step)
        view[:n] = data[:n]
        data = data[n:]
        out += rb.buffer_updated(n)
    return out


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 30], ids=["bytewise", "7", "4k", "whole"])
def test_recv_buffer_reassembles_any_split(step: int) -> None:
    frames = b"".join(encode({"type": "x", "id": i, "pad": "p" * i}) for i in range(50))
    rb = RecvBuffer()
    assert [m["id"] for m in receive(rb, frames, step)] == list(range(50))
    assert rb.pending == 0


_scalars = st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8) | st.binary(max_size=8)
_values = st.recursive(_scalars,
                       lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=200)


def _nest(value: object, depth: int) -> object:
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@settings(max_examples=150, deadline=None)
@given(value=_values, extra=st.integers(min_value=0, max_value=MAX_DEPTH + 3))
def test_recv_buffer_lists_every_message_its_frame_size_does_not_bound(value: object, extra: int) -> None:
    # Soundness: any message holding a value nested past MAX_DEPTH is listed in `unbounded` (the
    # supervisor walks only those); a message that is not listed is within the limit.
    data = _nest(value, extra)
    rb = RecvBuffer(watch_depth=True)
    frames_in = encode({"type": "result", "id": 1, "ok": True, "data": data}) + encode({"type": "pong"})
    got = receive(rb, frames_in)
    assert [m["type"] for m in got] == ["result", "pong"]
    if too_deep(got[0]["data"]):
        assert any(m is got[0] for m in rb.unbounded)
    assert not any(m is got[1] for m in rb.unbounded)


def test_recv_buffer_depth_bound_small_frames_pass_deep_ones_are_listed_each_read() -> None:
    rb = RecvBuffer(watch_depth=True)
    at_limit = encode({"type": "result", "id": 1, "ok": True, "data": _nest(1, MAX_DEPTH)})
    past = encode({"type": "result", "id": 2, "ok": True, "data": _nest(1, MAX_DEPTH + 1)})
    assert [m["id"] for m in receive(rb, at_limit)] == [1] and rb.unbounded == []
    got = receive(rb, past)
    assert [m["id"] for m in got] == [2] and rb.unbounded == got
    assert receive(rb, at_limit) and rb.unbounded == []  # one read's list, not a history
    # Without watch_depth nothing is counted or listed.
    plain = RecvBuffer()
    assert receive(plain, past) and plain.unbounded == []


def test_recv_buffer_grows_for_a_big_frame_and_shrinks_after() -> None:
    rb = RecvBuffer(max_frame=4 << 20, size=128 * 1024)
    big = encode({"type": "x", "data": b"b" * (3 << 20)})
    small = encode({"type": "y"})
    got = receive(rb, big, step=100_000)
    assert [m["type"] for m in got] == ["x"] and got[0]["data"] == b"b" * (3 << 20)
    assert len(rb.get_buffer()) == 128 * 1024  # back to its own size, the 3 MiB are gone
    got = receive(rb, big + small + small[:3], step=100_000)
    assert [m["type"] for m in got] == ["x", "y"] and rb.pending == 3
    assert receive(rb, small[3:]) == [{"type": "y"}]
    assert len(rb.get_buffer()) == 128 * 1024


def test_recv_buffer_refuses_an_oversized_prefix_from_the_header_alone() -> None:
    rb = RecvBuffer(max_frame=1 << 20, size=128 * 1024)
    with pytest.raises(ProtocolViolation, match="exceeds the maximum of 1048576 bytes"):
        receive(rb, struct.pack(">I", 2**31) + b"j" * 70_000)  # leaves less than MIN_FREE of room
    # A transport that reads again before it is closed must not make room for the 2 GB announced.
    assert len(rb.get_buffer()) < 1 << 20
    with pytest.raises(ProtocolViolation, match="empty frame"):
        receive(RecvBuffer(), b"\x00\x00\x00\x00")


def test_blocking_channel_round_trip_and_eof() -> None:
    a, b = socket.socketpair()
    with a, b:
        ca, cb = BlockingChannel(a), BlockingChannel(b)
        ca.send({"type": "x", "data": b"z" * 100_000})
        assert cb.recv() == {"type": "x", "data": b"z" * 100_000}
        a.shutdown(socket.SHUT_WR)
        assert cb.recv() is None


def test_blocking_channel_sends_the_rest_when_one_sendmsg_is_not_enough() -> None:
    # A socket with a timeout sends what fits and returns: the channel must send the rest itself.
    a, b = socket.socketpair()
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        a.settimeout(10)
        b.settimeout(5)  # a lost tail fails the test instead of hanging it
        ca, cb = BlockingChannel(a), BlockingChannel(b)
        got: list[dict[str, object] | None] = []
        reader = threading.Thread(target=lambda: got.extend([cb.recv(), cb.recv()]))
        reader.start()
        big = bytes(range(256)) * 16384  # 4 MiB, far more than the socket buffers hold
        ca.send({"type": "x", "data": big})
        ca.send({"type": "y"})
        reader.join()
        assert got == [{"type": "x", "data": big}, {"type": "y"}]


def test_blocking_channel_refuses_2gb_prefix_without_reading_the_body() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(struct.pack(">I", 2**31))  # and nothing else: a read of the body would block
        with pytest.raises(ProtocolViolation, match="exceeds the maximum"):
            BlockingChannel(b, max_frame=1 << 20).recv()


def test_blocking_channel_eof_inside_a_frame() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(encode({"type": "x"})[:-2])
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(ProtocolViolation, match="closed in the middle of a frame"):
            BlockingChannel(b).recv()


def test_blocking_channel_send_is_whole_under_threads() -> None:
    a, b = socket.socketpair()
    with a, b:
        ca, cb = BlockingChannel(a), BlockingChannel(b)
        got: list[dict[str, object]] = []
        reader = threading.Thread(target=lambda: got.extend(cb.recv() for _ in range(400)))  # type: ignore[misc]
        reader.start()
        threads = [threading.Thread(target=lambda n=n: [ca.send({"type": "x", "n": n, "p": "q" * 5000})
                                                        for _ in range(100)]) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        reader.join()
        assert sorted(m["n"] for m in got) == sorted([0, 1, 2, 3] * 100)


def test_frame_encoder_matches_encode_and_survives_a_refused_message() -> None:
    enc = FrameEncoder()
    small = {"type": "x", "n": 1, "s": "hi"}
    big = {"type": "x", "data": b"b" * (SMALL_FRAME + 1)}
    assert enc.frame(small) == encode(small)
    assert enc.body(small) == encode(small)[4:]
    assert enc.frame_parts(small) == (encode(small),)
    parts = enc.frame_parts(big)
    assert len(parts) == 2 and b"".join(parts) == encode(big)
    for bad in ({"type": "x", "v": {1, 2}}, {"type": "x", "v": 2**70}, {"type": "x", "v": [object()]}):
        with pytest.raises(ProtocolViolation, match="cannot encode message"):
            enc.frame(bad)
        # Nothing of the refused message is left in the packer to prefix the next one.
        assert enc.frame(small) == encode(small)


def _send_later(sock: socket.socket, delay: float, msg: dict[str, object]) -> int:
    """Fork a process that sends `msg` on `sock` after `delay` seconds."""
    pid = os.fork()
    if pid == 0:
        time.sleep(delay)
        sock.sendall(encode(msg))
        os._exit(0)
    return pid


TICK = 2.0**-10  # a clock step that adds up exactly


class ScriptedPoll:
    """Stands in for a channel's poll object, on a clock of its own that moves one TICK per poll, so
    how often the channel polls depends on the code alone. Records each poll; at the `arrive_at`-th
    it hands `arrival` to the socket as the peer and from then on answers what the real poll says;
    before that (or with no arrival at all) it answers 'nothing yet'."""

    def __init__(self, chan: BlockingChannel, peer: socket.socket, arrival: bytes | None, arrive_at: int,
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.real, self.peer, self.arrival, self.arrive_at = chan._poller, peer, arrival, arrive_at
        self.polls = 0
        self.now = 0.0
        chan._poller = self  # type: ignore[assignment]
        monkeypatch.setattr(frames, "time", SimpleNamespace(monotonic=lambda: self.now))

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        assert timeout == 0  # polling: never a sleep in poll()
        assert self.polls < 1000, "still polling, past any window these tests give"
        self.polls += 1
        self.now += TICK
        if self.arrival is None or self.polls < self.arrive_at:
            return []
        if self.polls == self.arrive_at:
            self.peer.sendall(self.arrival)
        return self.real.poll(0)


def test_blocking_channel_polls_until_a_message_arrives(monkeypatch: pytest.MonkeyPatch) -> None:
    # A message that arrives while the channel polls is received after the poll that saw it: the
    # thread never sleeps in recv() for it (what that saves: bench/hooks.py).
    a, b = socket.socketpair()
    with a, b:
        chan = BlockingChannel(b)
        spy = ScriptedPoll(chan, a, encode({"type": "x", "n": 1}), 3, monkeypatch)
        assert chan.recv(1.0) == {"type": "x", "n": 1}
    assert spy.polls == 3


def test_blocking_channel_without_a_window_sleeps_in_recv_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = socket.socketpair()
    with a, b:
        chan = BlockingChannel(b)
        spy = ScriptedPoll(chan, a, None, 0, monkeypatch)
        pid = _send_later(a, 0.05, {"type": "x", "n": 1})
        assert chan.recv(0.0) == {"type": "x", "n": 1}
        os.waitpid(pid, 0)
    assert spy.polls == 0


def test_blocking_channel_stops_polling_when_its_window_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing comes within a 10-tick window: ten polls, then the receive that sleeps until the
    # message is there (here it already is; the scripted poll just never says so).
    a, b = socket.socketpair()
    with a, b:
        chan = BlockingChannel(b)
        spy = ScriptedPoll(chan, a, None, 0, monkeypatch)
        a.sendall(encode({"type": "late"}))
        assert chan.recv(10 * TICK) == {"type": "late"}
    assert spy.polls == 10


def test_blocking_channel_polls_for_the_rest_of_a_frame_that_has_begun(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Its sender is writing it now: the rest is polled for (within the channel's spin_s), even by a
    # receive that does not poll for the first bytes.
    a, b = socket.socketpair()
    with a, b:
        chan = BlockingChannel(b)
        chan.spin_s = 1.0
        frame = encode({"type": "x", "n": 2})
        a.sendall(frame[:3])
        spy = ScriptedPoll(chan, a, frame[3:], 2, monkeypatch)
        rescue = threading.Timer(2.0, a.sendall, (frame[3:],))  # for a channel that sleeps instead
        rescue.start()
        try:
            assert chan.recv(0.0) == {"type": "x", "n": 2}
        finally:
            rescue.cancel()
            rescue.join()
    assert spy.polls == 2


def test_blocking_channel_keeps_its_timeout_when_asked_to_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    # A socket with a timeout does not poll: the timeout is neither extended by the poll nor spent
    # spinning.
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(0.2)
        chan = BlockingChannel(b)
        spy = ScriptedPoll(chan, a, None, 0, monkeypatch)
        with pytest.raises(TimeoutError):
            chan.recv(1.0)
    assert spy.polls == 0


def test_blocking_channel_max_frame_applies_to_its_buffer() -> None:
    a, b = socket.socketpair()
    with a, b:
        chan = BlockingChannel(b)
        chan.max_frame = 1024
        a.sendall(struct.pack(">I", 1025))
        with pytest.raises(ProtocolViolation, match="exceeds the maximum of 1024"):
            chan.recv()


def test_asyncio_reader_writer() -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        _, wa = await asyncio.open_unix_connection(sock=a)
        rb, wb = await asyncio.open_unix_connection(sock=b)
        await write_message(wa, {"type": "x", "data": [1, 2]})
        assert await read_message(rb) == {"type": "x", "data": [1, 2]}
        wa.write(struct.pack(">I", 2**31))
        await wa.drain()
        with pytest.raises(ProtocolViolation, match="exceeds the maximum"):
            await read_message(rb, max_frame=4096)
        wa.close()
        wb.close()

    asyncio.run(main())


def test_asyncio_reader_eof_cases() -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        _, wa = await asyncio.open_unix_connection(sock=a)
        rb, wb = await asyncio.open_unix_connection(sock=b)
        wa.write(encode({"type": "x"})[:-1])
        wa.close()
        with pytest.raises(ProtocolViolation, match="connection closed after"):
            await read_message(rb)
        wb.close()
        c, d = socket.socketpair()
        _, wc = await asyncio.open_unix_connection(sock=c)
        rd, wd = await asyncio.open_unix_connection(sock=d)
        wc.close()
        assert await read_message(rd) is None
        wd.close()

    asyncio.run(main())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.integers(min_value=1, max_value=64))
def test_arbitrary_bytes_only_ever_give_messages_or_protocol_violations(data: bytes, step: int) -> None:
    buf = FrameBuffer(max_frame=1024)
    try:
        for i in range(0, len(data), step):
            for msg in buf.feed(data[i : i + step]):
                assert isinstance(msg, dict) and isinstance(msg["type"], str)
    except ProtocolViolation as exc:
        assert exc.detail


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
                    | st.text(max_size=20) | st.binary(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=4),
                    max_leaves=20))
def test_any_msgpack_payload_round_trips(value: object) -> None:
    assert FrameBuffer().feed(encode({"type": "x", "data": value})) == [{"type": "x", "data": value}]


_LEAF = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
         | st.text(max_size=40) | st.binary(max_size=40))
_VALUE = st.recursive(_LEAF, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=20)


def _sent_bytes(msg: dict[str, object], max_frame: int = frames.DEFAULT_MAX_FRAME) -> bytes:
    """What BlockingChannel.send puts on the wire for `msg`, read raw from the peer."""
    a, b = socket.socketpair()
    with a, b:
        BlockingChannel(a, max_frame=max_frame).send(msg)
        a.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := b.recv(1 << 20):
            out += chunk
        return out


@settings(max_examples=150, deadline=None)
@given(data=_VALUE, pad=st.sampled_from([0, SMALL_FRAME - 40, SMALL_FRAME + 1, 70_000]))
def test_blocking_channel_sends_the_bytes_of_encode(data: object, pad: int) -> None:
    # Small frames go out joined and big ones as header and body: either way, encode's bytes.
    msg = {"type": "result", "id": 7, "ok": True, "data": data, "pad": b"p" * pad}
    assert _sent_bytes(msg) == encode(msg)


def test_blocking_channel_refuses_an_oversized_or_unencodable_message_and_sends_nothing() -> None:
    a, b = socket.socketpair()
    with a, b:
        chan = BlockingChannel(a, max_frame=1024)
        for bad, match in (({"type": "x", "p": b"p" * 1100}, "frame too large to send"),
                           ({"type": "x", "p": object()}, "cannot encode message")):
            with pytest.raises(ProtocolViolation) as info:
                chan.send(bad)
            assert match in (info.value.detail or "") + info.value.message
        fits = {"type": "x", "p": b"p" * 1000}  # 1,000 bytes and its envelope: within 1,024
        chan.send(fits)
        a.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := b.recv(1 << 20):
            out += chunk
        assert out == encode(fits)  # nothing of the refused ones went out before it


def _decoded_or_refusal(body: bytes) -> object:
    try:
        return frames.decode_body(body)
    except ProtocolViolation as exc:
        return ("refused", exc.message, exc.detail)


_BODIES = (st.binary(max_size=64)
           | _VALUE.map(lambda v: msgpack.packb(v, use_bin_type=True))
           | st.builds(lambda t, v: msgpack.packb({"type": t, "data": v}, use_bin_type=True),
                       st.text(max_size=5) | st.integers(-9, 9) | st.none(), _VALUE)
           | st.builds(lambda v, extra: msgpack.packb({"type": "x", "data": v}, use_bin_type=True) + extra,
                       _VALUE, st.binary(min_size=1, max_size=4))
           | st.builds(lambda v, cut: msgpack.packb({"type": "x", "data": v}, use_bin_type=True)[:-cut],
                       _VALUE, st.integers(1, 3))
           | st.just(b"\x81\xa4type\xd4\x05\x00"))  # an extension type


@settings(max_examples=400, deadline=None)
@given(_BODIES)
def test_recv_buffer_decodes_or_refuses_each_body_as_decode_body_does(body: bytes) -> None:
    # RecvBuffer decodes inline (the receive path of both ends): every body, well-formed or not,
    # gives decode_body's message, or its very refusal (message and detail).
    rbuf = RecvBuffer(watch_depth=True)
    frame = struct.pack(">I", len(body)) + body
    if not body:
        return  # an empty frame is refused from its length (test_buffer_rejects_zero_length)
    view = rbuf.get_buffer()
    view[: len(frame)] = frame
    try:
        got: object = rbuf.buffer_updated(len(frame))
    except ProtocolViolation as exc:
        got = ("refused", exc.message, exc.detail)
    want = _decoded_or_refusal(body)
    assert got == (want if isinstance(want, tuple) else [want])


def _raw_frame(msg: dict[str, object]) -> bytes:
    # What a peer that skips every sender-side check sends.
    body = msgpack.packb(msg, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def test_a_frame_of_more_containers_than_a_message_may_hold_is_refused_as_it_is_decoded() -> None:
    # One byte per empty array: a 16 MiB frame of them decoded into 1.2 GB of lists. Decoding stops
    # at the limit; the same count of container bytes inside a bin is no container and passes.
    limit = frames.MAX_CONTAINERS
    rb = RecvBuffer(max_frame=4 << 20, watch_depth=True)
    ok = receive(rb, _raw_frame({"type": "result", "id": 1, "ok": True, "data": [[]] * (limit - 2)}))
    assert len(ok[0]["data"]) == limit - 2
    lookalike = bytes([0x90]) * (limit + 10)
    same = receive(rb, _raw_frame({"type": "result", "id": 2, "ok": True, "data": lookalike}))
    assert same[0]["data"] == lookalike
    with pytest.raises(ProtocolViolation, match=f"holds more than {limit} maps and arrays") as info:
        receive(rb, _raw_frame({"type": "result", "id": 3, "ok": True, "data": [[]] * (limit - 1)}))
    assert info.value.detail == "too many containers"
    assert frames.too_many_containers(msgpack.packb([{}] * limit))
    assert not frames.too_many_containers(msgpack.packb([{}] * (limit - 1)))
    assert not frames.too_many_containers(msgpack.packb(lookalike))


@pytest.mark.parametrize("seconds", [0, 2**32, 2**34], ids=["fixext4", "fixext8", "ext8"])
def test_a_frame_with_a_timestamp_is_listed_for_the_exact_walk(seconds: int) -> None:
    # msgpack decodes extension type -1 itself (ext_hook never sees it): the frames whose bytes hold
    # a timestamp's header are listed, and the walk finds it, wherever it is.
    stamp = msgpack.Timestamp(seconds, 5 if seconds else 0)
    rb = RecvBuffer(watch_depth=True)
    got = receive(rb, _raw_frame({"type": "result", "id": 1, "ok": True, "data": {"at": [stamp]}}))
    assert rb.unbounded == got and frames.holds_timestamp(got[0])
    plain = receive(rb, _raw_frame({"type": "result", "id": 2, "ok": True, "data": {"at": [1.5]}}))
    assert rb.unbounded == [] and not frames.holds_timestamp(plain[0])
    assert frames.holds_timestamp({stamp: 1}) and not frames.holds_timestamp({"x": [b"\xd6\xff"]})
