"""File locks are metadata: a lock held when the leader dies is still held under the next
leader, and a client that was waiting for it waits on and is woken there.

The cluster has three masters (HA) and two mounts that find the leader by name. A process
on mount A holds an flock, a process on mount B waits for it; the leader is killed. Under
the new leader a non-blocking attempt from B still fails (the lock survived), the waiter
is still waiting, and it gets the lock once the holder lets go (the new leader knows the
waiter only because B's mount asked again after reconnecting).
"""

from __future__ import annotations

import fcntl
import os

from tests.fuse.lockers import Locker, start_mount, stop_mount, wait_until

NET = "127.0.61"
STILL_WAITING_S = 1.0


def test_a_lock_survives_a_failover_and_its_waiter_is_woken_by_the_new_leader(ha_cluster):
    mc = ha_cluster
    c = mc.cluster
    path_a = os.path.join(mc.mnt, "locked")
    with open(path_a, "wb") as f:
        f.write(b"x")
    mnt_b, proc_b = start_mount(mc, "mnt_b")
    holder = waiter = None
    try:
        path_b = os.path.join(mnt_b, "locked")
        holder = Locker(path_a, "flock")
        assert holder.wait_locked()
        waiter = Locker(path_b, "flock")
        assert not waiter.wait_locked(STILL_WAITING_S)

        old = c.wait_leader(30)
        c.kill(old)
        c.wait_leader(60, other_than=old)

        def refused_by_the_new_leader() -> bool:
            with open(path_b, "rb") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
            raise AssertionError("the lock was lost in the failover")

        wait_until(refused_by_the_new_leader, 60, "the new leader to answer")
        assert not waiter.wait_locked(STILL_WAITING_S)
        holder.release()
        assert waiter.wait_locked(60)
    finally:
        for p in (holder, waiter):
            if p is not None:
                p.close()
        stop_mount(mnt_b, proc_b)
