"""Frames: a 4-byte big-endian length, then a msgpack map of that many bytes.

The length is checked against the maximum frame size before a single byte of the body is read,
so a peer announcing 2 GB costs us four bytes, not two gigabytes.
"""

from __future__ import annotations

import mmap
import os
import re
import reprlib
import select
import socket
import struct
import threading
import time
from collections import deque
from typing import Any

import msgpack

from plugind.errors import ProtocolViolation
from plugind.wire.limits import MAX_DEPTH

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from
_unpackb = msgpack.unpackb
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
# Nothing useful fits in less than a fixmap with a "type" entry.
MIN_FRAME = 1
# A frame with a 64 KiB payload plus its envelope fits in one recv.
RECV_CHUNK = 256 * 1024
# RecvBuffer offers at least this much room per receive.
MIN_FREE = 64 * 1024
# A frame up to this size is sent as one joined buffer, a bigger one as header and body apart.
SMALL_FRAME = 16 * 1024


def _lazy_room(size: int) -> mmap.mmap:
    """`size` bytes to receive into, zero but not touched: a private anonymous mapping, whose pages
    the kernel provides as the receives reach them. A bytearray is zeroed at once, all of it: as
    a channel's first buffer (which a channel of small frames keeps for good, starting over at its
    head whenever it is drained) it kept 256 KiB resident per plugin on both ends, and paid 64
    page faults at the first receive. Only for that first buffer: a bigger one, made for a big
    frame and dropped after it, is a bytearray, whose memory the allocator hands back warm the next
    time (a fresh mapping per 1 MiB frame faulted all of it again: 8x the receive time there)."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)


# Every msgpack byte that can open a container: fixmap, fixarray, array 16/32, map 16/32. A value
# nesting d containers is encoded with at least d of these bytes, so a frame with at most
# MAX_DEPTH + 1 of them (the message's own map is one) holds no value deeper than MAX_DEPTH.
_SHALLOW = MAX_DEPTH + 1
_NOT_CONTAINER = bytes(b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF))


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not part of the protocol")


# The most maps and arrays one message may hold. Each costs the receiver a Python object (about 60
# bytes) for as little as one byte of frame: a 16 MiB frame of empty arrays decoded into 1.2 GB and
# 7 s of the event loop. A frame with fewer container bytes than this holds fewer containers, so
# only a bigger one with more is decoded counting (`_decode_counted`).
MAX_CONTAINERS = 1 << 18
# msgpack decodes extension type -1 (its timestamp) itself, without asking ext_hook. A frame with
# one of its headers (fixext 4, fixext 8, ext 8 of 12 bytes) is walked for one (`holds_timestamp`).
_TIMESTAMP_HEADER = re.compile(rb"\xd6\xff|\xd7\xff|\xc7\x0c\xff")


class _TooManyContainers(Exception):
    pass


def _decode_counted(body: bytes | bytearray | memoryview) -> Any:
    """As msgpack.unpackb for a frame body, refusing one of more than MAX_CONTAINERS maps and
    arrays as soon as it has decoded that many. Raises ProtocolViolation, or what unpackb raises."""
    count = 0

    def counted(value: Any) -> Any:
        nonlocal count
        count += 1
        if count > MAX_CONTAINERS:
            raise _TooManyContainers
        return value

    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False, ext_hook=_refuse_ext,
                               list_hook=counted, object_hook=counted)
    except _TooManyContainers:
        raise ProtocolViolation(
            f"message holds more than {MAX_CONTAINERS} maps and arrays (the limit of the protocol)",
            detail="too many containers",
        ) from None


def too_many_containers(body: bytes | bytearray | memoryview) -> bool:
    """Whether an encoded message holds more than MAX_CONTAINERS maps and arrays (for a sender,
    before it sends: the receiver refuses such a frame as a protocol violation)."""
    if not _may_exceed_containers(body):
        return False
    try:
        _decode_counted(body)
    except ProtocolViolation:
        return True
    return False


def check_containers(body: bytes | bytearray | memoryview) -> None:
    """Raise ProtocolViolation (detail "frame too large to send", as check_outgoing's) when the
    encoded message `body` holds more maps and arrays than the receiver takes (MAX_CONTAINERS)."""
    if too_many_containers(body):
        raise ProtocolViolation(
            f"message holds more than {MAX_CONTAINERS} maps and arrays, which the peer refuses",
            detail="frame too large to send",
        )


def holds_timestamp(value: Any) -> bool:
    """True if a msgpack timestamp (extension type -1, which msgpack decodes itself) is anywhere in
    `value`: no value of the protocol, and nothing JSON or the API can carry."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is msgpack.Timestamp:
            return True
    return False


def _unencodable(exc: Exception) -> ProtocolViolation:
    return ProtocolViolation(
        f"cannot encode message: {exc}; payloads must be msgpack values "
        "(None, bool, int, float, str, bytes, list, dict)",
        detail=str(exc),
    )


def encode_body(msg: dict[str, Any]) -> bytes:
    """The msgpack body of a frame holding `msg` (no length prefix). Raises ProtocolViolation."""
    try:
        return msgpack.packb(msg, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _unencodable(exc) from exc


def encode(msg: dict[str, Any]) -> bytes:
    """One frame holding `msg`. Raises ProtocolViolation if `msg` cannot be encoded as msgpack."""
    body = encode_body(msg)
    return HEADER.pack(len(body)) + body


class FrameEncoder:
    """`encode` for a hot path: one msgpack Packer kept and reused.

    `msgpack.packb` builds a Packer per call; reusing one saves about 0.4 us per small message (a
    third of the encoding). Not thread-safe: one owner (the event loop thread, or callers holding a
    lock). The Packer resets itself when packing raises, so a refused message leaves nothing behind.
    """

    __slots__ = ("_pack",)

    def __init__(self) -> None:
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def body(self, msg: dict[str, Any]) -> bytes:
        """The msgpack body of a frame holding `msg`. Raises ProtocolViolation."""
        try:
            return self._pack(msg)
        except (TypeError, ValueError, OverflowError) as exc:
            raise _unencodable(exc) from exc

    def frame(self, msg: dict[str, Any]) -> bytes:
        """One frame (length prefix and body) holding `msg`. Raises ProtocolViolation."""
        body = self.body(msg)
        return HEADER.pack(len(body)) + body

    def frame_parts(self, msg: dict[str, Any]) -> tuple[bytes, ...]:
        """`frame(msg)` as buffers for a vectored write: one joined buffer up to SMALL_FRAME, the
        length prefix and the body apart beyond (saves copying a big body). Raises ProtocolViolation."""
        body = self.body(msg)
        if len(body) <= SMALL_FRAME:
            return (HEADER.pack(len(body)) + body,)
        return HEADER.pack(len(body)), body


def check_length(length: int, max_frame: int) -> None:
    """Raise ProtocolViolation unless MIN_FRAME <= length <= max_frame."""
    if length > max_frame:
        raise ProtocolViolation(
            f"frame of {length} bytes exceeds the maximum of {max_frame} bytes",
            detail=f"oversized frame: {length} > {max_frame}",
        )
    if length < MIN_FRAME:
        raise ProtocolViolation("empty frame", detail="frame length 0")


def check_outgoing(length: int, max_frame: int) -> None:
    """Raise ProtocolViolation (detail "frame too large to send") if a body of `length` bytes is
    more than the peer accepts, before a byte of it is sent.

    The two sides share one maximum frame size. A peer receiving an oversized frame cannot tell
    which call it belonged to without reading all of it, so it treats the sender as broken and cuts
    it off; a sender that refuses to send one turns the same mistake into an error for one call.
    """
    if length > max_frame:
        raise ProtocolViolation(
            f"message of {length} bytes exceeds the maximum frame size of {max_frame} bytes",
            detail="frame too large to send",
        )


def _may_exceed_containers(body: bytes | bytearray | memoryview) -> bool:
    # Fewer bytes, or fewer container bytes, than MAX_CONTAINERS: fewer containers (the usual frame
    # is decoded without a hook call per container).
    if len(body) <= MAX_CONTAINERS:
        return False
    data = body if isinstance(body, (bytes, bytearray)) else bytes(body)
    return _containers(data, 0, len(data)) > MAX_CONTAINERS


def decode_body(body: bytes | bytearray | memoryview, *, counted: bool | None = None) -> dict[str, Any]:
    """The message in one frame body. Raises ProtocolViolation for anything but a map with a str "type",
    or a map of more than MAX_CONTAINERS maps and arrays. `counted`: whether the frame may hold that
    many (None: looked at here)."""
    if counted is None:
        counted = _may_exceed_containers(body)
    try:
        msg = (_decode_counted(body) if counted
               else msgpack.unpackb(body, raw=False, strict_map_key=False, ext_hook=_refuse_ext))
    except ProtocolViolation:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise ProtocolViolation(
            f"frame is not valid msgpack: {type(exc).__name__}: {exc}"[:300],
            detail=f"undecodable frame: {type(exc).__name__}",
        ) from exc
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        # reprlib: a peer's value may nest past what repr() survives (RecursionError).
        raise ProtocolViolation(
            "frame is not a map with a string 'type'", detail=f"not a message: {reprlib.repr(msg)[:100]}"
        )
    return msg


def decode(frame: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> dict[str, Any]:
    """Decode one complete frame (header + body). Raises ProtocolViolation."""
    if len(frame) < HEADER_SIZE:
        raise ProtocolViolation("truncated frame header", detail="short header")
    (length,) = HEADER.unpack_from(frame)
    check_length(length, max_frame)
    if len(frame) != HEADER_SIZE + length:
        raise ProtocolViolation(
            f"frame announces {length} bytes but carries {len(frame) - HEADER_SIZE}",
            detail="length mismatch",
        )
    return decode_body(memoryview(frame)[HEADER_SIZE:])


class FrameBuffer:
    """Incremental decoder: feed bytes as they arrive, get whole messages out.

    For bytes handed over by the caller (a `data_received` protocol); the supervisor receives into a
    RecvBuffer instead, and BlockingChannel keeps its own buffer.
    """

    __slots__ = ("_buf", "_pos", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Append `data`; return every message now complete. Raises ProtocolViolation."""
        buf = self._buf
        # Kept flat on purpose. With nothing buffered (the usual case: a reply arrives whole),
        # frames are decoded straight from `data`, and only an incomplete tail is copied.
        src: bytes | bytearray
        if buf:
            buf += data
            src = buf
            pos = self._pos
        else:
            src = data
            pos = 0
        end = len(src)
        out: list[dict[str, Any]] = []
        max_frame = self.max_frame
        while end - pos >= HEADER_SIZE:
            (length,) = HEADER.unpack_from(src, pos)
            if length > max_frame or length < MIN_FRAME:
                check_length(length, max_frame)
            if end - pos - HEADER_SIZE < length:
                break
            start = pos + HEADER_SIZE
            pos = start + length
            out.append(decode_body(memoryview(src)[start:pos]))
        if src is not buf:
            if pos < end:
                buf += memoryview(src)[pos:]
            self._pos = 0
        elif pos == end:
            buf.clear()
            self._pos = 0
        elif pos > 65536:
            del buf[:pos]
            self._pos = 0
        else:
            self._pos = pos
        return out

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf) - self._pos


class RecvBuffer:
    """Incremental decoder the transport receives straight into (asyncio.BufferedProtocol).

    The host's receive path: `get_buffer()` hands out free space, `buffer_updated(n)` returns every
    message now complete. Receiving into a buffer we keep, instead of `data_received`, spares a
    256 KiB allocation per read (asyncio's selector transport calls recv(256 KiB)), which costs
    about 12 us on this kind of VM: as much as the whole raw socketpair round trip.

    The buffer is never resized (the transport may still hold a view of it): room is made by
    moving to a new one, which also grows for a frame larger than the buffer (its length is checked
    against the maximum frame size first) and shrinks back once that frame is consumed.
    """

    __slots__ = ("_buf", "_end", "_first", "_size", "_start", "_view", "max_frame", "unbounded",
                 "watch_depth")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, size: int = RECV_CHUNK, *,
                 watch_depth: bool = False) -> None:
        self.max_frame = max_frame
        self._size = size
        self._first = _lazy_room(size)  # gone back to once a bigger buffer is drained
        self._buf: bytearray | mmap.mmap = self._first
        self._view = memoryview(self._buf)
        self._start = 0  # first byte not yet part of a decoded frame
        self._end = 0  # end of the bytes received
        # With `watch_depth`, each buffer_updated lists here the messages it returned whose frame
        # does not rule out a value nested past MAX_DEPTH (a frame of n bytes nests at most n
        # containers, and at most as many as it has container bytes), or a msgpack timestamp (a
        # frame without its headers holds none): only those need the exact (and dearer) walks of
        # plugind.wire.limits.too_deep and holds_timestamp. Empty for the usual small frame.
        self.watch_depth = watch_depth
        self.unbounded: list[dict[str, Any]] = []

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Free space to receive into: at least MIN_FREE bytes, or the rest of a frame in progress.

        `sizehint` (asyncio.BufferedProtocol's) is ignored: the frame in progress decides."""
        if len(self._buf) - self._end < MIN_FREE:
            self._make_room()
        return self._view[self._end :]

    def _make_room(self) -> None:
        start, end = self._start, self._end
        pending = end - start
        need = pending + MIN_FREE
        if pending >= HEADER_SIZE:  # a frame in progress: make room for all of it
            (length,) = HEADER.unpack_from(self._buf, start)
            if length <= self.max_frame:  # else buffer_updated has refused it already
                need = max(need, HEADER_SIZE + length)
        new = bytearray(max(self._size, need))
        new[:pending] = self._view[start:end]
        self._buf, self._view = new, memoryview(new)
        self._start, self._end = 0, pending

    def buffer_updated(self, nbytes: int) -> list[dict[str, Any]]:
        """`nbytes` more were received; return every message now complete. Raises ProtocolViolation."""
        end = self._end + nbytes
        self._end = end
        buf, view, pos, max_frame = self._buf, self._view, self._start, self.max_frame
        out: list[dict[str, Any]] = []
        # Frames up to `shallow` bytes cannot nest past the limit (with watch_depth off, none is
        # looked at: no frame is longer than max_frame).
        watch = self.watch_depth
        shallow = _SHALLOW if watch else max_frame
        _timestamp_header = _TIMESTAMP_HEADER.search
        if self.unbounded:
            self.unbounded = []
        # Hot loop of the receive path of both ends: kept flat on purpose. decode_body inline (one
        # call less per frame); a frame it would refuse goes to decode_body for its very refusal.
        while end - pos >= HEADER_SIZE:
            (length,) = _unpack_header(buf, pos)
            if length > max_frame or length < MIN_FRAME:
                check_length(length, max_frame)
            if end - pos - HEADER_SIZE < length:
                break
            start = pos + HEADER_SIZE
            pos = start + length
            body = view[start:pos]
            # Container bytes, counted once for a frame whose size alone does not bound it.
            bytes_in = _containers(buf, start, pos) if length > min(MAX_CONTAINERS, shallow) else 0
            if bytes_in > MAX_CONTAINERS:
                msg = decode_body(body, counted=True)  # raises ProtocolViolation past MAX_CONTAINERS
            else:
                try:
                    raw = _unpackb(body, raw=False, strict_map_key=False, ext_hook=_refuse_ext)
                except Exception:
                    raw = None
                # (decode_body raises ProtocolViolation for what is not a message, as it would have)
                msg = raw if type(raw) is dict and type(raw.get("type")) is str else decode_body(
                    body, counted=False)
            out.append(msg)
            if watch and (bytes_in > _SHALLOW
                          or (buf.find(b"\xff", start, pos) >= 0  # (no 0xff: no header; the usual)
                              and _timestamp_header(buf, start, pos) is not None)):
                self.unbounded.append(msg)
        if pos == end:
            self._start = self._end = 0
            if len(buf) > self._size:  # a big frame is consumed: give its memory back
                self._buf = self._first
                self._view = memoryview(self._buf)
        else:
            self._start = pos
        return out

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return self._end - self._start


def _containers(buf: bytes | bytearray | mmap.mmap, start: int, end: int) -> int:
    """How many bytes of buf[start:end] could open a msgpack container (an upper bound of how
    many containers it holds, hence of how deep they nest)."""
    return len(buf[start:end].translate(None, _NOT_CONTAINER))


class BlockingChannel:
    """A frame channel over a blocking stream socket, for the plugin runtime (no asyncio needed).

    `send` is safe from several threads (plugin code may log from its own threads).
    """

    def __init__(self, sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.sock = sock
        self._rbuf = RecvBuffer(max_frame)
        self._send_lock = threading.Lock()
        # Bound once: a `with` block on a lock costs about twice as much as acquire + release.
        self._lock, self._unlock = self._send_lock.acquire, self._send_lock.release
        self._pack = msgpack.Packer(use_bin_type=True).pack  # used under the send lock only
        self._send_bytes = sock.send
        self.spin_s = 0.0  # the longest poll before a sleeping receive (see recv), set by the runtime
        self._poller = select.poll()
        self._poller.register(sock.fileno(), select.POLLIN)
        self._ready: deque[dict[str, Any]] = deque()  # decoded, not yet returned

    @property
    def max_frame(self) -> int:
        """The largest frame accepted; a longer length prefix is a ProtocolViolation."""
        return self._rbuf.max_frame

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        self._rbuf.max_frame = value

    def send(self, msg: dict[str, Any]) -> None:
        """Encode and send one message. Raises ProtocolViolation (unencodable, or larger than the
        peer accepts: see check_outgoing) or OSError."""
        self._lock()
        try:
            try:
                body = self._pack(msg)  # FrameEncoder.body, inline (one call less per frame)
            except (TypeError, ValueError, OverflowError) as exc:
                raise _unencodable(exc) from exc
            size = len(body)
            if size > self._rbuf.max_frame:
                check_outgoing(size, self._rbuf.max_frame)
            if size > MAX_CONTAINERS:
                check_containers(body)
            # One syscall: a small frame joined (cheaper than sendmsg's two buffers), a big one as
            # header and body (no copy). A signal or a socket timeout may cut it short, then the rest
            # goes out with sendall. The same bytes as FrameEncoder.frame_parts, without its tuple.
            if size <= SMALL_FRAME:
                frame = _pack_header(size) + body
                sent = self._send_bytes(frame)
                if sent < size + HEADER_SIZE:
                    self.sock.sendall(memoryview(frame)[sent:])
            else:
                parts = (_pack_header(size), body)
                sent = self.sock.sendmsg(parts)
                if sent < size + HEADER_SIZE:
                    self.sock.sendall(memoryview(b"".join(parts))[sent:])
        finally:
            self._unlock()

    def _wait_recv(self, view: memoryview, spin_s: float) -> int:
        """recv_into `view`; with `spin_s`, first poll for up to that long without sleeping, yielding
        the CPU between polls (a host sharing this CPU runs meanwhile).

        Sleeping in recv() and being woken costs an idle CPU an interrupt and a wake-up, about
        15-30 us on a VM; data that arrives while we poll costs none of that. A socket with a
        timeout does not poll.
        """
        if spin_s > 0 and self.sock.gettimeout() is None:  # a socket's timeout is never extended
            # poll(0), not a MSG_DONTWAIT receive: an empty poll costs a syscall, an empty receive
            # also builds a BlockingIOError with its localised message (several microseconds).
            ready, monotonic, sched_yield = self._poller.poll, time.monotonic, os.sched_yield
            end = monotonic() + spin_s
            while not ready(0) and monotonic() < end:
                sched_yield()
        return self.sock.recv_into(view)

    def recv(self, spin_s: float = 0.0) -> dict[str, Any] | None:
        """The next message, or None at a clean end of stream. Raises ProtocolViolation or OSError.

        Receives straight into a RecvBuffer (no copy from a chunk into a frame buffer), so the
        length prefix is checked as soon as its four bytes are in, before any of the body. The
        first wait polls for up to `spin_s` before sleeping; waits for the rest of a frame that has
        begun poll for up to the channel's `spin_s`, as its sender is writing it now.
        """
        ready, rbuf = self._ready, self._rbuf
        if ready:
            return ready.popleft()
        while True:
            n = self._wait_recv(rbuf.get_buffer(), spin_s)
            if not n:
                if rbuf.pending:
                    raise ProtocolViolation("connection closed in the middle of a frame", detail="eof")
                return None
            msgs = rbuf.buffer_updated(n)
            if msgs:
                if len(msgs) == 1:  # the usual receive: one whole frame
                    return msgs[0]
                ready.extend(msgs)
                return ready.popleft()
            spin_s = self.spin_s
