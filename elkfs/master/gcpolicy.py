"""The garbage collector and a master holding millions of objects.

A full collection walks every tracked object: with the metadata of millions of files that
is hundreds of milliseconds to seconds during which the event loop serves nobody, the
same stall as a long request. `settle_gc` takes what is alive out of the full passes;
`watch_gc` logs the full passes that still take long.
"""

from __future__ import annotations

import gc
import logging
import time

from .. import ratelog

log = logging.getLogger("mfsmaster")
gc_log = ratelog.RateLimitedLog(log)


def watch_gc(threshold_s: float = 0.1) -> None:
    """Log the garbage collector's long pauses: with millions of metadata objects a full
    collection holds the event loop like a long request would."""
    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif info.get("generation") == 2:
            took = time.perf_counter() - started[0]
            if took >= threshold_s:
                gc_log.warning("gc", "a full garbage collection held the master for %.0f ms",
                               took * 1000)

    gc.callbacks.append(callback)


def settle_gc() -> None:
    """Take every object alive now out of the collector's full passes (`gc.freeze`).

    The metadata is millions of long-lived objects with no reference cycles; a full
    collection walks all of them (hundreds of ms per million) and holds every client that
    long. Frozen, they are never walked again. The price: an object in a reference cycle
    that is alive at a freeze and dropped later is not reclaimed (an object without
    cycles is still freed as soon as nobody refers to it, frozen or not). The master
    freezes while loading the metadata (`loading`), before each checkpoint's fork, after
    each step of a long operation (whose lists of millions of entries a collection
    would otherwise walk again and again), and whenever the namespace grew by SETTLE_GROWTH nodes (`settle_loop`): what else is alive then is connections and
    tasks, which are freed without the collector once closed (a test checks connections:
    tests/unit/test_rpc_frames.py)."""
    gc.freeze()


SETTLE_GROWTH = 20_000  # new metadata nodes between two freezes


async def settle_loop(count_nodes) -> None:
    """Freeze once `count_nodes()` grew by SETTLE_GROWTH since the last freeze: a
    namespace growing by creates never makes the collector walk all of it again."""
    import asyncio

    settled = count_nodes()
    while True:
        await asyncio.sleep(1.0)
        now = count_nodes()
        if now - settled >= SETTLE_GROWTH:
            settle_gc()
            settled = now
        elif now < settled:
            settled = now


_pauses = 0


class paused:
    """No automatic collection while a short-lived list of millions of objects is
    stepped through (the replication pass, every second): collections would walk it
    again and again; the young garbage of those moments is collected right after. Nests
    (a counter), so overlapping holders do not turn the collector back on early."""

    def __enter__(self):
        global _pauses
        _pauses += 1
        gc.disable()
        return self

    def __exit__(self, *exc):
        global _pauses
        _pauses -= 1
        if _pauses == 0:
            gc.enable()


class loading(paused):
    """No automatic collection while the metadata is loaded (a checkpoint read, the
    journal replayed), then what is alive is frozen (`settle_gc`), if the load worked.

    Loading makes millions of objects that all stay: each automatic collection would walk
    the young ones made so far and, every so often, all of them (at 1,000,000 files 12 of
    the 19 s of a checkpoint load went to the collector). Frozen at the end, they are never
    walked either; a failed load leaves them to the collector as usual."""

    def __exit__(self, exc_type, *rest):
        if exc_type is None:
            settle_gc()
        return super().__exit__(exc_type, *rest)
