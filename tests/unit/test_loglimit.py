"""Repeated log lines are rate-limited (elkfs/loglimit.py): a peer sending the same bad
request in a loop costs a few lines a minute, not a traceback per request."""

import logging

from elkfs.loglimit import RepeatFilter


def test_a_burst_then_silence_then_a_count_of_what_was_dropped():
    now = [0.0]
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep()
    handler.addFilter(RepeatFilter(burst=3, period_s=60, clock=lambda: now[0]))
    log = logging.getLogger("loglimit-test")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    def refused(peer):
        log.warning("refused %s from %s", "MetaRequest", peer)  # one place in the code

    for i in range(1000):
        refused(i)
    log.warning("something else")
    log.info("info lines always pass %d", 1)
    assert len(records) == 5
    now[0] = 61.0
    refused("again")
    assert records[-1] == "refused MetaRequest from again [997 similar lines dropped]"
