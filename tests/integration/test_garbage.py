"""Garbage on every port closes that one connection; the daemon keeps serving the rest.
A well-formed request that breaks its schema is answered EINVAL instead."""

import errno
import os
import socket

import msgspec
import pytest

from elkfs.client import Client
from elkfs.proto import messages as m
from elkfs.proto.frames import HEADER
from elkfs.testing.cluster import CS_PORT, MASTER_CLIENT_PORT, MASTER_CS_PORT, Cluster

NET = "127.0.6"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("garbage")), net=NET, chunkservers=2)
    c.start()
    yield c
    c.destroy()


def frame(msg_type: int, meta: bytes, data: bytes = b"", meta_len=None, data_len=None) -> bytes:
    return HEADER.pack(msg_type, 0, len(meta) if meta_len is None else meta_len,
                       len(data) if data_len is None else data_len) + meta + data


GARBAGE = {
    "unknown type": frame(9999, b"\x90"),
    "oversized meta length": frame(m.MetaRequest.TYPE, b"", meta_len=0xFFFFFFF0),
    "oversized data length": frame(m.WriteData.TYPE, b"", data_len=0x7FFFFFFF),
    "length not matching schema": frame(m.MetaRequest.TYPE, b"\x01\x02\x03"),
    "wrong field types": frame(m.CsRegister.TYPE, msgspec.msgpack.encode(
        ["x", 2, 3, "four", [], None, None])),
    "random bytes": bytes(range(256)) * 40,
}
PORTS = {"master client port": MASTER_CLIENT_PORT, "master chunkserver port": MASTER_CS_PORT,
         "chunkserver data port": CS_PORT}


def host_for(cluster, port: int) -> str:
    return cluster.chunkservers[0].host if port == CS_PORT else cluster.master_host


def closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


@pytest.mark.parametrize("kind", list(GARBAGE))
@pytest.mark.parametrize("port_name", list(PORTS))
async def test_garbage_closes_only_that_connection(cluster, port_name, kind):
    port = PORTS[port_name]
    host = host_for(cluster, port)
    bystander = await Client.connect(*cluster.master_addr, info="bystander")
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(GARBAGE[kind])
            assert closed_by_peer(sock), f"{port_name} kept a connection that sent {kind}"
        # Everyone else is still served: the open client, and new work end to end.
        data = os.urandom(100_000)
        await bystander.write_file(f"/after-{port}-{kind.replace(' ', '-')}", data)
        assert await bystander.read_file(f"/after-{port}-{kind.replace(' ', '-')}") == data
    finally:
        await bystander.close()


def read_frame(sock: socket.socket):
    sock.settimeout(10)
    buf = b""
    while len(buf) < HEADER.size:
        buf += sock.recv(HEADER.size - len(buf))
    msg_type, _flags, meta_len, data_len = HEADER.unpack(buf)
    body = b""
    while len(body) < meta_len + data_len:
        chunk = sock.recv(meta_len + data_len - len(body))
        assert chunk, "closed"
        body += chunk
    return m.DECODERS[msg_type].decode(body[:meta_len])


SCHEMA_INVALID = frame(m.MetaRequest.TYPE, msgspec.msgpack.encode(
    [7, b"s" * 16, 1, {"op": "no-such-op"}]))


@pytest.mark.parametrize("port_name", list(PORTS))
def test_schema_invalid_request_answered_einval_and_connection_kept(cluster, port_name):
    port = PORTS[port_name]
    with socket.create_connection((host_for(cluster, port), port), timeout=5) as sock:
        for _ in range(2):
            sock.sendall(SCHEMA_INVALID)
            reply = read_frame(sock)
            assert isinstance(reply, m.Error) and reply.req == 7
            assert reply.status == errno.EINVAL


@pytest.mark.parametrize("port_name", list(PORTS))
def test_truncated_frame_then_hangup(cluster, port_name):
    port = PORTS[port_name]
    with socket.create_connection((host_for(cluster, port), port), timeout=5) as sock:
        sock.sendall(frame(m.MetaRequest.TYPE, b"", meta_len=1000)[:-0 or None] + b"\x00" * 10)
        sock.shutdown(socket.SHUT_WR)  # the rest of the frame never comes
        assert closed_by_peer(sock)
    with socket.create_connection((host_for(cluster, port), port), timeout=5):
        pass  # still accepting


def test_bad_input_is_logged(cluster):
    with open(os.path.join(cluster.masters[0].data_dir, "mfsmaster.log")) as f:
        log = f.read()
    assert "bad input" in log and "unknown message type 9999" in log
