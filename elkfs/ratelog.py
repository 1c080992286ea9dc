"""Rate-limited log lines: the first of a kind is written, repeats are counted.

A hostile or broken peer can make a daemon say the same thing thousands of times a
second (a refused connection, a bad frame, a retry): the log must stay readable and small.
`RateLimitedLog` writes a line the first time its key is seen, then at most one line per
key every `interval_s`, carrying how many were suppressed meanwhile:

    refusing a client connection from 10.0.0.7: it has 100 open (the limit per address)
    refusing a client connection from 10.0.0.7: ... [2141 more like this in 10s]

Keys are whatever tells one story from another, e.g. `("cap", port_name, address)`.
The number of keys kept is bounded (oldest forgotten first), so many senders cannot make
the limiter itself grow without bound. The clock is passed in for tests.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Callable, Hashable

DEFAULT_INTERVAL_S = 10.0
MAX_KEYS = 4096


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval_s: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS):
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self.max_keys = max_keys
        # key -> (when it was last written, repeats suppressed since)
        self._seen: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def log(self, level: int, key: Hashable, msg: str, *args) -> bool:
        """Write `msg % args` unless `key` was written less than `interval_s` ago.
        Returns whether it was written."""
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval_s:
            self._seen[key] = (seen[0], seen[1] + 1)
            return False
        suppressed = seen[1] if seen is not None else 0
        if suppressed:
            msg = f"{msg} [{suppressed} more like this in {now - seen[0]:.0f}s]"
        self._seen[key] = (now, 0)
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        self.logger.log(level, msg, *args)
        return True

    def info(self, key: Hashable, msg: str, *args) -> bool:
        return self.log(logging.INFO, key, msg, *args)

    def warning(self, key: Hashable, msg: str, *args) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: Hashable, msg: str, *args) -> bool:
        return self.log(logging.ERROR, key, msg, *args)
