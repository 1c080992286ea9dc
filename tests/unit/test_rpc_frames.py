"""The receive path of `rpc.Connection` over real loopback sockets: frames split anyhow
arrive whole and in order; a header announcing a huge frame allocates nothing near its
size; the per-address cap, the frame deadline and the idle deadline close connections.

(In-process servers on 127.0.0.1 ephemeral ports: no daemons.)
"""

import asyncio
import os
import random
import socket

import pytest

from elkfs.proto import messages as m
from elkfs.proto import rpc
from elkfs.proto.frames import MAX_DATA, MAX_META, pack_header


def frame(msg: m.Msg, data: bytes = b"") -> bytes:
    meta = m.encode(msg)
    return pack_header(msg.TYPE, len(meta), len(data)) + meta + data


async def start(limits=None):
    got: list[tuple[m.Msg, bytes | None]] = []
    conns: list[rpc.Connection] = []

    def handler(conn, msg, data):
        got.append((msg, bytes(data) if data is not None else None))

    listener = await rpc.serve("127.0.0.1", 0, handler, "test", limits=limits,
                               on_connect=conns.append)
    return listener, listener.sockets[0].getsockname()[1], got, conns


async def send_in_pieces(port: int, payload: bytes, rng: random.Random) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    pos = 0
    while pos < len(payload):
        n = rng.choice((1, 2, 11, 12, 13, 100, 4096, 70_000, 300_000))
        writer.write(payload[pos:pos + n])
        await writer.drain()
        pos += n
        if rng.random() < 0.3:
            await asyncio.sleep(0.001)  # let the server read what is there
    await asyncio.sleep(0.05)
    writer.close()


@pytest.mark.parametrize("seed", range(4))
async def test_frames_split_anyhow_arrive_whole_and_in_order(seed):
    rng = random.Random(seed)
    listener, port, got, _ = await start()
    sizes = [0, 1, 100, 128 << 10, (128 << 10) + 1, 300_000, 1 << 20, 4 << 20, 50]
    rng.shuffle(sizes)
    sent = [(m.WriteData(i, i * 7), os.urandom(size)) for i, size in enumerate(sizes)]
    sent.append((m.Ping(99), b""))
    payload = b"".join(frame(msg, data) for msg, data in sent)
    await send_in_pieces(port, payload, rng)
    for _ in range(200):
        if len(got) == len(sent):
            break
        await asyncio.sleep(0.02)
    listener.close()
    assert [msg for msg, _ in got] == [msg for msg, _ in sent]
    assert [data or b"" for _, data in got] == [data for _, data in sent]


async def test_huge_header_allocates_nothing_near_its_size():
    listener, port, got, conns = await start()
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    meta = m.encode(m.WriteData(1, 0))
    writer.write(pack_header(m.WriteData.TYPE, MAX_META, MAX_DATA) + meta[:1])
    await writer.drain()
    await asyncio.sleep(0.1)
    (conn,) = conns
    assert conn._big is not None, "the frame's body buffer should exist"
    assert len(conn._big) <= rpc.BIG_FIRST, f"{len(conn._big)} bytes allocated for 1 byte"
    writer.close()
    listener.close()


async def test_per_address_cap_refuses_the_extra_connection():
    listener, port, _, _ = await start(rpc.ConnectionLimits(per_address=3))
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    await asyncio.sleep(0.2)
    assert listener.refused == 1
    assert sum(listener.by_address.values()) == 3
    for s in socks:
        s.close()
    listener.close()


async def test_slow_sender_and_idle_connection_are_closed():
    limits = rpc.ConnectionLimits(frame_s=1.0, idle_s=1.5)
    listener, port, _, _ = await start(limits)
    slow = socket.create_connection(("127.0.0.1", port))
    idle = socket.create_connection(("127.0.0.1", port))
    slow.setblocking(False)
    payload = frame(m.Ping(1))
    closed = False
    for i in range(len(payload) - 1):  # one byte each 0.5 s: never whole in time
        try:
            slow.send(payload[i:i + 1])
        except OSError:
            closed = True
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.5)
    assert listener.timed_out == 2
    assert not listener.conns
    for s in (slow, idle):
        s.close()
    listener.close()


def test_frames_split_anyhow_under_uvloop():
    """The daemons run on uvloop, whose buffered reads differ from asyncio's."""
    uvloop = pytest.importorskip("uvloop")

    async def both():
        await test_frames_split_anyhow_arrive_whole_and_in_order(7)
        await test_huge_header_allocates_nothing_near_its_size()

    uvloop.run(both())


def test_closed_connections_are_freed_without_the_garbage_collector():
    """The master freezes the collector's view now and then (elkfs/master/gcpolicy.py):
    that is safe only if a closed connection holds no reference cycle."""
    import gc
    import weakref

    uvloop = pytest.importorskip("uvloop")

    async def run():
        refs = []
        listener = await rpc.serve("127.0.0.1", 0, lambda c, msg, d: c.send(m.Ok(msg.req)),
                                   "test", on_connect=lambda c: refs.append(weakref.ref(c)))
        port = listener.sockets[0].getsockname()[1]
        for _ in range(20):
            conn = await rpc.connect("127.0.0.1", port)
            await conn.call(m.Ping)
            refs.append(weakref.ref(conn))
            conn.close()
            del conn
        await asyncio.sleep(0.3)
        listener.close()
        return refs

    gc.disable()
    try:
        refs = uvloop.run(run())
        assert len(refs) == 40 and all(r() is None for r in refs)
    finally:
        gc.enable()
