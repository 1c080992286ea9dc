"""Unmount on a signal: shared by the normal mount and the meta mount."""

from __future__ import annotations

import asyncio
import logging
import signal

import pyfuse3

log = logging.getLogger("elkfs.mount")


class UnmountOnSignal:
    """The given signals end `pyfuse3.main()`; `stopping` then tells `pyfuse3.close` to
    unmount (an unmount from outside, `umount`/`fusermount3 -u`, needs no second one)."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.stopping = False
        loop = asyncio.get_running_loop()
        for sig in signals:
            loop.add_signal_handler(sig, self.stop)

    def stop(self, *_) -> None:
        if not self.stopping:
            self.stopping = True
            log.info("signal received: unmounting")
            pyfuse3.terminate()
