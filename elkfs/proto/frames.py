"""Length-prefixed frames: the one wire format of every ElkFS port.

A frame is a 12-byte header followed by two parts:

    type:u16  flags:u16  meta_len:u32  data_len:u32  | meta (msgpack) | data (raw bytes)

`meta` is a msgspec-encoded message (its schema chosen by `type`); `data` is bulk chunk
data that travels as raw bytes, never re-encoded. Both lengths are checked against fixed
limits before anything is allocated, so a peer sending garbage costs us at most one small
header read before the connection is closed.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct(">HHII")
HEADER_SIZE = HEADER.size

# Limits. Metadata replies (a directory page, a file's chunk list) stay well under 4 MiB;
# bulk data moves in pieces of at most 8 MiB (the client writes in 1-4 MiB pieces).
MAX_META = 4 << 20
MAX_DATA = 8 << 20


class FrameError(Exception):
    """The peer sent something that is not a valid frame: close the connection."""


def parse_header(header: bytes | memoryview) -> tuple[int, int, int, int]:
    msg_type, flags, meta_len, data_len = HEADER.unpack(header)
    if meta_len > MAX_META:
        raise FrameError(f"meta length {meta_len} over limit {MAX_META}")
    if data_len > MAX_DATA:
        raise FrameError(f"data length {data_len} over limit {MAX_DATA}")
    return msg_type, flags, meta_len, data_len


def pack_header(msg_type: int, meta_len: int, data_len: int = 0, flags: int = 0) -> bytes:
    return HEADER.pack(msg_type, flags, meta_len, data_len)
