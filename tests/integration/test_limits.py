"""Limits on every port of real daemons (docs/security.md, "Limits").

Idle, slow (one byte a second) and huge-header connections are dropped; thousands of idle
connections cost the master and a chunkserver kilobytes each, given back once closed; the
connection and session caps per address hold, each with a clear log line.

The module's cluster shortens only the timeouts these tests wait for (FRAME_TIMEOUT,
the data port's IDLE_CONNECTION_TIMEOUT, EMPTY_SESSION_SUSTAIN_TIME); the caps are the
shipped defaults.
"""

import asyncio
import errno
import os
import socket
import time

import pytest

from elkfs.client import Client
from elkfs.proto import messages as m
from elkfs.proto import rpc
from elkfs.proto.frames import MAX_DATA, MAX_META, pack_header
from elkfs.testing.bigtree import rss_of
from elkfs.testing.cluster import CS_PORT, MASTER_CLIENT_PORT, MASTER_CS_PORT, Cluster

NET = "127.0.41"
FRAME_TIMEOUT = 4
CS_IDLE = 4
DEFAULT_CAP = 256  # MAX_CONNECTIONS_PER_ADDRESS and MAX_SESSIONS_PER_ADDRESS, shipped


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("limits")), net=NET, chunkservers=1,
                master_options={"FRAME_TIMEOUT": FRAME_TIMEOUT,
                                "EMPTY_SESSION_SUSTAIN_TIME": 2},
                cs_options={"FRAME_TIMEOUT": FRAME_TIMEOUT,
                            "IDLE_CONNECTION_TIMEOUT": CS_IDLE})
    c.start()
    c.wait_chunkservers_registered()
    yield c
    c.destroy()


def ports(cluster):
    return {"master client port": (cluster.master_host, MASTER_CLIENT_PORT),
            "master chunkserver port": (cluster.master_host, MASTER_CS_PORT),
            "chunkserver data port": (cluster.chunkservers[0].host, CS_PORT)}


def log_of(d) -> str:
    with open(os.path.join(d.data_dir, f"{os.path.basename(d.binary)}.log")) as f:
        return f.read()


def wait_closed(sock: socket.socket, within_s: float) -> bool:
    """Whether the peer closed `sock` within `within_s` (reading and dropping data)."""
    sock.settimeout(within_s)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


async def still_serves(cluster) -> None:
    client = await Client.connect(*cluster.master_addr, info="bystander")
    try:
        data = os.urandom(70_000)
        name = f"/still-{time.monotonic_ns()}"
        await client.write_file(name, data)
        assert await client.read_file(name) == data
    finally:
        await client.close()


async def test_slow_sender_is_dropped_on_every_port(cluster):
    """One byte a second of a valid frame: dropped once the frame is not whole after
    FRAME_TIMEOUT, though it never stopped sending."""
    frame = pack_header(m.Ping.TYPE, 200, 0) + b"\x91" + b"\x01" * 199

    async def drip(host, port) -> float:
        sock = socket.create_connection((host, port))
        sock.setblocking(False)
        started = time.monotonic()
        try:
            for i in range(len(frame)):
                try:
                    sock.send(frame[i:i + 1])
                except OSError:
                    return time.monotonic() - started
                await asyncio.sleep(1.0)
                try:
                    if sock.recv(1) == b"":
                        return time.monotonic() - started
                except BlockingIOError:
                    pass
                except OSError:
                    return time.monotonic() - started
            return float("inf")
        finally:
            sock.close()

    took = await asyncio.gather(*(drip(*addr) for addr in ports(cluster).values()))
    print(f"slow senders dropped after {', '.join(f'{t:.1f}s' for t in took)}")
    assert all(t < 60 for t in took), took
    assert "a frame not whole after" in log_of(cluster.masters[0])
    assert "a frame not whole after" in log_of(cluster.chunkservers[0])
    await still_serves(cluster)


@pytest.mark.parametrize("port_name", ["master client port", "chunkserver data port"])
def test_idle_connection_is_dropped(cluster, port_name):
    """A connection that never registers (master) or carries no write session (data
    port) and stays silent is closed: after UNREGISTERED_TIMEOUT (10 s, the default) or
    IDLE_CONNECTION_TIMEOUT."""
    with socket.create_connection(ports(cluster)[port_name]) as sock:
        assert wait_closed(sock, 60), f"{port_name} kept an idle connection"


async def test_registered_idle_mount_session_is_kept(cluster):
    """A client with a session that says nothing for longer than UNREGISTERED_TIMEOUT is
    not dropped (no reconnection happened)."""
    client = await Client.connect(*cluster.master_addr, info="quiet")
    try:
        await client.stat("/")
        conn = client.link.conn
        await asyncio.sleep(14)
        assert conn.is_open and client.link.conn is conn
        await client.stat("/")
        assert client.link.reconnects == 0
    finally:
        await client.close()


def rss(d) -> int:
    return rss_of(d.pid())


