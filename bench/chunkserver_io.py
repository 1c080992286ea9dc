"""Chained write and read throughput against real mfschunkserver processes.

    .venv/bin/python bench/chunkserver_io.py [--mib 1024] [--piece-kib 1024] [--window-mib 16]

Starts a stand-in master (in this process) and two chunkservers on 127.0.1.20/21, creates
the chunks on both, then streams `--mib` MiB through the chain client -> cs1 -> cs2
(WriteData frames of `--piece-kib`, at most `--window-mib` unacknowledged, WriteEnd
without sync, then one WriteEnd(sync) pass is timed separately) and reads it all back
from cs1 (and from cs2) with the same window. Prints MB/s (10^6 bytes per second).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from elkfs.proto import messages as m  # noqa: E402
from elkfs.proto import rpc  # noqa: E402

CHUNK = 64 << 20
MASTER = "127.0.1.10"
HOSTS = ["127.0.1.20", "127.0.1.21"]


def cpu_seconds(pid=None) -> float:
    """user + system CPU time of a process (default: this one)."""
    with open(f"/proc/{pid or 'self'}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    def __init__(self, pids):
        self.pids = [None] + pids
        self.start = [cpu_seconds(p) for p in self.pids]

    def report(self, seconds: float) -> str:
        used = [cpu_seconds(p) - s for p, s in zip(self.pids, self.start)]
        names = ["client"] + [f"cs{i + 1}" for i in range(len(used) - 1)]
        return "CPU " + ", ".join(f"{n} {u / seconds * 100:.0f}%" for n, u in zip(names, used))


def free_port(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Master:
    def __init__(self):
        self.port = free_port(MASTER)
        self.conns = {}
        self.event = asyncio.Event()

    def handler(self, conn, msg, data):
        if isinstance(msg, m.CsRegister):
            self.conns[(msg.host, msg.port)] = conn
            conn.send(m.Ok(msg.req))
            self.event.set()


async def write_chunk(addr, chain, chunk_id, data: memoryview, piece, window, sync=False):
    conn = await rpc.connect(*addr)
    await conn.call(m.WriteInit, chunk_id=chunk_id, version=1, chain=chain)
    inflight = deque()
    pos = 0
    while pos < len(data):
        while len(inflight) * piece >= window:
            reply, _ = await inflight.popleft()
            assert reply.status == 0, reply
        msg = m.WriteData(conn.next_req(), pos)
        inflight.append(conn.start_call(msg, data[pos:pos + piece]))
        pos += piece
    for fut in inflight:
        reply, _ = await fut
        assert reply.status == 0, reply
    await conn.call(m.WriteEnd, sync=sync)
    conn.close()


async def read_chunk(conn, chunk_id, size, piece, window, check: memoryview | None):
    inflight = deque()
    pos = 0
    while pos < size or inflight:
        while pos < size and len(inflight) * piece < window:
            msg = m.ReadReq(conn.next_req(), chunk_id, 1, pos, piece)
            inflight.append((pos, conn.start_call(msg)))
            pos += piece
        off, fut = inflight.popleft()
        reply, data = await fut
        assert reply.status == 0, reply
        if check is not None and off % (16 << 20) == 0:
            assert data == check[off:off + piece]


async def main(args):
    base = Path(tempfile.mkdtemp(prefix="elkfs-bench-", dir=args.dir))
    master = Master()
    server = await rpc.serve(MASTER, master.port, master.handler, "bench-master")
    procs, addrs = [], []
    exe = ROOT / ".venv" / "bin" / "mfschunkserver"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "elkfs.cli.mfschunkserver"]
    try:
        for i, host in enumerate(HOSTS):
            d = base / f"cs{i}"
            (d / "hdd").mkdir(parents=True)
            (d / "mfshdd.cfg").write_text(f"{d / 'hdd'}\n")
            port = free_port(host)
            (d / "cs.cfg").write_text(
                f"DATA_PATH={d}\nHDD_CONF_FILENAME={d / 'mfshdd.cfg'}\n"
                f"CSSERV_LISTEN_HOST={host}\nCSSERV_LISTEN_PORT={port}\n"
                f"MASTER_HOST={MASTER}\nMASTER_PORT={master.port}\n")
            procs.append(subprocess.Popen(cmd + ["-f", "-c", str(d / "cs.cfg")],
                                          stderr=open(d / "err.txt", "wb")))
            addrs.append((host, port))
        while len(master.conns) < len(addrs):
            master.event.clear()
            await asyncio.wait_for(master.event.wait(), 20)
        nchunks = args.mib * (1 << 20) // CHUNK
        for cid in range(1, nchunks + 1):
            for a in addrs:
                await master.conns[a].call(m.CsCommand, command=m.CreateChunk(cid, 1))
        data = memoryview(os.urandom(CHUNK))
        piece, window = args.piece_kib << 10, args.window_mib << 20
        total = nchunks * CHUNK

        pids = [p.pid for p in procs]
        t = time.perf_counter()
        cpu = CpuMeter(pids)
        for cid in range(1, nchunks + 1):
            await write_chunk(addrs[0], [addrs[1]], cid, data, piece, window)
        dt = time.perf_counter() - t
        print(f"write goal 2 (client -> cs1 -> cs2): {total / dt / 1e6:7.0f} MB/s "
              f"({total >> 20} MiB in {dt:.2f}s; {cpu.report(dt)})")

        t = time.perf_counter()
        await write_chunk(addrs[0], [addrs[1]], 1, data, piece, window, sync=True)
        dt = time.perf_counter() - t
        print(f"write goal 2, one chunk + fsync:     {CHUNK / dt / 1e6:7.0f} MB/s")

        for i, a in enumerate(addrs):
            conn = await rpc.connect(*a)
            t = time.perf_counter()
            cpu = CpuMeter(pids)
            for cid in range(1, nchunks + 1):
                await read_chunk(conn, cid, CHUNK, piece, window, data if cid == 1 else None)
            dt = time.perf_counter() - t
            print(f"read from cs{i + 1}:                       {total / dt / 1e6:7.0f} MB/s "
                  f"({cpu.report(dt)})")
            conn.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        server.close()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--piece-kib", type=int, default=1024)
    ap.add_argument("--window-mib", type=int, default=16)
    ap.add_argument("--dir", default=None, help="where the chunk files go (default /tmp)")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args))
