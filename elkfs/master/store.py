"""Durable metadata: the namespace, its journal and its checkpoints, behind one object.

`MetadataStore.change()` applies an op to the namespace, frames the record into the
current journal batch and returns the result with its version. All records produced in one
event-loop iteration are written with a single `write()` at the end of the iteration
(`loop.call_soon`), and one fsync covers all records written before it (group commit).
Replies wait for durability through `when_durable(version, callback)`: in save mode 0 a
record is durable once handed to the OS (an fsync follows within a second), in mode 1
once fsynced.

On start `load()` reads the newest valid checkpoint (an older one if the newest is
damaged), replays the journal after it and opens a fresh segment.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import time
from typing import Callable

from . import checkpoint as ckpt
from .journal import JournalWriter, fsync_dir, frame, list_segments, read_records
from .namespace import Namespace
from .records import RECORD_DECODER, RECORD_ENCODER, Record

log = logging.getLogger("elkfs.store")

SAVE_MODE_BACKGROUND = 0  # handed to the OS before the reply, fsync within a second
SAVE_MODE_FSYNC = 1  # fsynced before the reply
CHECKPOINTS_KEPT = 2


class MetadataStore:
    def __init__(self, data_dir: str, save_mode: int = SAVE_MODE_BACKGROUND,
                 back_logs: int = 50):
        self.data_dir = data_dir
        self.save_mode = save_mode
        self.back_logs = back_logs
        self.ns = Namespace()
        self.journal: JournalWriter | None = None
        self._batch = bytearray()
        self._batch_last = 0
        self._flush_scheduled = False
        self._waiters: list[tuple[int, int, Callable[[], None]]] = []  # heap (version, n, cb)
        self._waiter_seq = 0
        self._sync_lock = asyncio.Lock()
        self._sync_wanted = asyncio.Event()
        self._checkpointing = False
        self.last_checkpoint_version = 0
        self.last_checkpoint_time = 0.0

    # ------------------------------------------------------------ start-up

    def load(self) -> None:
        ns = None
        for version, path in reversed(ckpt.list_checkpoints(self.data_dir)):
            try:
                ns = ckpt.read(path)
                log.info("loaded checkpoint %s (metadata version %d, %d inodes)",
                         os.path.basename(path), version, len(ns.nodes))
                self.last_checkpoint_version = version
                break
            except (ckpt.CheckpointError, OSError, ValueError) as e:
                log.error("skipping damaged checkpoint: %s", e)
        if ns is None:
            ns = Namespace()
            if list_segments(self.data_dir) and ckpt.list_checkpoints(self.data_dir):
                log.error("no readable checkpoint: replaying the whole journal")
        self.ns = ns
        replayed = 0
        started = time.monotonic()
        for version, payload in read_records(self.data_dir, ns.version):
            rec = RECORD_DECODER.decode(payload)
            if rec.version != version:
                from .journal import JournalCorrupt

                raise JournalCorrupt(f"record header version {version} != payload {rec.version}")
            try:
                ns.apply(rec)
            except Exception as e:  # replay must never fail: the op succeeded live
                from .journal import JournalCorrupt

                raise JournalCorrupt(f"replay of metadata version {version} failed: {e}") from e
            replayed += 1
        ns.effects.clear()  # their chunkserver side was done (or is redone by the registry)
        if replayed:
            log.info("replayed %d journal records in %.2fs; metadata version %d",
                     replayed, time.monotonic() - started, ns.version)
        self.journal = JournalWriter(self.data_dir, ns.version + 1)

    # ------------------------------------------------------------ changing

    def change(self, op, ts_ns: int, session: bytes = b"", seq: int = 0):
        """Apply `op` and queue its record. Returns (result, version). Raises FsError
        (nothing changed, nothing journaled) when the op fails."""
        rec = Record(self.ns.version + 1, ts_ns, session, seq, op)
        result = self.ns.apply(rec)
        self._batch += frame(rec.version, RECORD_ENCODER.encode(rec))
        self._batch_last = rec.version
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)
        return result, rec.version

    def flush(self) -> None:
        """Write the current batch to the journal (one write call)."""
        self._flush_scheduled = False
        if self._batch:
            batch, self._batch = self._batch, bytearray()
            self.journal.write(batch, self._batch_last)
        if self.save_mode == SAVE_MODE_BACKGROUND:
            self._wake(self.journal.written_version)
        elif self._waiters:
            self._sync_wanted.set()

    def when_durable(self, version: int, callback: Callable[[], None]) -> None:
        durable = (self.journal.written_version if self.save_mode == SAVE_MODE_BACKGROUND
                   else self.journal.synced_version)
        if version <= durable:
            callback()
            return
        self._waiter_seq += 1
        heapq.heappush(self._waiters, (version, self._waiter_seq, callback))

    async def wait_durable(self, version: int) -> None:
        fut = asyncio.get_running_loop().create_future()
        self.when_durable(version, lambda: fut.done() or fut.set_result(None))
        await fut

    def _wake(self, durable: int) -> None:
        waiters = self._waiters
        while waiters and waiters[0][0] <= durable:
            _, _, callback = heapq.heappop(waiters)
            try:
                callback()
            except Exception:
                log.exception("reply callback failed")

    async def sync_loop(self) -> None:
        """fsync the journal: at once when a mode-1 reply waits, else once a second."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await asyncio.wait_for(self._sync_wanted.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            self._sync_wanted.clear()
            async with self._sync_lock:
                if self.journal.synced_version >= self.journal.written_version:
                    continue
                synced = await loop.run_in_executor(None, self.journal.sync)
            if self.save_mode == SAVE_MODE_FSYNC:
                self._wake(synced)

    # ------------------------------------------------------------ checkpoints

    async def checkpoint(self) -> bool:
        """Write a checkpoint of the current state from a forked child; rotate the journal.
        Returns False if one is already running or it failed."""
        if self._checkpointing:
            return False
        self._checkpointing = True
        try:
            self.flush()
            async with self._sync_lock:
                self.journal.rotate()
            version = self.ns.version
            path = os.path.join(self.data_dir, ckpt.checkpoint_name(version))
            started = time.monotonic()
            pid = os.fork()
            if pid == 0:  # child: a frozen copy-on-write view of the namespace
                code = 1
                try:
                    ckpt.write(self.ns, path)
                    code = 0
                finally:
                    os._exit(code)
            loop = asyncio.get_running_loop()
            _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
            if status != 0:
                log.error("checkpoint of metadata version %d failed (status %d)", version, status)
                return False
            log.info("checkpoint of metadata version %d written in %.2fs", version,
                     time.monotonic() - started)
            self.last_checkpoint_version = version
            self.last_checkpoint_time = time.time()
            self.prune()
            return True
        finally:
            self._checkpointing = False

    def checkpoint_now(self) -> None:
        """Synchronous checkpoint for a clean stop."""
        self.flush()
        self.journal.rotate()
        path = os.path.join(self.data_dir, ckpt.checkpoint_name(self.ns.version))
        ckpt.write(self.ns, path)
        self.last_checkpoint_version = self.ns.version
        self.prune()

    def prune(self) -> None:
        """Keep the newest checkpoints, the journal needed to replay from the oldest kept
        one, and BACK_LOGS older segments besides."""
        checkpoints = ckpt.list_checkpoints(self.data_dir)
        for _, path in checkpoints[:-CHECKPOINTS_KEPT]:
            os.unlink(path)
        kept = checkpoints[-CHECKPOINTS_KEPT:]
        if not kept:
            return
        oldest_needed = kept[0][0]
        segments = list_segments(self.data_dir)
        removable = []
        for (first, path), nxt in zip(segments, segments[1:]):
            if nxt[0] <= oldest_needed + 1:  # wholly covered by a kept checkpoint
                removable.append(path)
        for path in removable[:max(0, len(removable) - self.back_logs)]:
            os.unlink(path)
        fsync_dir(self.data_dir)

    def close(self, checkpoint: bool = True) -> None:
        if self.journal is None:
            return
        if checkpoint:
            self.checkpoint_now()
        self.flush()
        self.journal.close()
        self.journal = None
