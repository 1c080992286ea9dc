"""`make demo` / `make demo-stop`: a local cluster under ./demo that outlives the command.

    python -m elkfs.testing.demo start   # (re)start, data kept between runs
    python -m elkfs.testing.demo stop
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from .cluster import BIN, CS_PORT, MASTER_CLIENT_PORT, MASTER_CS_PORT, Cluster

DEMO_DIR = os.path.join(os.getcwd(), "demo")
MOUNT_DIR = os.path.join(DEMO_DIR, "mnt")
DEMO_ADMIN_PASSWORD = "demo"  # the web page's Step Down (a local demo only)


def is_mounted(path: str) -> bool:
    path = os.path.abspath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == path for line in f)
    except OSError:
        return False


def mount(c: Cluster) -> None:
    """Mount the demo cluster at demo/mnt (mfsmount returns once it is mounted)."""
    os.makedirs(MOUNT_DIR, exist_ok=True)
    r = subprocess.run([os.path.join(BIN, "mfsmount"), MOUNT_DIR, *c.mount_args(),
                        "-o", f"mfslogfile={os.path.join(DEMO_DIR, 'mount.log')}"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0 or not is_mounted(MOUNT_DIR):
        raise RuntimeError(f"mfsmount failed: {r.stderr.strip() or r.stdout.strip()}")


def unmount() -> None:
    """Unmount demo/mnt and wait for the mount process to exit."""
    if not is_mounted(MOUNT_DIR):
        return
    pid = None
    try:
        with open(os.path.join(MOUNT_DIR, ".masterinfo")) as f:
            pid = int(json.load(f)["pid"])
    except (OSError, ValueError, KeyError):
        pass
    r = subprocess.run(["fusermount3", "-u", MOUNT_DIR], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"demo: {MOUNT_DIR} is busy; detaching it lazily", file=sys.stderr)
        subprocess.run(["fusermount3", "-u", "-z", MOUNT_DIR], capture_output=True)
    if pid is not None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)


def cluster() -> Cluster:
    return Cluster(DEMO_DIR, net="127.0.1", masters=3, chunkservers=3, foreground=False,
                   ha=True, master_options={"ADMIN_PASSWORD": DEMO_ADMIN_PASSWORD})


def start() -> int:
    c = cluster()
    c.write_configs()
    running = [d for d in c.masters + c.chunkservers if d.pid()]
    unmount()
    if running:
        print(f"demo: restarting ({len(running)} daemons were running; data is kept)")
        c.stop()
    try:
        c.start()
    except Exception as e:
        print(f"demo: start failed: {e}", file=sys.stderr)
        print(f"demo: see the logs under {DEMO_DIR}/*/", file=sys.stderr)
        return 1
    try:
        leader = c.wait_leader(30)
    except TimeoutError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    rel = os.path.relpath
    print("ElkFS demo cluster is serving:")
    print(f"  DNS          {c.dns_server} (dnsmasq): {c.master_host} has one A record per master")
    for d in c.masters:
        role = "LEADER" if d is leader else "follower"
        print(f"  master       {d.host}:{MASTER_CLIENT_PORT} (clients), {d.host}:{MASTER_CS_PORT} "
              f"(chunkservers, masters)  {role:<8}  data+log: {rel(d.data_dir)}")
    for d in c.chunkservers:
        print(f"  chunkserver  {d.host}:{CS_PORT}  data+log: {os.path.relpath(d.data_dir)}")
    print(f"  AUTH_CODE    in {rel(os.path.join(DEMO_DIR, 'auth_code'))}: every master and "
          f"chunkserver proves it, chunk reads and writes need tokens (docs/security.md)")
    try:
        mount(c)
    except Exception as e:
        print(f"demo: mount failed: {e}", file=sys.stderr)
        print(f"demo: see {os.path.relpath(os.path.join(DEMO_DIR, 'mount.log'))}", file=sys.stderr)
        return 1
    print(f"  mount        {os.path.relpath(MOUNT_DIR)}  (mfsmount; log: "
          f"{os.path.relpath(os.path.join(DEMO_DIR, 'mount.log'))})")
    print("Try it:")
    print(f"  cp -r elkfs {os.path.relpath(MOUNT_DIR)}/ && ls -l {os.path.relpath(MOUNT_DIR)}/elkfs"
          f" && .venv/bin/mfsfileinfo {os.path.relpath(MOUNT_DIR)}/elkfs/__init__.py")
    print(f"  .venv/bin/mfscli -S IM {os.path.relpath(MOUNT_DIR)}     # the masters and who leads")
    print(f"  .venv/bin/mfscli -C SD {os.path.relpath(MOUNT_DIR)}     # the leader steps down")
    print(f"  open {c.web_url(leader)}   # the web interface (any master's works; "
          f"Step Down password: {DEMO_ADMIN_PASSWORD})")
    print(f"  kill -9 $(cat {rel(leader.data_dir)}/.mfsmaster.lock)   # fail over to another master")
    print("Or from Python:")
    print(f"  .venv/bin/python -c \"import asyncio; from elkfs.client import Client; "
          f"print(asyncio.run(Client.connect('{c.master_host}', dns_server='{c.dns_server}'))"
          f".link.session.hex())\"")
    print("Stop it with: make demo-stop")
    return 0


def stop() -> int:
    c = cluster()
    if not os.path.isdir(DEMO_DIR):
        print("demo: nothing to stop")
        return 0
    unmount()
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
