"""File locks through the master: a blocking request that does not hold a request open.

A blocking lock (F_SETLKW, flock without LOCK_NB) is a `SetLock` with a wait id. If the
lock is taken the master says "queued" at once and later sends `LockWake` naming the id
when a lock on the file goes; the client then asks again. The id is registered before the
request leaves, since the wake may overtake the answer. Every (re)connection wakes every
wait as well (`MasterLink.wake_lock_waits`): a new leader knows no waiter, and asking
again tells it. A wake lost anyway (a connection that broke after the master sent it)
costs at most `POLL_S`: the waiter asks again by itself that often.

A wait given up (the kernel interrupted the system call: a signal, the process killed)
must not leave a lock behind: if the request it gave up on was granted after all, the
range is unlocked again.
"""

from __future__ import annotations

import asyncio
import logging

from ..proto import messages as m
from .master_link import MasterLink

log = logging.getLogger("elkfs.client")

POLL_S = 5.0
F_UNLCK = 2


async def set_lock(link: MasterLink, op: m.SetLock, wait: bool) -> None:
    """Take (or give up) the lock `op` describes. Without `wait` a conflict raises
    FsError(EAGAIN); with it this returns once the lock is held."""
    if not wait or op.type == F_UNLCK:
        await link.request(op)
        return
    while True:
        wait_id, event = link.new_lock_wait()
        try:
            request = asyncio.ensure_future(
                link.request(m.SetLock(op.inode, op.owner, op.kind, op.type, op.start,
                                       op.end, op.pid, wait_id)))
            try:
                out = await asyncio.shield(request)
            except asyncio.CancelledError:
                request.add_done_callback(lambda r: _undo_if_granted(link, op, r))
                raise
            if not out.queued:
                return
            try:
                await asyncio.wait_for(event.wait(), POLL_S)
            except asyncio.TimeoutError:
                pass
        finally:
            link.lock_waits.pop(wait_id, None)


def _undo_if_granted(link: MasterLink, op: m.SetLock, request: asyncio.Future) -> None:
    if request.cancelled() or request.exception() is not None:
        return
    if not request.result().queued:
        log.info("lock on inode %d granted after its wait was given up: unlocking", op.inode)
        link.post(m.SetLock(op.inode, op.owner, op.kind, F_UNLCK, op.start, op.end))
