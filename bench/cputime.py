"""CPU time of a set of processes, from /proc/PID/stat (utime + stime, all threads).

    meter = CpuMeter(side.pids())   # the daemons and the mount, and their children
    before = meter.seconds()
    ... run a workload ...
    used = meter.seconds() - before

The set is taken once, when the meter is made: walking all of /proc at every sample would
cost more than a short benchmark phase. Children of the given processes (MooseFS's master
forks one to save its metadata) are in it. The resolution is the kernel's clock tick
(10 ms), so a phase should use well over 0.1 s of CPU for a figure worth reading.
"""

from __future__ import annotations

import os
import time

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces: the fields after it follow its ")"
    return text[text.rindex(")") + 2:].split()


def _start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if fields is not None else None  # stat's field 22, starttime


def descendants(roots: list[int]) -> list[int]:
    """`roots` and every live process below them."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.append(pid)
            todo.extend(children.get(pid, []))
    return found


class CpuMeter:
    def __init__(self, pids: list[int]):
        self.pids = descendants(pids)
        self.last_ticks = dict.fromkeys(self.pids, 0)
        self.start_times = {pid: _start_time(pid) for pid in self.pids}

    def seconds(self) -> float:
        """utime + stime of the processes, summed; a process that has exited keeps the
        last figure read of it, so differences never go negative."""
        for pid in self.pids:
            fields = _stat_fields(pid)
            if fields is not None and fields[19] == self.start_times[pid]:  # not a reused pid
                # fields[0] is the state (stat's field 3): utime and stime are 14 and 15
                self.last_ticks[pid] = int(fields[11]) + int(fields[12])
        return sum(self.last_ticks.values()) * TICK_S


class Watch:
    """Wall-clock seconds and CPU seconds of a meter's processes, added up over every
    `with watch:` block: a workload brackets just what it times (not its set-up or its
    clean-up). Without a meter (a local directory) `cpu_s` stays None."""

    def __init__(self, meter: CpuMeter | None):
        self.meter = meter
        self.seconds = 0.0
        self.cpu_s: float | None = 0.0 if meter else None

    def __enter__(self) -> "Watch":
        self._t0 = time.monotonic()
        self._cpu0 = self.meter.seconds() if self.meter else 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds += time.monotonic() - self._t0
        if self.meter:
            self.cpu_s += self.meter.seconds() - self._cpu0
