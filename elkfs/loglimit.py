"""Repeated log lines, rate-limited: a peer that sends the same bad request in a loop
must not fill the disk with the same traceback.

`RepeatFilter` keys a record by where it was logged and what it says (its message
template, and the type of the exception it carries): the first `burst` records of a key
in each `period_s` pass, the rest are counted and dropped; the next record of that key
let through says how many were dropped."""

from __future__ import annotations

import logging
import time

BURST = 5
PERIOD_S = 60.0
KEYS_KEPT = 1024


class RepeatFilter(logging.Filter):
    def __init__(self, burst: int = BURST, period_s: float = PERIOD_S, clock=time.monotonic):
        super().__init__()
        self.burst = burst
        self.period_s = period_s
        self.clock = clock
        self.seen: dict[tuple, list] = {}  # key -> [window start, passed, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        key = (record.name, record.pathname, record.lineno, str(record.msg), exc)
        now = self.clock()
        state = self.seen.get(key)
        if state is None or now - state[0] >= self.period_s:
            dropped = state[2] if state is not None else 0
            if len(self.seen) >= KEYS_KEPT:
                self.seen.clear()
            state = self.seen[key] = [now, 0, 0]
            if dropped:
                record.msg = f"{record.msg} [{dropped} similar lines dropped]"
        if state[1] >= self.burst:
            state[2] += 1
            return False
        state[1] += 1
        return True


def install(handler: logging.Handler) -> None:
    handler.addFilter(RepeatFilter())
