"""`make demo` / `make demo-stop`: a local cluster under ./demo that outlives the command.

    python -m elkfs.testing.demo start   # (re)start, data kept between runs
    python -m elkfs.testing.demo stop
"""

from __future__ import annotations

import os
import sys

from .cluster import CS_PORT, MASTER_CLIENT_PORT, MASTER_CS_PORT, Cluster

DEMO_DIR = os.path.join(os.getcwd(), "demo")


def cluster() -> Cluster:
    return Cluster(DEMO_DIR, net="127.0.1", masters=1, chunkservers=3, foreground=False)


def start() -> int:
    c = cluster()
    c.write_configs()
    running = [d for d in c.masters + c.chunkservers if d.pid()]
    if running:
        print(f"demo: restarting ({len(running)} daemons were running; data is kept)")
        c.stop()
    try:
        c.start()
    except Exception as e:
        print(f"demo: start failed: {e}", file=sys.stderr)
        print(f"demo: see the logs under {DEMO_DIR}/*/", file=sys.stderr)
        return 1
    print("ElkFS demo cluster is serving:")
    for d in c.masters:
        print(f"  master       {d.host}:{MASTER_CLIENT_PORT} (clients), {d.host}:{MASTER_CS_PORT} "
              f"(chunkservers)  data+log: {os.path.relpath(d.data_dir)}")
    for d in c.chunkservers:
        print(f"  chunkserver  {d.host}:{CS_PORT}  data+log: {os.path.relpath(d.data_dir)}")
    print("Try it from Python:")
    print(f"  .venv/bin/python -c \"import asyncio; from elkfs.client import Client; "
          f"print(asyncio.run(Client.connect('{c.master_host}')).link.session.hex())\"")
    print("Stop it with: make demo-stop")
    return 0


def stop() -> int:
    c = cluster()
    if not os.path.isdir(DEMO_DIR):
        print("demo: nothing to stop")
        return 0
    c.stop()
    print("demo: stopped (data kept in ./demo; remove it for a fresh cluster)")
    return 0


def main(argv: list[str]) -> int:
    action = argv[1] if len(argv) > 1 else "start"
    if action == "start":
        return start()
    if action == "stop":
        return stop()
    print("usage: python -m elkfs.testing.demo start|stop", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
