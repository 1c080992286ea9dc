"""Lease and vote events, one human-readable ``lease.log`` line each.

The core emits :class:`LeaseEvent` values in ``Output.lease_log``; the shell prefixes the
wall time (never used for decisions) and appends the line to ``lease.log`` in the data
directory.  Events: ``election-start``, ``prevote-*``, ``vote-granted``, ``vote-refused``,
``lease-acquired``, ``lease-renewed-late``, ``lease-lost``, ``lease-released``,
``record-stored``, ``step-down``, ``released`` (voter side) and so on.
"""
from __future__ import annotations

import msgspec


class LeaseEvent(msgspec.Struct, frozen=True):
    node: str
    term: int
    event: str
    detail: str = ""


def format_line(wall_time: str, ev: LeaseEvent) -> str:
    """``2024-05-01T10:00:00.123 term=7 lease-acquired node=m1.1 until=+1.96s``."""
    tail = f" {ev.detail}" if ev.detail else ""
    return f"{wall_time} term={ev.term} {ev.event} node={ev.node}{tail}"
