"""Real mfschunkserver processes on loopback aliases, driven by a tiny fake master."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from elkfs.chunkserver.store import BLOCK, HEADER_SIZE, chunk_name
from elkfs.proto import messages as m
from elkfs.proto import rpc
from elkfs.proto.errors import CRC_ERROR, NO_CHUNK, WRONG_VERSION, FsError
from elkfs.proto.frames import MAX_DATA, MAX_META, pack_header

ROOT = Path(__file__).resolve().parents[2]
MASTER_HOST = "127.0.11.10"
CS_HOSTS = ["127.0.11.20", "127.0.11.21", "127.0.11.22"]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def chunkserver_cmd() -> list[str]:
    exe = ROOT / ".venv" / "bin" / "mfschunkserver"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "elkfs.cli.mfschunkserver"]


class FakeMaster:
    """Accepts CsRegister, records CsSpace / CsChunkDamaged, sends CsCommands."""

    def __init__(self):
        self.port = free_port(MASTER_HOST)
        self.servers: dict[tuple[str, int], tuple[rpc.Connection, m.CsRegister]] = {}
        self.registrations: list[m.CsRegister] = []
        self.spaces: list[m.CsSpace] = []
        self.damaged: list[m.CsChunkDamaged] = []
        self.made: list[tuple[tuple[str, int], int, int]] = []  # (server, chunk, version)
        self.deleted: list[tuple[int, int]] = []  # (chunk, version) deleted on command
        self.written: list[tuple[tuple[str, int], int, int]] = []  # sessions that ended well
        self.changed = asyncio.Event()
        self.server = None

    async def start(self):
        self.server = await rpc.serve(MASTER_HOST, self.port, self.handler, "fake-master")

    def handler(self, conn, msg, data):
        if isinstance(msg, m.CsRegister):
            self.servers[(msg.host, msg.port)] = (conn, msg)
            self.registrations.append(msg)
            conn.send(m.Ok(msg.req))
        elif isinstance(msg, m.CsSpace):
            self.spaces.append(msg)
        elif isinstance(msg, m.CsChunkDamaged):
            self.damaged.append(msg)
        elif isinstance(msg, m.CsChunkMade):
            server = next(a for a, (c, _) in self.servers.items() if c is conn)
            self.made.append((server, msg.chunk_id, msg.version))
        elif isinstance(msg, m.CsChunkDeleted):
            self.deleted.append((msg.chunk_id, msg.version))
        elif isinstance(msg, m.CsWriteDone):
            server = next(a for a, (c, _) in self.servers.items() if c is conn)
            self.written.append((server, msg.chunk_id, msg.version))
        else:
            raise AssertionError(f"unexpected {msg!r}")
        self.changed.set()

    async def wait_for(self, predicate, timeout=15.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            self.changed.clear()
            left = deadline - time.monotonic()
            assert left > 0, "timed out waiting for the chunkservers"
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    async def command(self, addr, cmd):
        conn = self.servers[addr][0]
        return await conn.call(m.CsCommand, command=cmd, timeout=30)

    def close(self):
        for conn, _ in self.servers.values():
            conn.close()
        self.server.close()


class ChunkserverProc:
    def __init__(self, base: Path, index: int, master_port: int):
        self.host = CS_HOSTS[index]
        self.port = free_port(self.host)
        self.dir = base / f"cs{index}"
        self.hdd = self.dir / "hdd"
        self.hdd.mkdir(parents=True, exist_ok=True)
        (self.dir / "mfshdd.cfg").write_text(f"# test disk\n{self.hdd}\n")
        self.cfg = self.dir / "mfschunkserver.cfg"
        self.cfg.write_text(
            f"DATA_PATH = {self.dir}\n"
            f"HDD_CONF_FILENAME = {self.dir / 'mfshdd.cfg'}\n"
            f"CSSERV_LISTEN_HOST = {self.host}\n"
            f"CSSERV_LISTEN_PORT = {self.port}\n"
            f"MASTER_HOST = {MASTER_HOST}\n"
            f"MASTER_PORT = {master_port}\n"
            f"MASTER_RECONNECTION_DELAY = 0.2\n")
        self.proc: subprocess.Popen | None = None

    @property
    def addr(self):
        return (self.host, self.port)

    def start(self):
        self.out = open(self.dir / "stderr.txt", "ab")
        self.proc = subprocess.Popen(chunkserver_cmd() + ["-f", "-c", str(self.cfg)],
                                     stdout=self.out, stderr=subprocess.STDOUT, cwd=ROOT)

    def stop(self, sig_kill=False):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill() if sig_kill else self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()
        self.proc = None

    def chunk_path(self, chunk_id, version):
        return self.hdd / f"{chunk_id & 0xFF:02X}" / chunk_name(chunk_id, version)


@contextlib.asynccontextmanager
async def cluster(tmp_path, n=3):
    master = FakeMaster()
    await master.start()
    servers = [ChunkserverProc(tmp_path, i, master.port) for i in range(n)]
    try:
        for cs in servers:
            cs.start()
        await master.wait_for(lambda: all(cs.addr in master.servers for cs in servers))
        yield master, servers
    finally:
        for cs in servers:
            cs.stop()
        master.close()


async def write_chain(addr, chain, chunk_id, version, pieces, sync=True):
    conn = await rpc.connect(*addr)
    try:
        await conn.call(m.WriteInit, chunk_id=chunk_id, version=version, chain=chain,
                        timeout=10)
        futs = [conn.start_call(m.WriteData(conn.next_req(), off), data)
                for off, data in pieces]
        replies = await asyncio.wait_for(asyncio.gather(*futs), 30)
        statuses = [r.status for r, _ in replies]
        await conn.call(m.WriteEnd, sync=sync, timeout=30)
        return statuses
    finally:
        conn.close()


async def read(addr, chunk_id, version, offset, size):
    conn = await rpc.connect(*addr)
    try:
        reply, data = await conn.call(m.ReadReq, chunk_id=chunk_id, version=version,
                                      offset=offset, size=size, timeout=10)
        return reply.status, bytes(data) if data is not None else b""
    finally:
        conn.close()


async def test_register_chain_write_read_and_commands(tmp_path):
    async with cluster(tmp_path) as (master, (cs0, cs1, cs2)):
        reg = master.servers[cs0.addr][1]
        assert len(reg.cs_id) == 16 and reg.chunks == [] and reg.total_bytes > 0
        await master.wait_for(lambda: len(master.spaces) >= 3)

        for cs in (cs0, cs1):
            await master.command(cs.addr, m.CreateChunk(0x501, 1))
        with pytest.raises(FsError) as e:
            await master.command(cs0.addr, m.CreateChunk(0x501, 1))
        assert e.value.status == errno.EEXIST

        rnd = os.urandom(5 << 20)
        pieces = [(i << 20, rnd[i << 20:(i + 1) << 20]) for i in range(5)]
        pieces.append((7 * BLOCK + 3, b"tail piece, unaligned"))
        statuses = await write_chain(cs0.addr, [cs1.addr], 0x501, 1, pieces)
        assert statuses == [0] * len(pieces)
        # each copy of the chain tells the master itself that the session ended well
        await master.wait_for(lambda: {(cs0.addr, 0x501, 1), (cs1.addr, 0x501, 1)}
                              <= set(master.written))
        model = bytearray(rnd)
        model[7 * BLOCK + 3:7 * BLOCK + 24] = b"tail piece, unaligned"
        for cs in (cs0, cs1):
            status, data = await read(cs.addr, 0x501, 1, 0, 5 << 20)
            assert status == 0 and data == bytes(model)
            status, data = await read(cs.addr, 0x501, 1, (5 << 20) - 10, 100)
            assert status == 0 and data == bytes(model[-10:]) + bytes(90)
            conn = await rpc.connect(*cs.addr)
            info, _ = await conn.call(m.ChunkInfoReq, chunk_id=0x501)
            assert (info.status, info.version, info.length) == (0, 1, 5 << 20)
            info, _ = await conn.call(m.ChunkInfoReq, chunk_id=0x999)
            assert info.status == NO_CHUNK
            conn.close()
        status, _ = await read(cs0.addr, 0x501, 2, 0, 10)
        assert status == WRONG_VERSION
        status, _ = await read(cs0.addr, 0x501, 1, 0, MAX_DATA + 1)
        assert status == errno.EINVAL

        # a write session to a wrong version, and to a chain with a dead hop
        conn = await rpc.connect(*cs0.addr)
        with pytest.raises(FsError) as e:
            await conn.call(m.WriteInit, chunk_id=0x501, version=9, chain=[])
        assert e.value.status == WRONG_VERSION
        with pytest.raises(FsError) as e:
            await conn.call(m.WriteInit, chunk_id=0x501, version=1, chain=[cs2.addr])
        assert e.value.status == NO_CHUNK  # cs2 has no copy
        dead = (CS_HOSTS[2], free_port(CS_HOSTS[2]))
        with pytest.raises(FsError) as e:
            await conn.call(m.WriteInit, chunk_id=0x501, version=1, chain=[dead])
        assert e.value.status == errno.ECONNREFUSED
        conn.close()

        # version bump on both copies, replication to the third server
        for cs in (cs0, cs1):
            await master.command(cs.addr, m.SetChunkVersion(0x501, 1, 2))
        await master.command(cs2.addr, m.ReplicateChunk(0x501, 2, [cs1.addr]))
        assert (await read(cs2.addr, 0x501, 2, 0, 5 << 20)) == (0, bytes(model))
        with pytest.raises(FsError) as e:
            await master.command(cs2.addr, m.ReplicateChunk(0x502, 1, [cs0.addr, cs1.addr]))
        assert e.value.status == NO_CHUNK

        # duplicate, truncate, delete
        await master.command(cs2.addr, m.DuplicateChunk(0x501, 2, 0x601, 1))
        await master.command(cs2.addr, m.TruncateChunk(0x601, 1, 2, 1000))
        assert (await read(cs2.addr, 0x601, 2, 0, 2000)) == (0, bytes(model[:1000]) + bytes(1000))
        await master.command(cs2.addr, m.DeleteChunk(0x601, 2))
        assert (await read(cs2.addr, 0x601, 2, 0, 10))[0] == NO_CHUNK
        with pytest.raises(FsError) as e:
            await master.command(cs2.addr, m.DeleteChunk(0x501, 1))
        assert e.value.status == WRONG_VERSION

        # a corrupted copy: CRC_ERROR to the reader, CsChunkDamaged to the master
        path = cs2.chunk_path(0x501, 2)
        with open(path, "r+b") as f:
            f.seek(HEADER_SIZE + 3 * BLOCK + 17)
            b = f.read(1)
            f.seek(HEADER_SIZE + 3 * BLOCK + 17)
            f.write(bytes([b[0] ^ 1]))
        assert (await read(cs2.addr, 0x501, 2, 3 * BLOCK, 100))[0] == CRC_ERROR
        await master.wait_for(lambda: master.damaged)
        assert master.damaged[0] == m.CsChunkDamaged(0x501, 2)
        assert (await read(cs2.addr, 0x501, 2, 0, BLOCK)) == (0, bytes(model[:BLOCK]))

        # the master drops the link: the chunkserver registers again with its chunks
        cs_id = master.servers[cs1.addr][1].cs_id
        before = len(master.registrations)
        master.servers[cs1.addr][0].close()
        await master.wait_for(lambda: len(master.registrations) > before)
        again = master.registrations[-1]
        assert again.cs_id == cs_id and again.chunks == [(0x501, 2)]

        # a restarted chunkserver keeps its id and finds its chunks
        cs_id0 = master.servers[cs0.addr][1].cs_id
        cs0.stop()
        before = len(master.registrations)
        cs0.start()
        await master.wait_for(lambda: len(master.registrations) > before)
        again = master.registrations[-1]
        assert (again.host, again.port) == cs0.addr
        assert again.cs_id == cs_id0 and again.chunks == [(0x501, 2)]
        assert (await read(cs0.addr, 0x501, 2, 0, 5 << 20)) == (0, bytes(model))


async def _closed_by_peer(host, port, payload: bytes, shut_wr=False) -> bool:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(payload)
        await writer.drain()
        if shut_wr:
            writer.write_eof()
        data = await asyncio.wait_for(reader.read(100), 5)
        return data == b""
    finally:
        writer.close()


async def write_once(addr, chain, chunk_id, version, offset, data, create=False, sync=False):
    """One WriteOnce; returns its status (0 or the error's)."""
    conn = await rpc.connect(*addr)
    try:
        await conn.call(m.WriteOnce, data=data, chunk_id=chunk_id, version=version,
                        chain=chain, offset=offset, create=create, sync=sync, timeout=30)
        return 0
    except FsError as e:
        return e.status
    finally:
        conn.close()


async def test_write_once_sessions(tmp_path):
    """A whole session in one message (WriteOnce) down a chain: it makes the chunk when
    asked (each chunkserver reports it made it), writes every copy, and answers with the
    first error of the chain."""
    async with cluster(tmp_path) as (master, (cs0, cs1, cs2)):
        data = os.urandom(5000)
        assert await write_once(cs0.addr, [cs1.addr], 0x801, 1, 100, data, create=True) == 0
        for cs in (cs0, cs1):
            assert await read(cs.addr, 0x801, 1, 0, 5100) == (0, bytes(100) + data)
        assert (await read(cs2.addr, 0x801, 1, 0, 10))[0] == NO_CHUNK
        await master.wait_for(lambda: len(master.made) == 2)
        assert sorted(master.made) == sorted([(cs0.addr, 0x801, 1), (cs1.addr, 0x801, 1)])
        # an existing chunk, with sync, through all three (cs2 has no copy: its error)
        assert await write_once(cs0.addr, [cs1.addr], 0x801, 1, 0, b"head", sync=True) == 0
        assert (await read(cs1.addr, 0x801, 1, 0, 4)) == (0, b"head")
        assert await write_once(cs0.addr, [cs1.addr, cs2.addr], 0x801, 1, 0, b"x") == NO_CHUNK
        assert await write_once(cs0.addr, [], 0x801, 7, 0, b"x") == WRONG_VERSION
        dead = (CS_HOSTS[2], free_port(CS_HOSTS[2]))
        assert await write_once(cs0.addr, [dead], 0x801, 1, 0, b"x") == errno.ECONNREFUSED
        # the chain connection is reused after a WriteOnce, also after an error answer
        assert await write_once(cs1.addr, [cs2.addr], 0x801, 1, 0, b"y") == NO_CHUNK
        assert await write_once(cs1.addr, [cs2.addr], 0x802, 1, 0, b"z", create=True) == 0
        assert (await read(cs2.addr, 0x802, 1, 0, 1)) == (0, b"z")


async def test_client_write_once_fans_out_small_data(tmp_path):
    """The client sends a small WriteOnce to every copy at once (no chain): each makes
    and writes its copy; a copy that cannot be reached fails the session, named in the
    error, while the others still have the data. Larger data goes down the chain."""
    from elkfs.client.chunkio import FAN_OUT_MAX, ChunkWriter, ConnectionPool

    async with cluster(tmp_path) as (master, (cs0, cs1, cs2)):
        pool = ConnectionPool()
        data = os.urandom(3000)
        await ChunkWriter([cs0.addr, cs1.addr, cs2.addr], 0x901, 1, pool,
                          create=True).write_once(10, data, sync=True)
        for cs in (cs0, cs1, cs2):
            assert await read(cs.addr, 0x901, 1, 0, 3010) == (0, bytes(10) + data)
        await master.wait_for(lambda: len(master.made) == 3)
        # each copy got its own message: nothing was passed down a chain
        assert all(len(pool.idle[cs.addr]) == 1 for cs in (cs0, cs1, cs2))
        dead = (CS_HOSTS[2], free_port(CS_HOSTS[2]))
        with pytest.raises(FsError) as e:
            await ChunkWriter([cs0.addr, dead, cs1.addr], 0x902, 1, pool,
                              create=True).write_once(0, b"abc", sync=False)
        assert f"{dead[0]}:{dead[1]}" in e.value.detail
        for cs in (cs0, cs1):
            assert await read(cs.addr, 0x902, 1, 0, 3) == (0, b"abc")
        with pytest.raises(FsError) as e:  # a copy's refusal, with its address
            await ChunkWriter([cs0.addr, cs2.addr], 0x902, 1, pool).write_once(0, b"x", False)
        assert e.value.status == NO_CHUNK and f"{cs2.addr[0]}:{cs2.addr[1]}" in e.value.detail
        # above FAN_OUT_MAX: one message down the chain (the head forwards it)
        big = os.urandom(FAN_OUT_MAX + 1)
        await ChunkWriter([cs1.addr, cs2.addr], 0x903, 1, pool,
                          create=True).write_once(0, big, sync=False)
        for cs in (cs1, cs2):
            assert await read(cs.addr, 0x903, 1, 0, len(big)) == (0, big)
        pool.close()


async def test_garbage_on_data_port(tmp_path):
    async with cluster(tmp_path, n=1) as (master, (cs0,)):
        await master.command(cs0.addr, m.CreateChunk(0x77, 3))
        assert await write_chain(cs0.addr, [], 0x77, 3, [(0, b"hello")]) == [0]
        good_meta = m.encode(m.ReadReq(1, 0x77, 3, 0, 5))
        bad_meta = msgspec.msgpack.encode(["x", "y"])
        cases = {
            "meta length over the limit": struct.pack(">HHII", 60, 0, MAX_META + 1, 0),
            "data length over the limit": struct.pack(">HHII", 63, 0, 10, MAX_DATA + 1),
            "unknown type": pack_header(999, len(good_meta)) + good_meta,
            "schema-invalid meta": pack_header(60, len(bad_meta)) + bad_meta,
            "not msgpack": pack_header(60, 4) + b"\xc1\xc1\xc1\xc1",
            "master message on the data port": pack_header(41, 4) + m.encode(
                m.CsSpace(1, 2, 3))[:4],
            "wrong port message": (lambda meta: pack_header(41, len(meta)) + meta)(
                m.encode(m.CsSpace(1, 2, 3))),
        }
        for name, payload in cases.items():
            assert await _closed_by_peer(*cs0.addr, payload), name
        # a truncated frame, then EOF
        assert await _closed_by_peer(*cs0.addr, pack_header(60, 100) + good_meta[:5], True)
        # garbage bytes
        assert await _closed_by_peer(*cs0.addr, os.urandom(64) + b"\xff" * 12)
        assert cs0.proc.poll() is None
        # a connection that stays healthy while others misbehave, and fresh ones
        conn = await rpc.connect(*cs0.addr)
        for _ in range(3):
            reply, data = await conn.call(m.ReadReq, chunk_id=0x77, version=3, offset=0,
                                          size=5)
            assert reply.status == 0 and bytes(data) == b"hello"
        conn.close()
        assert (await read(cs0.addr, 0x77, 3, 0, 5)) == (0, b"hello")
