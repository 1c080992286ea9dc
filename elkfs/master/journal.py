"""The metadata journal (changelog): numbered, checksummed records in segment files.

Layout: `journal.<first version, 16 hex digits>.elk` files in the data directory. Each
record is framed as

    length:u32  crc32:u32  version:u64  | payload (msgpack Record)

with the CRC over version and payload. A new segment starts at every checkpoint and at
every start-up, so a file is only ever appended to by one process run.

Reading (`read_records`) tells a torn tail from corruption:
- the last record of the newest segment cut short, or failing its CRC while it is the
  last thing in the file, is a torn write from a crash: it is dropped with a log line
  (it was never acknowledged: acknowledgement waits for the write);
- anything else that fails (a bad record followed by more data, a gap in versions, a bad
  record in an older segment) is corruption: `JournalCorrupt` names the file and version
  and start-up stops, because silently skipping it would lose acknowledged changes.

Durability follows MooseFS's CHANGELOG_SAVE_MODE: mode 0 hands each batch to the OS
before the reply and fsyncs in the background at least once a second; mode 1 fsyncs
before the reply (group commit: one fsync covers every record written before it).
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Iterator

log = logging.getLogger("elkfs.journal")

REC_HEADER = struct.Struct(">IIQ")
MAX_RECORD = 16 << 20
SEGMENT_RE = re.compile(r"^journal\.([0-9a-f]{16})\.elk$")


class JournalCorrupt(Exception):
    pass


def segment_name(first_version: int) -> str:
    return f"journal.{first_version:016x}.elk"


def list_segments(data_dir: str) -> list[tuple[int, str]]:
    """(first version, path) of every segment, oldest first."""
    found = []
    for name in os.listdir(data_dir):
        match = SEGMENT_RE.match(name)
        if match:
            found.append((int(match.group(1), 16), os.path.join(data_dir, name)))
    return sorted(found)


def frame(version: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(struct.pack(">Q", version)))
    return REC_HEADER.pack(len(payload), crc, version) + payload


@dataclass
class TornTail:
    path: str
    offset: int  # first byte of the torn record
    version: int


def _scan(path: str, data: bytes, is_last: bool) -> tuple[list[tuple[int, memoryview]], TornTail | None]:
    records = []
    view = memoryview(data)
    pos = 0
    end = len(data)
    while pos < end:
        bad = None
        if end - pos < REC_HEADER.size:
            bad = "short header"
            length = version = 0
        else:
            length, crc, version = REC_HEADER.unpack_from(data, pos)
            if length > MAX_RECORD:
                bad = f"length {length} over limit"
            elif pos + REC_HEADER.size + length > end:
                bad = "record cut short"
            else:
                end_of_record = pos + REC_HEADER.size + length
                # The CRC covers version and payload, which lie next to each other.
                if zlib.crc32(view[pos + 8:end_of_record]) != crc:
                    bad = "CRC mismatch"
                payload = view[pos + REC_HEADER.size:end_of_record]
        if bad is None:
            records.append((version, payload))
            pos += REC_HEADER.size + length
            continue
        after = pos + REC_HEADER.size + (length if length <= MAX_RECORD else 0)
        tail_is_last = after >= end or not any(data[after:])
        expected = records[-1][0] + 1 if records else version
        if is_last and tail_is_last:
            return records, TornTail(path, pos, expected)
        raise JournalCorrupt(f"{path}: corrupt record ({bad}) at offset {pos}, "
                             f"metadata version {expected}")
    return records, None


def read_records(data_dir: str, after_version: int) -> Iterator[tuple[int, memoryview]]:
    """Yield (version, payload) of every record newer than `after_version`, in order.
    Raises JournalCorrupt on corruption or a gap; drops (and truncates) a torn tail."""
    segments = list_segments(data_dir)
    expected = after_version + 1
    for i, (first, path) in enumerate(segments):
        is_last = i == len(segments) - 1
        next_first = segments[i + 1][0] if not is_last else None
        if next_first is not None and next_first <= after_version + 1:
            continue  # wholly covered by the checkpoint
        with open(path, "rb") as f:
            data = f.read()
        records, torn = _scan(path, data, is_last)
        for version, payload in records:
            if version < expected:
                continue
            if version != expected:
                raise JournalCorrupt(f"{path}: gap in journal: expected metadata version "
                                     f"{expected}, found {version}")
            yield version, payload
            expected += 1
        if torn is not None:
            log.warning("%s: dropping torn record at offset %d (metadata version %d): "
                        "it was never acknowledged", path, torn.offset, torn.version)
            with open(path, "r+b") as f:
                f.truncate(torn.offset)
                os.fsync(f.fileno())


def truncate_after(data_dir: str, version: int) -> None:
    """Drop every record after `version` from the segments on disk (with HA: an
    uncommitted tail that the new leader's log does not have)."""
    for first, path in reversed(list_segments(data_dir)):
        if first > version:
            os.unlink(path)
            continue
        with open(path, "rb") as f:
            data = f.read()
        records, _ = _scan(path, data, True)
        end = 0
        for v, payload in records:
            if v > version:
                break
            end += REC_HEADER.size + len(payload)
        with open(path, "r+b") as f:
            f.truncate(end)
            os.fsync(f.fileno())
        break
    fsync_dir(data_dir)


def remove_segments(data_dir: str) -> None:
    """Drop the whole journal (a follower installing the leader's checkpoint)."""
    for _, path in list_segments(data_dir):
        os.unlink(path)
    fsync_dir(data_dir)


class JournalWriter:
    """Appends framed records to the current segment. Not thread-safe: the event loop
    writes; `sync()` may run in a worker thread (fsync of a file opened O_APPEND)."""

    def __init__(self, data_dir: str, first_version: int):
        self.data_dir = data_dir
        self.fd = -1
        self.path = ""
        self.written_version = first_version - 1
        self.synced_version = first_version - 1
        self._open(first_version)

    def _open(self, first_version: int) -> None:
        self.path = os.path.join(self.data_dir, segment_name(first_version))
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fsync_dir(self.data_dir)

    def write(self, buf: bytes | bytearray, last_version: int) -> None:
        """Hand a batch of framed records to the OS (one write call)."""
        view = memoryview(buf)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self.written_version = last_version

    def sync(self) -> int:
        """fsync; returns the version now durable. Safe to call from a worker thread."""
        target = self.written_version
        os.fdatasync(self.fd)
        if target > self.synced_version:
            self.synced_version = target
        return target

    def rotate(self) -> None:
        """Start a new segment at the next version (after a checkpoint)."""
        os.fsync(self.fd)
        self.synced_version = self.written_version
        os.close(self.fd)
        self._open(self.written_version + 1)

    def close(self) -> None:
        if self.fd >= 0:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
