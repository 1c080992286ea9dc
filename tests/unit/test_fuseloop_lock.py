"""The lock pyfuse3's workers pass around to wait for /dev/fuse one at a time."""

import asyncio

import pytest

from elkfs.mount.fuseloop import _HandOffLock


async def test_one_holder_at_a_time_in_arrival_order():
    lock = _HandOffLock()
    inside, order = [], []

    async def worker(name):
        async with lock:
            inside.append(name)
            assert len(inside) == 1
            order.append(name)
            await asyncio.sleep(0.001)
            inside.remove(name)

    await asyncio.gather(*(worker(i) for i in range(5)))
    assert order == list(range(5))
    assert not lock._locked and not lock._waiters


async def test_a_cancelled_waiter_does_not_keep_the_lock():
    lock = _HandOffLock()
    await lock.__aenter__()
    waiting = asyncio.ensure_future(lock.__aenter__())
    behind = asyncio.ensure_future(lock.__aenter__())
    await asyncio.sleep(0)
    waiting.cancel()  # cancelled while waiting: leaves the queue
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await lock.__aexit__(None, None, None)
    await asyncio.wait_for(behind, 1.0)  # the next one in line has it
    handed = asyncio.ensure_future(lock.__aenter__())
    await asyncio.sleep(0)
    await lock.__aexit__(None, None, None)  # handed over ...
    handed.cancel()  # ... and cancelled before it ran: passed on, not lost
    with pytest.raises(asyncio.CancelledError):
        await handed
    assert not lock._locked
