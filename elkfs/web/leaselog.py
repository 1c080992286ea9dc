"""Reading `lease.log` back: its lines as events, and who led when.

Each master appends one line per lease event (`elkfs.consensus.leaselog.format_line`,
prefixed by the shell with the wall time and the CLOCK_BOOTTIME reading):

    2024-05-01T10:00:00 mono=8123.456 term=7 lease-acquired node=1f2e.1 until=+1.960s

The wall time has whole seconds and no zone; the `mono` reading has milliseconds and is
the same clock on every process of one boot, so an event's time is taken from it whenever
it belongs to the current boot (`EventTimes`), and from the wall time otherwise.

`leadership` turns the events of every master into intervals of leadership and the
failovers between them, for the timeline. A master that was killed writes no end event:
its interval ends where the next leader's begins, and the failover says so.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field

_LINE = re.compile(r"^(?P<wall>\S+) (?:mono=(?P<mono>[0-9.]+) )?term=(?P<term>\d+) "
                   r"(?P<event>[a-z-]+) node=(?P<node>\S*)(?: (?P<detail>.*))?$")

# Where a leadership begins and how it ends (see elkfs/consensus/master.py).
START_EVENTS = ("lease-acquired",)
END_EVENTS = ("lease-lost", "lease-released", "deposed")
# What the history table shows by default: the events an operator asks about.
NOTABLE_EVENTS = ("election-start", "election-lost", "not-eligible", "lease-acquired",
                  "serving", "lease-renewed-late", "lease-lost", "step-down",
                  "step-down-refused", "step-down-aborted", "lease-released", "deposed")


@dataclass(frozen=True)
class LeaseEvent:
    time: float  # seconds since the epoch, on the writing master's clock
    wall: str  # as written
    term: int
    event: str
    node: str  # the master's identity (uuid.incarnation)
    detail: str

    def as_dict(self) -> dict:
        return {"time": round(self.time, 3), "wall": self.wall, "term": self.term,
                "event": self.event, "node": self.node, "detail": self.detail}


class EventTimes:
    """Epoch seconds of a `mono=` reading, through the current offset between the wall
    clock and CLOCK_BOOTTIME (a reading from a previous boot is in the future of the
    current clock, or meaningless: the wall time is used then)."""

    def __init__(self, wall_now: float, boot_now: float):
        self.wall_now = wall_now
        self.boot_now = boot_now

    @classmethod
    def now(cls) -> "EventTimes":
        return cls(time.time(), time.clock_gettime(time.CLOCK_BOOTTIME))

    def of(self, wall: str, mono: str | None) -> float:
        try:
            by_wall = time.mktime(time.strptime(wall, "%Y-%m-%dT%H:%M:%S"))
        except (ValueError, OverflowError):
            by_wall = self.wall_now
        if mono:
            value = float(mono)
            t = self.wall_now - (self.boot_now - value)
            # same boot: the two agree to within the wall time's truncation to a second
            # (and any step of the wall clock since; then the monotonic one is right)
            if 0.0 <= value <= self.boot_now and abs(t - by_wall) < 3600:
                return t
        return by_wall


def parse_line(line: str, times: EventTimes) -> LeaseEvent | None:
    m = _LINE.match(line.rstrip("\n"))
    if m is None:
        return None
    return LeaseEvent(times.of(m["wall"], m["mono"]), m["wall"], int(m["term"]), m["event"],
                      m["node"], m["detail"] or "")


class LeaseLogTail:
    """Follows one master's `lease.log`: the last `keep` events, and how many of each kind
    were written since it started following (the /metrics counters)."""

    def __init__(self, path: str, keep: int = 1000, backlog_bytes: int = 256 * 1024):
        self.path = path
        self.events: deque[LeaseEvent] = deque(maxlen=keep)
        self.counts: Counter[str] = Counter()
        self._offset = 0
        self._partial = b""
        self._backlog = backlog_bytes
        self._started = False

    def poll(self) -> None:
        """Take in what was appended since the last call."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self._offset:  # replaced or truncated: start over
                    self._offset, self._partial = 0, b""
                first = not self._started
                if first:
                    self._offset = max(0, size - self._backlog)
                f.seek(self._offset)
                data = f.read(size - self._offset)
        except FileNotFoundError:
            return
        self._offset += len(data)
        data = self._partial + data
        if first and self._offset - len(data) > 0:
            data = data[data.find(b"\n") + 1:]  # began mid-line
        lines = data.split(b"\n")
        self._partial = lines.pop()
        times = EventTimes.now()
        for raw in lines:
            ev = parse_line(raw.decode("utf-8", "replace"), times)
            if ev is None:
                continue
            self.events.append(ev)
            if not first:
                self.counts[ev.event] += 1
        self._started = True

    def recent(self, limit: int, notable_only: bool = True) -> list[LeaseEvent]:
        evs = [e for e in self.events if not notable_only or e.event in NOTABLE_EVENTS]
        return evs[-limit:]


