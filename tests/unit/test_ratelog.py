"""The rate-limited log: the first line of a kind is written, repeats are counted and
summed up in the next line written after the interval; keys are bounded."""

import logging

from elkfs.ratelog import RateLimitedLog


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_repeats_are_counted_not_written(caplog):
    clock = Clock()
    rl = RateLimitedLog(logging.getLogger("test.ratelog"), interval_s=10, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.ratelog"):
        assert rl.warning(("cap", "a"), "refused %s", "a")
        for _ in range(1000):
            assert not rl.warning(("cap", "a"), "refused %s", "a")
        assert rl.warning(("cap", "b"), "refused %s", "b")  # another key: its own line
        clock.now = 10.5
        assert rl.warning(("cap", "a"), "refused %s", "a")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused a", "refused b", "refused a [1000 more like this in 10s]"]


def test_keys_are_bounded():
    rl = RateLimitedLog(logging.getLogger("test.ratelog2"), clock=Clock(), max_keys=100)
    for i in range(10_000):
        rl.info(("k", i), "line %d", i)
    assert len(rl._seen) == 100