def open_many(host: str, port: int, count: int, first_source: int) -> list[socket.socket]:
    """`count` connections to host:port from source addresses NET.first_source and up,
    100 from each (under the per-address cap)."""
    socks = []
    for i in range(count):
        s = socket.socket()
        s.bind((f"{NET}.{first_source + i // 100}", 0))
        s.connect((host, port))
        socks.append(s)
    return socks


async def test_idle_connections_cost_kilobytes_and_are_given_back(cluster):
    """3000 idle connections to the master's client port and to the data port: the RSS
    of each daemon grows by kilobytes per connection, and goes back down once they are
    closed. (The figures are printed; the bounds are generous.)"""
    count = 3000
    for d, (host, port), source in ((cluster.masters[0], ports(cluster)["master client port"], 100),
                                    (cluster.chunkservers[0], ports(cluster)["chunkserver data port"], 140)):
        await asyncio.sleep(0.5)
        before = rss(d)
        socks = open_many(host, port, count, source)
        await asyncio.sleep(2)  # accepted
        held = rss(d)
        for s in socks:
            s.close()
        await asyncio.sleep(3)  # closed
        after = rss(d)
        per_conn = (held - before) / count
        print(f"{d.name}: RSS {before / 2**20:.1f} MiB, with {count} idle connections "
              f"{held / 2**20:.1f} MiB ({per_conn / 1024:.1f} KiB each), after closing "
              f"{after / 2**20:.1f} MiB")
        assert per_conn < 64 * 1024, f"{d.name}: {per_conn / 1024:.0f} KiB per connection"
        assert after - before < max(16 << 20, (held - before) // 2), \
            f"{d.name}: {(after - before) / 2**20:.1f} MiB not given back"
    await still_serves(cluster)


async def test_huge_headers_allocate_nothing_near_their_size(cluster):
    """200 connections each announcing the largest frame (4 MiB meta + 8 MiB data) and
    sending one byte of it: before, 12 MiB each (2.4 GB); now a small first piece."""
    count = 200
    for d, addr, source in ((cluster.masters[0], ports(cluster)["master client port"], 180),
                            (cluster.chunkservers[0], ports(cluster)["chunkserver data port"], 185)):
        kind = m.MetaRequest.TYPE if d is cluster.masters[0] else m.WriteData.TYPE
        before = rss(d)
        socks = open_many(*addr, count, source)
        for s in socks:
            s.sendall(pack_header(kind, MAX_META, MAX_DATA) + b"\x94")
        await asyncio.sleep(2)
        held = rss(d)
        grown = held - before
        print(f"{d.name}: {count} huge headers: RSS +{grown / 2**20:.1f} MiB")
        assert grown < 64 << 20, f"{d.name}: {grown / 2**20:.0f} MiB for {count} headers"
        assert all(wait_closed(s, 60) for s in socks)  # and dropped by FRAME_TIMEOUT
        for s in socks:
            s.close()
    await still_serves(cluster)


async def test_connections_per_address_capped(cluster):
    """The connection after MAX_CONNECTIONS_PER_ADDRESS from one address is refused, with
    a log line; the others from that address, and other addresses, are served."""
    host, port = ports(cluster)["master client port"]
    socks = []
    for _ in range(DEFAULT_CAP + 1):
        s = socket.socket()
        s.bind((f"{NET}.200", 0))
        s.connect((host, port))
        socks.append(s)
    assert wait_closed(socks[-1], 5), "the connection over the cap was kept"
    assert not wait_closed(socks[0], 0.5), "a connection under the cap was closed"
    text = log_of(cluster.masters[0])
    assert f"refusing a client connection from {NET}.200: it has {DEFAULT_CAP} open" in text
    for s in socks:
        s.close()
    await still_serves(cluster)


async def test_sessions_per_address_capped_and_empty_ones_expire(cluster):
    """Sessions opened and abandoned from one address stop at MAX_SESSIONS_PER_ADDRESS
    (EUSERS, one log line), and those holding nothing expire after
    EMPTY_SESSION_SUSTAIN_TIME instead of a day: the address may open sessions again."""
    host, port = cluster.master_addr
    conn = await rpc.connect(host, port, name="test", local_host=f"{NET}.220")
    statuses = []
    for _ in range(DEFAULT_CAP + 20):
        reply, _ = await conn.call(m.RegisterSession, session=b"", info="flood",
                                   listing_ttl_ms=0)
        statuses.append(reply.status)
    assert statuses.count(0) == DEFAULT_CAP
    assert statuses[-1] == errno.EUSERS
    conn.close()
    assert "refusing a session from" in log_of(cluster.masters[0])
    # Abandoned and empty: gone within the sustain time and a pass of the session loop.
    deadline = time.monotonic() + 60
    while True:
        conn = await rpc.connect(host, port, name="test", local_host=f"{NET}.220")
        reply, _ = await conn.call(m.RegisterSession, session=b"", info="again",
                                   listing_ttl_ms=0)
        conn.close()
        if reply.status == 0:
            break
        assert time.monotonic() < deadline, "abandoned empty sessions were kept"
        await asyncio.sleep(1)
    await still_serves(cluster)
