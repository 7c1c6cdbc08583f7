"""The wire protocol both sides speak: length-prefixed msgpack frames and the messages of api 1."""

from __future__ import annotations

from plugind.wire.frames import (
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    BlockingChannel,
    FrameBuffer,
    FrameEncoder,
    RecvBuffer,
    check_length,
    decode,
    decode_body,
    encode,
)
from plugind.wire.messages import API_VERSION, check_from_host, check_from_plugin

__all__ = [
    "API_VERSION",
    "DEFAULT_MAX_FRAME",
    "HEADER_SIZE",
    "BlockingChannel",
    "FrameBuffer",
    "FrameEncoder",
    "RecvBuffer",
    "check_from_host",
    "check_from_plugin",
    "check_length",
    "decode",
    "decode_body",
    "encode",
]
