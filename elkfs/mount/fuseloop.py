"""pyfuse3's asyncio mode, made cheaper per request and free of a slow leak.

`enable()` switches pyfuse3 to asyncio and replaces two pieces of its shim
(`pyfuse3.asyncio`):

- `wait_readable`: the shim registers and unregisters /dev/fuse with the event loop for
  every request (two epoll_ctl calls, a future and two callbacks each time). Here the fd
  stays registered while a worker waits for it, and a readiness event wakes one waiter.
- the nursery kept every worker task it ever started in a set until unmount; workers
  come and go with the load (pyfuse3 starts one whenever none is idle), so a long-lived
  mount grew without bound. Finished tasks now leave the set.
- `Lock`: pyfuse3 lets one worker at a time wait for /dev/fuse (`read_lock`), so the lock
  passes from worker to worker with every request. `_HandOffLock` does just that, without
  asyncio.Lock's general machinery.
"""

from __future__ import annotations

import asyncio
import collections

import pyfuse3.asyncio as shim


class _Watch:
    """Waiters for one fd, woken one per readiness event."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd):
        self.loop = loop
        self.fd = fd
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.registered = False
        self.woken = 0  # waiters woken that have not come back to wait (or read) yet

    async def wait(self) -> None:
        if self.woken:
            self.woken -= 1  # that worker has read its request by now
        fut = self.loop.create_future()
        self.waiters.append(fut)
        closing = shim._read_futures[self.fd]  # what notify_closing() fails at unmount
        closing.add(fut)
        if not self.registered:
            self.loop.add_reader(self.fd, self._ready)
            self.registered = True
        try:
            await fut
        except BaseException:  # closed at unmount, or cancelled: forget the fd
            _watches.pop(self.fd, None)
            self._unregister()
            raise
        finally:
            closing.discard(fut)
            if not closing:
                shim._read_futures.pop(self.fd, None)

    def _ready(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                self.woken += 1
                return
        if self.woken:
            # A woken worker is about to read: keep the registration (once per woken
            # worker, so one that never comes back cannot keep the loop spinning).
            self.woken -= 1
            return
        # Nobody waits: stop watching (the fd stays readable until a worker reads it, and
        # a level-triggered watch would fire every loop iteration until then).
        self._unregister()

    def _unregister(self) -> None:
        if self.registered:
            self.registered = False
            self.loop.remove_reader(self.fd)


_watches: dict[object, _Watch] = {}


async def wait_readable(fd) -> None:
    watch = _watches.get(fd)
    if watch is None:
        watch = _watches[fd] = _Watch(asyncio.get_running_loop(), fd)
    await watch.wait()


class _HandOffLock:
    """A lock that passes straight to the first waiter on release (it stays locked)."""

    def __init__(self):
        self._locked = False
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    async def __aenter__(self) -> None:
        if not self._locked:
            self._locked = True
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._release()  # handed to us as we were cancelled: pass it on
            else:
                self._waiters.remove(fut)
            raise

    async def __aexit__(self, *exc) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self._locked = False


def _start_soon(self, func, *args, name=None) -> None:
    task = asyncio.create_task(func(*args))
    task.name = name
    self.tasks.add(task)
    task.add_done_callback(self.tasks.discard)


def enable() -> None:
    shim.enable()
    shim.Lock = _HandOffLock
    shim.wait_readable = wait_readable
    shim._Nursery.start_soon = _start_soon
