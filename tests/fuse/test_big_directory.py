"""A directory of 200,000 entries listed through the mount: in pages, with the memory of
the mount and the master bounded, every entry that stays seen exactly once while other
clients add, remove and rename entries in the middle of the listing."""

from __future__ import annotations

import asyncio
import os
import random
import stat
import time

import pytest

from elkfs.client.client import Client
from elkfs.testing.cluster import run_sync

NET = "127.0.67"
ENTRIES = 200_000
# What listing may add to a daemon's resident memory. Holding the whole listing costs the
# mount well over 100 MB at this size; a page and the bounded caches cost a few MB.
RSS_GROWTH_MAX = 40 << 20


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def client_do(mc, work):
    """Run `work(client)` with a client library session of its own."""
    host, port = mc.cluster.master_addr

    async def run():
        client = await Client.connect(host, port, info="test_big_directory")
        try:
            return await work(client)
        finally:
            await client.close()

    return run_sync(run)


async def make_entries(client: Client, parent: int, names: list[bytes]) -> None:
    """Many creates in flight at once (one session, pipelined)."""
    sem = asyncio.Semaphore(256)

    async def one(name: bytes):
        async with sem:
            await client.op(_mknod(parent, name))

    await asyncio.gather(*(one(n) for n in names))


def _mknod(parent: int, name: bytes):
    from elkfs.proto import messages as m

    return m.Mknod(parent, name, stat.S_IFREG | 0o644, os.getuid(), os.getgid())


@pytest.mark.slow
def test_huge_directory_lists_in_pages_with_bounded_memory(mc, d):
    parent = os.stat(d).st_ino
    names = [b"entry-%07d" % i for i in range(ENTRIES)]
    random.Random(1).shuffle(names)
    started = time.monotonic()
    client_do(mc, lambda c: make_entries(c, parent, names))
    print(f"{ENTRIES} creates in {time.monotonic() - started:.1f} s")

    master_pid = mc.cluster.masters[0].pid()
    rss_before = {"mount": rss(mc.pid), "master": rss(master_pid)}
    rss_peak = dict(rss_before)

    # Changes made by another client once a third of the listing is read: removals and
    # renames of entries both already listed and not yet listed, and new entries.
    rng = random.Random(2)
    removed = set(rng.sample(names, 2000))
    renamed = rng.sample(sorted(set(names) - removed), 1000)
    added = [b"added-%05d" % i for i in range(1000)] + [b"zz-renamed-" + n for n in renamed]

    async def change(client: Client):
        from elkfs.proto import messages as m

        for name in removed:
            await client.op(m.Unlink(parent, name))
        for name in renamed:
            await client.op(m.Rename(parent, name, parent, b"zz-renamed-" + name))
        await make_entries(client, parent, added[:1000])

    seen: list[bytes] = []
    started = time.monotonic()
    with os.scandir(os.fsencode(d)) as it:
        for entry in it:
            seen.append(entry.name)
            if len(seen) == ENTRIES // 3:
                client_do(mc, change)
            if len(seen) % 5000 == 0:
                rss_peak = {"mount": max(rss_peak["mount"], rss(mc.pid)),
                            "master": max(rss_peak["master"], rss(master_pid))}

    print(f"listed {len(seen)} in {time.monotonic() - started:.1f} s; rss before {rss_before}, "
          f"peak {rss_peak}")
    assert len(seen) == len(set(seen)), "an entry was listed twice"
    staying = set(names) - removed - set(renamed)
    missing = staying - set(seen)
    assert not missing, f"{len(missing)} entries that stayed were not listed"
    assert set(seen) <= set(names) | set(added), "listed a name that never existed"
    for who in ("mount", "master"):
        growth = rss_peak[who] - rss_before[who]
        assert growth < RSS_GROWTH_MAX, f"listing grew the {who} by {growth >> 20} MiB"

    # After the changes, a fresh listing is exactly the directory's content.
    final = set(os.listdir(os.fsencode(d)))
    assert final == staying | set(added)
