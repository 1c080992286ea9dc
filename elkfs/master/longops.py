"""Long operations in bounded steps: no single request holds the master for long.

The master serves everyone from one event loop, so a request that touches a million
entries in one go (a snapshot of a huge directory, a recursive setgoal, mfsdirinfo of a
big tree) stalls every other client for seconds. Requests over a budget are done here in
steps of at most `STEP_ENTRIES` entries, with the event loop free between steps; small
ones (up to `ONE_STEP_MAX` entries) keep their one-record path.

Theory of operation
-------------------
*Journal.* Every step is one journal record whose apply is bounded and leaves a
consistent state (records in elkfs/master/records.py); the records carry everything they
need (which inodes, which names), so every replica and every replay applies exactly what
the leader applied, in the same order relative to other clients' changes. The
alternative, one record whose apply is itself incremental on every replica, would have
followers interleave its steps with later records differently from the leader; per-step
records keep replicas identical by construction.

*Snapshot.* `SnapshotBegin` validates and makes the copy of the top directory
*detached* (in `Namespace.building`, not in its destination); `SnapshotCopy` steps copy
one level of up to STEP_ENTRIES entries each (a directory's copy starts empty; its
entries come in later steps); `SnapshotEnd` gives the copy its name, carrying the
client's session and sequence number so a retry gets the stored result. Nobody sees a
partial copy. The copy is of each entry as it is when its step runs (like `cp -a` of a
live tree): an entry created in the source after the walk passed its directory is not
copied, one removed before its step is skipped. A failed end (the name was taken
meanwhile, the destination removed) frees the detached copy in steps (`DropDetached`) and
answers the error.

*Crash and failover.* The steps done so far are journaled (and, with HA, committed): a
restart or a new leader finds the detached copy in `building` and frees it in steps
(`resume`); the client, whose request was never answered, resends it and the snapshot
is made again from the start.

*Recursive setgoal / settrashtime*: `SetGoalMany` / `SetTrashTimeMany` steps over a
`TreeWalk`, then the top's own non-recursive change carries the session and sequence
number. Entries made meanwhile inherit from their directory as always.

*mfsdirinfo* reads only: a `TreeWalk` adds up a batch per step, nothing is journaled.

*Permissions.* Root's ops are checked at their top only (root may). For anyone else a
recursive setgoal/settrashtime or a snapshot of a directory needs every entry of the
tree to pass `authority.tree_entry_refusal`; `authority.check` does that in one go for
small trees, so here, for big ones, the client port checks only the top and `_check_tree`
walks the tree first, CHECK_STEP_ENTRIES entries a step (reading only, nothing
journaled; a refusal answers with nothing changed), then checks the top again. The change
steps then re-check each entry in the step that changes it (the tree may have changed
meanwhile): setgoal/settrashtime leave alone an entry that fails (as if it had changed
after the op), a snapshot stops with the refusal and frees its detached copy.

Progress: every PROGRESS_PERIOD_S the client is sent `Progress` (entries done); the
tools print it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections import deque
from itertools import islice

from ..access import Who
from ..proto import messages as m
from ..proto import rpc
from ..proto.errors import FsError
from . import authority
from .listings import touched_dirs
from .nodes import DirNode
from .gcpolicy import settle_gc
from .part import MasterPart
from .records import (DropDetached, SetGoalMany, SetTrashTimeMany, SnapshotBegin,
                      SnapshotCopy, SnapshotEnd)
from .treewalk import DirTotals, TreeWalk, bigger_than

log = logging.getLogger("mfsmaster")

STEP_ENTRIES = 1000  # entries per step: well within the ~50 ms budget to apply
ONE_STEP_MAX = 2000  # trees up to this many entries are done in one record, as before
CHECK_STEP_ENTRIES = STEP_ENTRIES * 5  # a permission check step reads only: cheaper
PROGRESS_PERIOD_S = 1.0


class LongOps(MasterPart):
    def __init__(self, master):
        super().__init__(master)
        # (session, seq) -> [the connection to answer on, the request id there]: a client
        # that resends a request still running is answered once, to its newest request
        self.running: dict[tuple[bytes, int], list] = {}
        self.steps_done = 0  # step records journaled (the web page, tests)
        self.longest_step_s = 0.0  # the longest one to apply and journal (wall clock)
        self.longest_step_cpu_s = 0.0  # and in CPU time (what a loaded machine hides)
        self.longest_check_cpu_s = 0.0  # the longest step of a permission check walk

    # ------------------------------------------------------------ entry

    def take(self, conn: rpc.Connection, msg: m.MetaRequest, who: Who) -> bool:
        """Whether `msg` is a long operation, now running in steps (answered when done);
        False: the caller serves it as usual (and checks all of it). `who`: the identity
        it is done for, whose right to the top was checked; its right to the tree below
        is checked here."""
        op = msg.op
        kind = type(op)
        if kind is m.DirStats:
            if not self._big(op.inode):
                return False
            self.spawn(self._dirstats(conn, msg))
            return True
        if kind is m.Snapshot:
            src = self.ns.nodes.get(op.inode)
            if not isinstance(src, DirNode) or not self._big(op.inode):
                return False
            run = self._snapshot
        elif kind in (m.SetGoal, m.SetTrashTime) and op.recursive:
            if not self._big(op.inode):
                return False
            run = self._set_recursive
        else:
            return False
        key = (msg.session, msg.seq)
        if key in self.running:  # resent while it runs
            self.running[key][:] = [conn, msg.req]
            return True
        if self.ns.duplicate_result(msg.session, msg.seq)[0]:
            return False  # done already: the stored result answers
        self.running[key] = [conn, msg.req]
        if who is not None and not authority.needs_tree_check(self.ns, who, op):
            who = None
        self.spawn(self._answer(key, msg, run, who))
        return True

    def _big(self, inode: int) -> bool:
        return inode in self.ns.nodes and bigger_than(self.ns.nodes, inode, ONE_STEP_MAX)

    async def _answer(self, key, msg: m.MetaRequest, run, who: Who | None) -> None:
        """Run the steps, then answer as the client port answers any change: once it is
        durable, and after other sessions dropped the listings it changed."""
        try:
            try:
                result, version = await run(msg, who)
            except FsError as e:
                conn, req = self.running[key]
                conn.send_if_open(m.Error(req, e.status, e.detail))
                return
            clients = self.master.clients
            holders = None
            if clients.leases.by_dir:
                holders = clients.leases.recall(touched_dirs(msg.op), msg.session,
                                                time.monotonic())
            try:
                await self.store.wait_durable(version)
            except FsError:
                return  # no longer leading: the client resends to the new leader
            conn, req = self.running[key]  # the newest request, if it was resent
            await clients._recall_then_reply(conn, m.MetaReply(req, 0, result), version,
                                             holders or {})
        finally:
            self.running.pop(key, None)

    def _progress(self, key, msg: m.MetaRequest, done: int, last: list[float]) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_PERIOD_S:
            last[0] = now
            conn = self.running.get(key, [None])[0]
            if conn is not None:
                conn.send_if_open(m.Progress(msg.seq, done))

    async def _check_tree(self, key, msg: m.MetaRequest, who: Who) -> int:
        """The tree `msg` covers, checked entry by entry for `who` in steps (reading
        only), then its top again (it may have changed meanwhile): FsError when refused,
        nothing changed. Returns the entries checked."""
        check = authority.TreeCheck(self.ns, who, msg.op)
        last = [time.monotonic()]
        started, cpu_started = time.perf_counter(), time.process_time()
        while True:
            step_started = time.process_time()
            done = check.step(CHECK_STEP_ENTRIES)
            self.longest_check_cpu_s = max(self.longest_check_cpu_s,
                                           time.process_time() - step_started)
            if done:
                break
            settle_gc()
            self._progress(key, msg, check.visited, last)
            await asyncio.sleep(0)  # everyone else's requests between two steps
        authority.check(self.ns, who, msg.op, msg.session, time.time_ns(), tree=False)
        log.info("%s of inode %d for uid %d: %d entries checked in %d steps, %.0f ms "
                 "(%.0f ms of CPU; the longest check step so far %.1f ms of CPU)",
                 type(msg.op).__name__, msg.op.inode, who.uid, check.visited,
                 -(-check.visited // CHECK_STEP_ENTRIES),
                 (time.perf_counter() - started) * 1000,
                 (time.process_time() - cpu_started) * 1000,
                 self.longest_check_cpu_s * 1000)
        return check.visited

    def _step(self, op) -> object:
        """Journal one step (FsError NOT_LEADER once this master stopped leading)."""
        self.steps_done += 1
        started, cpu_started = time.perf_counter(), time.process_time()
        result = self.store.change(op, time.time_ns())[0]
        self.longest_step_s = max(self.longest_step_s, time.perf_counter() - started)
        self.longest_step_cpu_s = max(self.longest_step_cpu_s,
                                      time.process_time() - cpu_started)
        return result

    # ------------------------------------------------------------ snapshot

    async def _snapshot(self, msg: m.MetaRequest, who: Who | None):
        op: m.Snapshot = msg.op
        key = (msg.session, msg.seq)
        started = time.monotonic()
        checked = 0 if who is None else await self._check_tree(key, msg, who)
        top = self._step(SnapshotBegin(op.inode, op.dst_parent, op.dst_name))
        nodes = self.ns.nodes
        pending: deque[tuple[int, int]] = deque([(op.inode, top)])  # (source, copy) dirs
        cursor = None  # [copy dir, the last name taken, its source]
        done, last = 0, [started]
        refusal = None
        while refusal is None:
            await asyncio.sleep(0)  # everyone else's requests between two steps
            batch: list[tuple[int, int, bytes]] = []
            while len(batch) < STEP_ENTRIES:
                if cursor is None:
                    if not pending:
                        break
                    src_inode, copy_inode = pending.popleft()
                    src = nodes.get(src_inode)
                    if not isinstance(src, DirNode) or not src.children:
                        continue
                    cursor = [copy_inode, b"", src]
                copy_inode, after, src = cursor
                if who is not None:  # the tree may have changed since it was checked
                    refusal = authority.tree_entry_refusal(op, src, who)
                    if refusal is not None:
                        break
                entries = src.children
                # by name, a step's worth at a time (no list of a huge directory at once)
                want = STEP_ENTRIES - len(batch)
                take = list(islice(entries.names_after(after), want))
                if len(take) < want:
                    cursor = None
                else:
                    cursor[1] = take[-1]
                for name in take:
                    child = entries.get(name)
                    if child is None:
                        continue
                    if who is not None and child in nodes:  # (gone: the step skips it)
                        refusal = authority.tree_entry_refusal(op, nodes[child], who)
                        if refusal is not None:
                            break
                    batch.append((child, copy_inode, name))
                if refusal is not None:
                    break
            if refusal is not None or not batch:
                break
            try:
                made = self._step(SnapshotCopy(top, batch))
            except FsError as e:
                if e.status == errno.EINVAL:  # our copy is gone (cannot happen): say so
                    log.error("snapshot in steps lost its copy: %s", e)
                raise
            for (src_inode, _, _), copy_inode in zip(batch, made):
                if copy_inode and isinstance(nodes.get(copy_inode), DirNode):
                    pending.append((src_inode, copy_inode))
            done += len(batch)
            settle_gc()  # the copies and the lists of names: no collection walks them
            self._progress(key, msg, checked + done, last)
        if refusal is not None:  # an entry made or changed after the check: no copy
            log.info("snapshot of inode %d for uid %d refused after %d entries copied: %s",
                     op.inode, who.uid, done, refusal.detail)
            await self.drop_detached(top)
            raise refusal
        try:
            result, version = self.store.change(SnapshotEnd(top), time.time_ns(),
                                                msg.session, msg.seq)
        except FsError as e:
            if self.master.leading:
                await self.drop_detached(top)
            raise e
        log.info("snapshot of inode %d: %d entries in %d steps, %.1fs (longest step so "
                 "far %.0f ms, %.0f ms of CPU)", op.inode, done + 1,
                 -(-done // STEP_ENTRIES) + 2, time.monotonic() - started,
                 self.longest_step_s * 1000, self.longest_step_cpu_s * 1000)
        settle_gc()
        self._after_change(msg, result, version)
        return result, version

    async def drop_detached(self, top: int) -> None:
        """Free a detached copy in steps (a failed snapshot, or one a restart or a
        failover cut short)."""
        freed = 0
        while top in self.ns.building:
            freed += self._step(DropDetached(top, STEP_ENTRIES))
            self.master.chunks.run_effects()
            await asyncio.sleep(0)
        log.info("freed the unfinished snapshot copy %d (%d entries)", top, freed)

    async def resume(self) -> None:
        """This master leads now: free the copies of snapshots nobody finishes."""
        for top in list(self.ns.building):
            try:
                await self.drop_detached(top)
            except FsError:
                return  # no longer leading: the next leader does it

    # ------------------------------------------------------------ setgoal, settrashtime

    async def _set_recursive(self, msg: m.MetaRequest, who: Who | None):
        op = msg.op
        key = (msg.session, msg.seq)
        if isinstance(op, m.SetGoal):
            if not 1 <= op.goal <= 9:
                raise FsError(errno.EINVAL, "goal must be 1-9")
            make = lambda inodes: SetGoalMany(inodes, op.goal)  # noqa: E731
            last_op = m.SetGoal(op.inode, op.goal, False)
        else:
            make = lambda inodes: SetTrashTimeMany(inodes, op.trashtime)  # noqa: E731
            last_op = m.SetTrashTime(op.inode, op.trashtime, False)
        checked = 0 if who is None else await self._check_tree(key, msg, who)
        walk = TreeWalk(self.ns.nodes, op.inode)
        walk.next_batch(1)  # the top goes last, with the session's sequence number
        last = [time.monotonic()]
        skipped = 0
        while True:
            await asyncio.sleep(0)  # everyone else's requests between two steps
            batch = walk.next_batch(STEP_ENTRIES)
            if not batch:
                break
            if who is None:
                inodes = [node.inode for node in batch]
            else:  # an entry made or given away after the check is left alone
                inodes = [node.inode for node in batch
                          if authority.tree_entry_refusal(op, node, who) is None]
                skipped += len(batch) - len(inodes)
            if inodes:
                self._step(make(inodes))
            settle_gc()  # the nodes changed: no collection walks them again
            self._progress(key, msg, checked + walk.visited, last)
        if skipped:
            log.info("%s of inode %d for uid %d: %d entries not %s's (made or changed "
                     "after the check) left alone", type(op).__name__, op.inode, who.uid,
                     skipped, who.uid)
        if who is not None:  # the top itself, as it is now
            authority.check(self.ns, who, last_op, msg.session, time.time_ns())
        result, version = self.store.change(last_op, time.time_ns(), msg.session, msg.seq)
        self._after_change(msg, result, version)
        return result, version

    def _after_change(self, msg: m.MetaRequest, result, version) -> None:
        """What the client port does after any change: carry out chunk effects."""
        if self.ns.effects:
            self.master.chunks.run_effects()

    # ------------------------------------------------------------ mfsdirinfo

    async def _dirstats(self, conn: rpc.Connection, msg: m.MetaRequest) -> None:
        walk = TreeWalk(self.ns.nodes, msg.op.inode)
        totals = DirTotals()
        last = [time.monotonic()]
        while True:
            batch = walk.next_batch(STEP_ENTRIES * 5)  # reading only: cheaper per entry
            if not batch:
                break
            totals.add(batch)
            settle_gc()
            if time.monotonic() - last[0] >= PROGRESS_PERIOD_S:
                last[0] = time.monotonic()
                conn.send_if_open(m.Progress(msg.seq, walk.visited))
            await asyncio.sleep(0)
        self.master.clients.reply_read(conn, m.MetaReply(msg.req, 0, totals.result()))
