"""Helpers of the FUSE tests: calls Python lacks (renameat2, utimensat with UTIME_OMIT,
getdents64) and running code as another user."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import struct
import subprocess
import sys
import threading

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


def renameat2(src: str, dst: str, flags: int) -> None:
    r = _libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst),
                        ctypes.c_uint(flags))
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), src)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path: str, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
    """Times as (sec, nsec); nsec may be UTIME_NOW or UTIME_OMIT."""
    ts = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    if _libc.utimensat(AT_FDCWD, os.fsencode(path), ts, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)


NOBODY = 65534


def err(fn, *args, **kw) -> int:
    """The errno `fn(*args)` fails with (an AssertionError if it does not fail)."""
    try:
        fn(*args, **kw)
    except OSError as e:
        return e.errno
    raise AssertionError(f"{fn.__name__}{args} did not fail")


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def as_user(code: str, uid: int = NOBODY, gid: int = NOBODY, timeout: float = 60) -> str:
    """Run Python `code` as another user (setpriv); returns stdout, raises on failure."""
    r = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                        sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=timeout, cwd="/")
    if r.returncode != 0:
        raise AssertionError(f"as uid {uid}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r.stdout


def getdents_batches(path: str) -> list[list[tuple[bytes, int, int]]]:
    """The entries of `path` exactly as getdents64 returns them with a 64 KiB buffer, one
    list per call: (name, d_ino, d_type)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    batches = []
    try:
        buf = ctypes.create_string_buffer(1 << 16)
        while True:
            n = _libc.getdents64(fd, buf, len(buf))
            if n < 0:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e), path)
            if n == 0:
                return batches
            data = buf.raw[:n]
            batch = []
            off = 0
            while off < n:  # struct linux_dirent64 {u64 ino; s64 off; u16 reclen; u8 type; name}
                ino, _, reclen, dtype = struct.unpack_from("=QqHB", data, off)
                batch.append((data[off + 19:off + reclen].split(b"\0", 1)[0], ino, dtype))
                off += reclen
            batches.append(batch)
    finally:
        os.close(fd)


def done_while_stopped(cluster, daemons, fn, wait: float) -> bool:
    """Run `fn` in a thread while `daemons` are stopped (SIGSTOP); True if it finished
    within `wait` seconds, that is without them. It is waited for after they go on."""
    for daemon in daemons:
        cluster.signal(daemon, signal.SIGSTOP)
    try:
        t = threading.Thread(target=fn)
        t.start()
        t.join(wait)
        done = not t.is_alive()
    finally:
        for daemon in daemons:
            cluster.signal(daemon, signal.SIGCONT)
    t.join(60)
    return done
