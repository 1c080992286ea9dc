"""Sizes every part of ElkFS agrees on: a file is a row of 64 MiB chunks, each chunk 1024
blocks of 64 KiB (the unit of a CRC).

A file has at most MAX_CHUNKS chunks (128 TiB): the master keeps a file's chunk table as a
dense array, 8 bytes a slot, so one write at a far offset of a sparse file costs a slot
for every chunk before it; the limit keeps that at 16 MiB."""

BLOCK_SIZE = 64 << 10
BLOCKS_PER_CHUNK = 1024
CHUNK_SIZE = BLOCK_SIZE * BLOCKS_PER_CHUNK
MAX_CHUNKS = 1 << 21
MAX_FILE_SIZE = CHUNK_SIZE * MAX_CHUNKS
