"""A real cluster plus a real `mfsmount` of it: what the FUSE tests and benchmarks use.

    with MountedCluster("/tmp/x", net="127.0.31") as mc:
        open(os.path.join(mc.mnt, "a"), "w").write("hello")

Teardown always unmounts (lazily if something still holds the mount), kills the mount
process if it is still alive, and stops the daemons.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from elkfs.testing.cluster import Cluster

BIN = os.path.dirname(sys.executable)


def is_mounted(path: str) -> bool:
    path = os.path.abspath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def wait_mounted(path: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    """Wait until a foreground `mfsmount` process has mounted `path`."""
    deadline = time.monotonic() + timeout
    while not is_mounted(path):
        assert proc.poll() is None, f"mfsmount exited with {proc.returncode}"
        assert time.monotonic() < deadline, "not mounted in time"
        time.sleep(0.02)


def unmount(path: str, pid: int | None = None, timeout: float = 20.0) -> None:
    if is_mounted(path):
        r = subprocess.run(["fusermount3", "-u", path], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True)
    if pid:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class MountedCluster:
    def __init__(self, base_dir: str, net: str, chunkservers: int = 3,
                 mount_options: str = "", goal: int | None = None, **cluster_kw):
        self.base_dir = base_dir
        self.cluster = Cluster(os.path.join(base_dir, "cluster"), net=net,
                               chunkservers=chunkservers, **cluster_kw)
        self.mnt = os.path.join(base_dir, "mnt")
        self.mount_options = mount_options
        self.goal = goal
        self.pid: int | None = None

    def start(self) -> "MountedCluster":
        shutil.rmtree(self.base_dir, ignore_errors=True)
        os.makedirs(self.mnt)
        try:
            self.cluster.start()
            self.mount()
            if self.goal is not None:
                subprocess.run([os.path.join(BIN, "mfssetgoal"), str(self.goal), self.mnt],
                               check=True, capture_output=True)
        except BaseException:
            self.stop()
            raise
        return self

    def mount(self, extra: str = "") -> None:
        opts = ",".join(o for o in (f"mfslogfile={self.base_dir}/mount.log",
                                    self.mount_options, extra) if o)
        subprocess.run([os.path.join(BIN, "mfsmount"), self.mnt, *self.cluster.mount_args(),
                        "-o", opts], check=True, capture_output=True, timeout=60)
        with open(os.path.join(self.mnt, ".masterinfo")) as f:
            self.pid = json.load(f)["pid"]

    def unmount(self) -> None:
        unmount(self.mnt, self.pid)
        self.pid = None

    def remount(self, extra: str = "") -> None:
        self.unmount()
        self.mount(extra)

    def stop(self) -> None:
        try:
            self.unmount()
        finally:
            self.cluster.stop()

    def __enter__(self) -> "MountedCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