# ---------------------------------------------------------------- who led when


@dataclass
class Tenure:
    master: str  # address
    term: int
    start: float
    end: float | None = None  # None: still leading (as far as the events tell)
    end_event: str = ""  # lease-lost / lease-released / deposed / "" (no end written)

    def as_dict(self) -> dict:
        return {"master": self.master, "term": self.term, "start": round(self.start, 3),
                "end": None if self.end is None else round(self.end, 3),
                "end_event": self.end_event}


@dataclass
class Failover:
    time: float
    old: str
    new: str
    term: int
    kind: str  # "step-down", "lease lost", "deposed", "no end written (crash?)"
    reason: str = ""  # the new leader's election reason, when known

    def as_dict(self) -> dict:
        return {"time": round(self.time, 3), "from": self.old, "to": self.new,
                "term": self.term, "kind": self.kind, "reason": self.reason}


@dataclass
class Leadership:
    tenures: list[Tenure] = field(default_factory=list)
    failovers: list[Failover] = field(default_factory=list)


_END_KIND = {"lease-released": "step-down", "lease-lost": "lease lost", "deposed": "deposed"}


def election_reason(detail: str) -> str:
    """The words for an `election-start` detail (`reason=prevote last=(3, 120)`)."""
    m = re.search(r"reason=(.*?)(?: last=|$)", detail)
    reason = m.group(1) if m else detail
    if reason == "prevote":
        return "no leader heard for a lease"
    if reason.startswith("handover from"):
        return "hand-over (step-down)"
    return reason


def leadership(events: list[tuple[str, LeaseEvent]]) -> Leadership:
    """Tenures and failovers from `(master address, event)` pairs of every master, their
    times already on one clock."""
    out = Leadership()
    ordered = sorted(events, key=lambda p: (p[1].time, p[1].term))
    open_by_master: dict[str, Tenure] = {}
    last_reason: dict[str, str] = {}
    previous: Tenure | None = None
    for master, ev in ordered:
        if ev.event == "election-start":
            last_reason[master] = election_reason(ev.detail)
        elif ev.event in START_EVENTS:
            if master in open_by_master:  # a lost end (restart): close it here
                t = open_by_master.pop(master)
                t.end = ev.time
            for other, t in list(open_by_master.items()):
                # a new lease means every older one has ended: the voters promised so
                t.end = ev.time
                del open_by_master[other]
            tenure = Tenure(master, ev.term, ev.time)
            if previous is not None and previous.master != master:
                kind = _END_KIND.get(previous.end_event, "no end written (crash?)")
                out.failovers.append(Failover(ev.time, previous.master, master, ev.term, kind,
                                              last_reason.get(master, "")))
            out.tenures.append(tenure)
            open_by_master[master] = tenure
            previous = tenure
        elif ev.event in END_EVENTS:
            t = open_by_master.pop(master, None)
            if t is not None:
                t.end, t.end_event = ev.time, ev.event
    for t in out.tenures:
        if t.end is not None and t.end < t.start:
            t.end = t.start
    return out
