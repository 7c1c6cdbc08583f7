"""asyncio stream helpers: read and write one frame on a StreamReader / StreamWriter."""

from __future__ import annotations

import asyncio
from typing import Any

from plugind.errors import ProtocolViolation
from plugind.wire.frames import DEFAULT_MAX_FRAME, HEADER, HEADER_SIZE, check_length, decode_body, encode


async def read_message(
    reader: asyncio.StreamReader, max_frame: int = DEFAULT_MAX_FRAME
) -> dict[str, Any] | None:
    """The next message, or None at a clean end of stream.

    The length prefix is checked before the body is read. Raises ProtocolViolation for an oversized,
    truncated or undecodable frame.
    """
    try:
        header = await reader.readexactly(HEADER_SIZE)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ProtocolViolation("connection closed inside a frame header", detail="eof") from exc
    (length,) = HEADER.unpack(header)
    check_length(length, max_frame)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolViolation(
            f"connection closed after {len(exc.partial)} of {length} body bytes", detail="eof"
        ) from exc
    return decode_body(body)


async def write_message(writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
    """Encode `msg`, write it and wait for the buffer to drain. Raises ProtocolViolation, OSError."""
    writer.write(encode(msg))
    await writer.drain()
