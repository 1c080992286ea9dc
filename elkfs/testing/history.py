"""A recorded workload for failover tests and benchmarks, and the checks of its history.

Client processes run as threads doing real system calls on a real mount (and one reads
through the client library, another client of the same cluster). Every operation is
recorded as invoked, then ok with its value or failed with its error (`History`). After
the faults the checks read the history, not only the final files:

* no system call failed (a failover is a pause, not an error);
* every acknowledged append is in the file exactly once, in order, with nothing else;
* every acknowledged create-and-rename left its file, complete, under its final name;
* no read returned a value older than one acknowledged before the read began.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from dataclasses import dataclass, field

from elkfs.client.client import Client
from elkfs.proto.errors import FsError


@dataclass
class Op:
    process: str
    kind: str
    key: str
    invoked: float
    completed: float | None = None
    ok: bool | None = None
    value: object = None
    error: str = ""


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def invoke(self, process: str, kind: str, key: str) -> Op:
        op = Op(process, kind, key, time.monotonic())
        with self.lock:
            self.ops.append(op)
        return op

    def complete(self, op: Op, ok: bool, value=None, error: str = "") -> None:
        op.completed, op.ok, op.value, op.error = time.monotonic(), ok, value, error

    def failed(self) -> list[Op]:
        return [o for o in self.ops if o.ok is False]

    def acked(self, kind: str) -> list[Op]:
        return [o for o in self.ops if o.kind == kind and o.ok]

    def longest_stall(self) -> float:
        done = [o.completed - o.invoked for o in self.ops if o.completed is not None]
        return max(done, default=0.0)


class Worker(threading.Thread):
    """Repeats `step(i)` until stopped; each step is one recorded operation."""

    kind = ""

    def __init__(self, history: History, name: str, pause_s: float = 0.02):
        super().__init__(name=name, daemon=True)
        self.history = history
        self.stopping = threading.Event()
        self.pause_s = pause_s
        self.count = 0

    def run(self) -> None:
        i = 0
        self.setup()
        try:
            while not self.stopping.is_set():
                op = self.history.invoke(self.name, self.kind, f"{self.name}:{i}")
                try:
                    value = self.step(i)
                except OSError as e:
                    self.history.complete(op, False, error=f"{type(e).__name__}: {e}")
                else:
                    self.history.complete(op, True, value)
                    self.count += 1
                i += 1
                time.sleep(self.pause_s)
        finally:
            self.teardown()

    def setup(self) -> None:
        pass

    def teardown(self) -> None:
        pass

    def stop(self) -> None:
        self.stopping.set()
        self.join(120)
        assert not self.is_alive(), f"{self.name} is stuck"


class Appender(Worker):
    """Appends numbered records to one file and fsyncs each: an ok means durable."""

    kind = "append"

    def __init__(self, history: History, path: str, name: str = "appender"):
        super().__init__(history, name)
        self.path = path

    def setup(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def step(self, i: int):
        record = f"{self.name} {i:08d}\n".encode()
        os.write(self.fd, record)
        os.fsync(self.fd)
        return record

    def teardown(self) -> None:
        os.close(self.fd)


class Renamer(Worker):
    """Creates a file, writes it whole, then renames it to its final name."""

    kind = "rename"

    def __init__(self, history: History, directory: str, name: str = "renamer"):
        super().__init__(history, name)
        self.dir = directory

    def step(self, i: int):
        tmp = os.path.join(self.dir, f".tmp-{i}")
        content = f"file {i} ".encode() * (1 + i % 50)
        with open(tmp, "wb") as f:
            f.write(content)
        os.rename(tmp, os.path.join(self.dir, f"done-{i}"))
        return (i, content)


class SizeReader(Worker):
    """Another client (the client library, no kernel cache) reads the appended file's
    size: it must never be below what was acknowledged before the read began."""

    kind = "read-size"

    def __init__(self, history: History, client_args: dict, path: str, name: str = "reader"):
        super().__init__(history, name, pause_s=0.05)
        self.client_args = client_args
        self.path = path

    def setup(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = self.loop.run_until_complete(
            Client.connect(**self.client_args, info="history reader", retry_s=60.0))

    def step(self, i: int):
        try:
            return self.loop.run_until_complete(self.client.stat(self.path)).size
        except FsError as e:
            if e.status == errno.ENOENT:  # not made yet by the appender
                return 0
            raise OSError(e.errno, str(e)) from e

    def teardown(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


# ---------------------------------------------------------------- checks


def check_no_failures(history: History) -> None:
    failed = history.failed()
    assert not failed, f"{len(failed)} operations failed, first: {failed[:3]}"


def check_appends(history: History, path: str, process: str = "appender") -> None:
    acked = [o.value for o in history.acked("append") if o.process == process]
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    mine = [x for x in lines if x.startswith(process.encode() + b" ")]
    assert len(mine) == len(lines), "foreign data in the appended file"
    assert len(set(mine)) == len(mine), "an append is in the file twice"
    # Every acknowledged record, in order; at most the last, unacknowledged one besides.
    assert mine[:len(acked)] == acked, "acknowledged appends missing or out of order"
    assert len(mine) - len(acked) <= 1


def check_renames(history: History, directory: str) -> None:
    for op in history.acked("rename"):
        i, content = op.value
        with open(os.path.join(directory, f"done-{i}"), "rb") as f:
            assert f.read() == content, f"done-{i} has the wrong content"
    leftovers = [n for n in os.listdir(directory) if n.startswith(".tmp-")]
    assert len(leftovers) <= 1, f"temporary files left: {leftovers}"


def check_reads_not_stale(history: History) -> None:
    appends = sorted((o.completed, len(o.value)) for o in history.acked("append"))
    for read in history.acked("read-size"):
        acked_bytes = sum(n for done, n in appends if done < read.invoked)
        assert read.value >= acked_bytes, (
            f"a read began after {acked_bytes} bytes were acknowledged and saw {read.value}")
