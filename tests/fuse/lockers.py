"""Processes that take file locks on a mount, for the lock tests: a real process per
lock owner, so the kernel's owners, closes and deaths are the real ones."""

from __future__ import annotations

import os
import select
import signal
import struct
import subprocess
import sys
import time

from .mounted import is_mounted, unmount, wait_mounted

BIN = os.path.dirname(sys.executable)

# argv: path, how (flock | posix | ofd), type (r | w), start, length (0: to the end)
LOCKER = r'''
import fcntl, os, struct, sys
path, how, kind, start, length = sys.argv[1:6]
fd = os.open(path, os.O_RDWR)
if how == "flock":
    fcntl.flock(fd, fcntl.LOCK_EX if kind == "w" else fcntl.LOCK_SH)
else:
    cmd = fcntl.F_SETLKW if how == "posix" else fcntl.F_OFD_SETLKW
    typ = fcntl.F_WRLCK if kind == "w" else fcntl.F_RDLCK
    fcntl.fcntl(fd, cmd, struct.pack("hhqqi", typ, 0, int(start), int(length), 0))
print("locked", flush=True)
sys.stdin.read()
'''


class Locker:
    """A process that waits for a lock, says so once it holds it, and holds it until
    told (`release`) or killed."""

    def __init__(self, path: str, how: str = "flock", kind: str = "w", start: int = 0,
                 length: int = 0):
        self.proc = subprocess.Popen([sys.executable, "-c", LOCKER, path, how, kind,
                                      str(start), str(length)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pid = self.proc.pid
        self.locked = False

    def wait_locked(self, timeout: float = 30.0) -> bool:
        if self.locked:
            return True
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if ready:
            line = self.proc.stdout.readline()
            self.locked = line.strip() == b"locked"
        return self.locked

    def release(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()


def flock_struct(type: int, start: int = 0, length: int = 0) -> bytes:
    return struct.pack("hhqqi", type, 0, start, length, 0)


def getlk(fd: int, cmd: int, type: int, start: int, length: int) -> tuple:
    """(type, start, length, pid) of F_GETLK / F_OFD_GETLK."""
    import fcntl

    out = fcntl.fcntl(fd, cmd, flock_struct(type, start, length))
    l_type, _, l_start, l_len, l_pid = struct.unpack("hhqqi", out[:struct.calcsize("hhqqi")])
    return l_type, l_start, l_len, l_pid


def start_mount(mc, name: str, options: str = ""):
    """Another `mfsmount -f` of `mc`'s cluster (HA clusters too: by name)."""
    mnt = os.path.join(mc.base_dir, name)
    os.makedirs(mnt, exist_ok=True)
    log = open(os.path.join(mc.base_dir, f"{name}.stderr"), "ab")
    opts = ",".join(o for o in (f"mfslogfile={mc.base_dir}/{name}.log", options) if o)
    proc = subprocess.Popen([os.path.join(BIN, "mfsmount"), mnt, "-f",
                             *mc.cluster.mount_args(), "-o", opts],
                            stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    try:
        wait_mounted(mnt, proc)
    except BaseException:
        stop_mount(mnt, proc)
        raise
    return mnt, proc


def stop_mount(mnt: str, proc: subprocess.Popen) -> None:
    try:
        unmount(mnt)
    finally:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_until(cond, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def is_mounted_path(path: str) -> bool:
    return is_mounted(path)
