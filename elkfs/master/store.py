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

With HA a `replicator` (the master's `HANode`) takes over what is durable: `change()`
hands each record to it instead of the journal batch (the consensus core journals and
replicates it), replies wait until the change is *committed* (`when_durable`), and the
journal on disk is written by the core's `JournalWrite`s (`journal_write`), which may
cut an uncommitted tail. At start `load_ha()` loads the newest checkpoint only: the
journal after it goes to the core, which applies each record once it is committed.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import time
from typing import Callable

from ..proto import messages as m
from ..proto.errors import NOT_LEADER, FsError
from . import checkpoint as ckpt
from .gcpolicy import loading as gc_loading
from .gcpolicy import settle_gc
from .journal import (JournalCorrupt, JournalWriter, fsync_dir, frame, list_segments,
                      read_records, remove_segments, truncate_after)
from .namespace import Namespace
from .records import (RECORD_DECODER, RECORD_ENCODER, CloseSession, KnowChunkserver,
                      OpenSession, Record, SessionGone, SetMaintenance)

log = logging.getLogger("elkfs.store")

# Changes no read shows (who has which file open, sessions): a read need not wait for them.
UNSEEN_BY_READS = frozenset((m.Acquire, m.Release, m.ReleaseMany, OpenSession, CloseSession,
                             SessionGone, KnowChunkserver, SetMaintenance))

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
        self.replicator = None  # the HANode with HA: commits, replicates, journals
        # The version of the last change a read can see (with HA a read is answered once
        # that is committed); changes to open-file counts and sessions are not seen.
        self.seen_version = 0

    # ------------------------------------------------------------ start-up

    def load(self) -> None:
        with gc_loading():
            self.ns = self._load_checkpoint()
            self._replay()
        self.journal = JournalWriter(self.data_dir, self.ns.version + 1)

    def _load_checkpoint(self, at_most: int | None = None) -> Namespace:
        """The newest readable checkpoint (not newer than `at_most`), or an empty one."""
        for version, path in reversed(ckpt.list_checkpoints(self.data_dir)):
            if at_most is not None and version > at_most:
                continue
            try:
                started = time.monotonic()
                ns = ckpt.read(path)
                log.info("loaded checkpoint %s (metadata version %d, %d inodes) in %.2fs",
                         os.path.basename(path), version, len(ns.nodes),
                         time.monotonic() - started)
                self.last_checkpoint_version = version
                return ns
            except (ckpt.CheckpointError, OSError, ValueError) as e:
                log.error("skipping damaged checkpoint: %s", e)
        if list_segments(self.data_dir) and ckpt.list_checkpoints(self.data_dir):
            log.error("no readable checkpoint: replaying the whole journal")
        return Namespace()

    def _replay(self, upto: int | None = None) -> None:
        """Apply the journal's records after the namespace's version (up to `upto`)."""
        ns = self.ns
        replayed = 0
        started = time.monotonic()
        for version, payload in read_records(self.data_dir, ns.version):
            if upto is not None and version > upto:
                break
            rec = RECORD_DECODER.decode(payload)
            if rec.version != version:
                raise JournalCorrupt(f"record header version {version} != payload {rec.version}")
            try:
                ns.apply(rec)
            except Exception as e:  # replay must never fail: the op succeeded live
                raise JournalCorrupt(f"replay of metadata version {version} failed: {e}") from e
            replayed += 1
        ns.effects.clear()  # their chunkserver side was done (or is redone by the registry)
        if replayed:
            log.info("replayed %d journal records in %.2fs; metadata version %d",
                     replayed, time.monotonic() - started, ns.version)

    # ------------------------------------------------------------ HA

    def load_ha(self) -> tuple[tuple[int, int], list[tuple[int, int, bytes]]]:
        """Load the newest checkpoint (committed state) and read the journal after it
        without applying it. Returns the checkpoint's (term, version) and the records
        after it as (term, version, payload)."""
        with gc_loading():
            self.ns = self._load_checkpoint()
        entries = []
        for version, payload in read_records(self.data_dir, self.ns.version):
            entries.append((RECORD_DECODER.decode(payload).term, version, bytes(payload)))
        last = entries[-1][1] if entries else self.ns.version
        self.journal = JournalWriter(self.data_dir, last + 1)
        return (self.ns.last_term, self.ns.version), entries

    def journal_write(self, truncate_after_version: int | None, entries) -> None:
        """The consensus core's journal write: cut the tail after a version (a conflict
        with the leader's log), then append `entries` ((term, version, payload) items)."""
        if truncate_after_version is not None and \
                truncate_after_version < self.journal.written_version:
            self.journal.close()
            truncate_after(self.data_dir, truncate_after_version)
            self.journal = JournalWriter(self.data_dir, truncate_after_version + 1)
        if entries:
            buf = bytearray()
            for e in entries:
                buf += frame(e.version, e.payload)
            self.journal.write(buf, entries[-1].version)

    def install_checkpoint(self, version: int) -> None:
        """Start over from the checkpoint `metadata.<version>.elk` (a follower catching up
        from the leader's): load it, drop the whole journal, journal from version+1."""
        path = os.path.join(self.data_dir, ckpt.checkpoint_name(version))
        with gc_loading():
            self.ns = ckpt.read(path)
        self.seen_version = version
        self.last_checkpoint_version = version
        self.journal.close()
        remove_segments(self.data_dir)
        self.journal = JournalWriter(self.data_dir, version + 1)

    def reload_to(self, version: int) -> None:
        """Rebuild the namespace at committed `version` from the checkpoint and journal on
        disk (a deposed leader drops what it applied beyond the commit point)."""
        started = time.monotonic()
        with gc_loading():
            self.ns = self._load_checkpoint(at_most=version)
            self._replay(upto=version)
        self.seen_version = version
        if self.ns.version != version:
            raise JournalCorrupt(f"reload reached metadata version {self.ns.version}, "
                                 f"not {version}")
        log.info("metadata rebuilt at committed version %d in %.2fs", version,
                 time.monotonic() - started)
    # ------------------------------------------------------------ changing

    def change(self, op, ts_ns: int, session: bytes = b"", seq: int = 0):
        """Apply `op` and queue its record. Returns (result, version). Raises FsError
        (nothing changed, nothing journaled) when the op fails."""
        replicator = self.replicator
        if replicator is not None:
            term = replicator.writable_term()  # FsError(NOT_LEADER) unless leading now
            rec = Record(self.ns.version + 1, ts_ns, session, seq, op, term)
            result = self.ns.apply(rec)
            replicator.propose(RECORD_ENCODER.encode(rec))
            if type(op) not in UNSEEN_BY_READS:
                self.seen_version = rec.version
            return result, rec.version
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

    def when_durable(self, version: int, callback: Callable[[], None],
                     failed: Callable[[], None] | None = None) -> None:
        """Call `callback` once the change of `version` is durable (with HA: committed,
        and only while this master leads; `failed` is called if it stops leading
        first)."""
        if self.replicator is not None:
            self.replicator.when_committed(version, callback, failed)
            return
        durable = (self.journal.written_version if self.save_mode == SAVE_MODE_BACKGROUND
                   else self.journal.synced_version)
        if version <= durable:
            callback()
            return
        self._waiter_seq += 1
        heapq.heappush(self._waiters, (version, self._waiter_seq, callback))

    async def wait_durable(self, version: int) -> None:
        """Wait until `version` is durable; with HA raises FsError(NOT_LEADER) if this
        master stops leading first."""
        fut = asyncio.get_running_loop().create_future()

        def lost() -> None:
            if not fut.done():
                fut.set_exception(FsError(NOT_LEADER, "leadership lost"))

        self.when_durable(version, lambda: fut.done() or fut.set_result(None), lost)
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
                journal = self.journal
                if journal is None or journal.synced_version >= journal.written_version:
                    continue
                try:
                    synced = await loop.run_in_executor(None, journal.sync)
                except OSError as e:  # replaced meanwhile (HA cut or reset the journal)
                    if journal is self.journal:
                        log.error("journal fsync failed: %s", e)
                    continue
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
            version, term = self.ns.version, self.ns.last_term
            path = os.path.join(self.data_dir, ckpt.checkpoint_name(version))
            replicator = self.replicator
            started = time.monotonic()
            # The child's garbage collector would visit (and so write to, copying their
            # pages) every object: frozen objects are left out of its collections. They
            # stay frozen here too (`settle_gc`): unfrozen, the parent's next full
            # collections would walk the whole namespace again.
            settle_gc()
            pid = os.fork()
            if pid == 0:  # child: a frozen copy-on-write view of the namespace
                code = 1
                try:
                    ckpt.write(self.ns, path, final=replicator is None)
                    code = 0
                finally:
                    os._exit(code)
            loop = asyncio.get_running_loop()
            _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
            if status != 0:
                log.error("checkpoint of metadata version %d failed (status %d)", version, status)
                return False
            if replicator is not None:
                # A leader's namespace runs ahead of the commit point: the checkpoint may
                # be loaded at start only once everything in it is committed.
                if not await replicator.wait_committed(version):
                    os.unlink(path + ".tmp")
                    log.info("checkpoint of metadata version %d dropped: not committed",
                             version)
                    return False
                ckpt.publish(path)
                replicator.snapshot_taken(term, version)
            log.info("checkpoint of metadata version %d written in %.2fs", version,
                     time.monotonic() - started)
            self.last_checkpoint_version = version
            self.last_checkpoint_time = time.time()
            self.prune()
            return True
        finally:
            self._checkpointing = False

    def checkpoint_now(self) -> None:
        """Synchronous checkpoint for a clean stop (with HA, of committed state only)."""
        if self.replicator is not None and not self.replicator.is_committed(self.ns.version):
            return
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
