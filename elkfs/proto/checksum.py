"""Block checksums as the chunkservers store them: CRC32 (zlib's function) of each 64 KiB
block, 4 bytes big-endian each. ISA-L computes the same function about 3x faster, when
the `isal` package is installed (both release the GIL)."""

from __future__ import annotations

import struct

from .layout import BLOCK_SIZE

try:
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - optional dependency
    from zlib import crc32

_CRC = struct.Struct(">I")


def first_bad_block(data, crcs: bytes) -> int | None:
    """The index of the first whole block of `data` whose CRC32 is not the one in `crcs`
    (None: all match). A `crcs` of the wrong length counts as a mismatch at block 0."""
    view = memoryview(data)
    blocks = -(-len(view) // BLOCK_SIZE)
    if len(crcs) != 4 * blocks:
        return 0
    unpack = _CRC.unpack_from
    for b in range(blocks):
        if crc32(view[b * BLOCK_SIZE:(b + 1) * BLOCK_SIZE]) != unpack(crcs, 4 * b)[0]:
            return b
    return None
