"""Big directories made fast through the client library, and a watcher of another
client's latency while something big runs (the snapshot test and bench/bigsnapshot.py).
"""

from __future__ import annotations

import asyncio
import stat
import time

from ..client import Client
from ..proto import messages as m

POST_WINDOW = 300  # changes posted before waiting for their answers (the link pings
# behind them on the same connection: a ping waits for all of them)


async def make_big_dir(client: Client, path: str, entries: int, exists: bool = False) -> int:
    """Make directory `path` (`exists`: it is there already) holding `entries` empty
    files (posted, not awaited one by one: about as fast as the master applies them).
    Returns its inode."""
    attr = await (client.stat(path) if exists else client.mkdir(path))
    uid, gid = client.uid, client.gid
    for start in range(0, entries, POST_WINDOW):
        for i in range(start, min(entries, start + POST_WINDOW)):
            client.link.post(m.Mknod(attr.inode, b"f%08d" % i, stat.S_IFREG | 0o644, uid, gid))
        await client.link.drain_posted(600)
    return attr.inode


class LatencyWatch:
    """Another client's `GetAttr`, one after another, while something runs: the worst
    wait is how long the master was held."""

    def __init__(self, client: Client, inode: int):
        self.client = client
        self.inode = inode
        self.worst_s = 0.0
        self.count = 0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await self.client.op(m.GetAttr(self.inode))
            self.worst_s = max(self.worst_s, time.perf_counter() - started)
            self.count += 1
            await asyncio.sleep(0.005)

    def __enter__(self):
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc):
        self._task.cancel()


async def count_entries(client: Client, inode: int) -> int:
    """Entries of a directory, read in pages."""
    count, offset = 0, 0
    while offset >= 0:
        out = await client.op(m.ReadDir(inode, offset, 1000))
        count += len(out.entries)
        offset = out.next_offset
    return count


def rss_of(pid: int) -> int:
    """Resident memory of process `pid`, bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
