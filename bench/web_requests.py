"""What the web port costs per request: sequential `GET /api/status` on one keep-alive
connection to a real master (one master, one chunkserver on 127.0.198.x). Prints
requests per second and microseconds per request, three rounds; not a test. Run it on
the branch before and after a change to the web port (`elkfs/web/limits.py`).

    /work/bin/nsrun NAME .venv/bin/python -m bench.web_requests
"""

from __future__ import annotations

import re
import shutil
import socket
import tempfile
import time

from elkfs.testing.cluster import MASTER_HTTP_PORT, Cluster

NET = "127.0.198"
REQUEST = b"GET /api/status HTTP/1.1\r\nHost: master\r\n\r\n"
ROUNDS = 3
PER_ROUND = 3000


def one(sock: socket.socket) -> None:
    sock.sendall(REQUEST)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(65536)
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    body = head.split(b"\r\n\r\n", 1)[1]
    while len(body) < length:
        body += sock.recv(65536)


def main() -> None:
    base = tempfile.mkdtemp(prefix="elkfs-bench-web-")
    cluster = Cluster(base, net=NET, masters=1, chunkservers=1)
    cluster.start()
    try:
        sock = socket.create_connection((cluster.masters[0].host, MASTER_HTTP_PORT))
        for _ in range(200):  # warm up
            one(sock)
        for _ in range(ROUNDS):
            started = time.perf_counter()
            for _ in range(PER_ROUND):
                one(sock)
            took = time.perf_counter() - started
            print(f"{PER_ROUND / took:6.0f} requests/s  {took / PER_ROUND * 1e6:5.0f} us/request")
        sock.close()
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
