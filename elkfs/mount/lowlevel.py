"""The parts of libfuse's low-level API that pyfuse3 leaves out: file locks (getlk, setlk,
flock), fallocate, the lock owner of FLUSH, and plain READDIR.

Why this exists
---------------
Without `getlk`/`setlk`/`flock` handlers libfuse does not ask the kernel for remote
locks, and the kernel keeps every lock inside the one mount: two clients would both get
any lock. pyfuse3 (3.5) has no such handlers, and its `flush` drops the lock owner, which
is how the kernel says "this process closed the file: release its POSIX locks" (it sends
no unlock of its own: `fuse_setlk` returns early for `FL_CLOSE_POSIX`).

How
---
`fuse_session_new` copies the operations table into the session, and libfuse's INIT
(processed later, from `pyfuse3.main`) asks the kernel for POSIX and flock locks when
that copy has `getlk`+`setlk` and `flock`. So right after `pyfuse3.init`, `install`
finds the session (pyfuse3's module variable, through its ELF symbol table), finds the
copy of pyfuse3's table inside it (by its bytes: pyfuse3's static table is still there),
and writes six entries: `getlk`, `setlk`, `flock`, `fallocate`, `flush` and `readdir`.
Each is a ctypes callback that starts a task on the running event loop and returns at
once; the task answers with `fuse_reply_*`, as pyfuse3's own handlers do. Blocking locks
register an interrupt callback, so a signal (or the waiting process being killed)
cancels the wait and the request is answered EINTR.

Layouts (libfuse 3.14, x86-64, checked against the C headers): `fuse_lowlevel_ops` is 44
pointers; `fuse_file_info.fh` at byte 16, `.lock_owner` at 24; `struct flock` is
(short type, short whence, off_t start, off_t len, pid_t pid).

pyfuse3 answers READDIRPLUS only, and so has the kernel send it for every listing
request. With a `readdir` in the table, INIT also asks for FUSE_CAP_READDIRPLUS_AUTO: the
kernel then sends plain READDIR where the caller does not look at what it lists (see
`dirents.py`), and the mount answers it with names, inode numbers and types only.

`install` returns False (and the mount keeps local-only locks and READDIRPLUS only) when
anything is not as expected: a stripped pyfuse3, another layout.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import struct

import pyfuse3

log = logging.getLogger("elkfs.mount")

OPS_POINTERS = 44
SLOT_INIT, SLOT_FLUSH, SLOT_READDIR = 0, 17, 21
SLOT_GETLK, SLOT_SETLK, SLOT_FLOCK, SLOT_FALLOCATE = 31, 32, 39, 40
CONN_CAPABLE, CONN_WANT = 20, 24  # offsets in struct fuse_conn_info
FUSE_CAP_DONT_MASK = 1 << 6
FUSE_CAP_AUTO_INVAL_DATA = 1 << 12
FUSE_CAP_READDIRPLUS, FUSE_CAP_READDIRPLUS_AUTO = 1 << 13, 1 << 14
SESSION_SEARCH = 512  # the table sits near the start of `struct fuse_session`

F_RDLCK, F_WRLCK, F_UNLCK = 0, 1, 2
LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN = 1, 2, 4, 8


class FileInfo(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_int), ("_bits", ctypes.c_uint8 * 12),
                ("fh", ctypes.c_uint64), ("lock_owner", ctypes.c_uint64),
                ("poll_events", ctypes.c_uint32)]


class Flock(ctypes.Structure):
    _fields_ = [("l_type", ctypes.c_short), ("l_whence", ctypes.c_short),
                ("l_start", ctypes.c_int64), ("l_len", ctypes.c_int64),
                ("l_pid", ctypes.c_int32)]


assert ctypes.sizeof(FileInfo) == 40 and FileInfo.fh.offset == 16
assert ctypes.sizeof(Flock) == 32 and Flock.l_pid.offset == 24

_req = ctypes.c_void_p
_fi = ctypes.POINTER(FileInfo)
FLUSH = ctypes.CFUNCTYPE(None, _req, ctypes.c_uint64, _fi)
GETLK = ctypes.CFUNCTYPE(None, _req, ctypes.c_uint64, _fi, ctypes.POINTER(Flock))
SETLK = ctypes.CFUNCTYPE(None, _req, ctypes.c_uint64, _fi, ctypes.POINTER(Flock), ctypes.c_int)
FLOCK = ctypes.CFUNCTYPE(None, _req, ctypes.c_uint64, _fi, ctypes.c_int)
FALLOCATE = ctypes.CFUNCTYPE(None, _req, ctypes.c_uint64, ctypes.c_int, ctypes.c_int64,
                             ctypes.c_int64, _fi)
READDIR = ctypes.CFUNCTYPE(None, _req, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_int64, _fi)
INTERRUPT = ctypes.CFUNCTYPE(None, _req, ctypes.c_void_p)
INIT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
# pyfuse3's own init, called with the GIL held (it is Cython code that needs it).
PYFUSE3_INIT = ctypes.PYFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)

_lib = None


def _libfuse():
    global _lib
    if _lib is None:
        lib = ctypes.CDLL("libfuse3.so.3")
        lib.fuse_reply_err.argtypes = [_req, ctypes.c_int]
        lib.fuse_reply_lock.argtypes = [_req, ctypes.POINTER(Flock)]
        lib.fuse_reply_buf.argtypes = [_req, ctypes.c_char_p, ctypes.c_size_t]
        lib.fuse_req_interrupt_func.argtypes = [_req, INTERRUPT, ctypes.c_void_p]
        _lib = lib
    return _lib


# ---------------------------------------------------------------- finding the session


def _elf_symbols(path: str, wanted: set[str]) -> dict[str, int]:
    """Values of `wanted` symbols from an ELF64 file's .symtab (static symbols too)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return {}
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    found: dict[str, int] = {}
    for sh in sections:
        if sh[1] != 2:  # SHT_SYMTAB
            continue
        strtab = sections[sh[6]]
        str_off = strtab[4]
        for pos in range(sh[4], sh[4] + sh[5], 24):
            name_off, _info, _other, _shndx, value, _size = struct.unpack_from(
                "<IBBHQQ", data, pos)
            end = data.index(b"\0", str_off + name_off)
            name = data[str_off + name_off:end].decode("ascii", "replace")
            if name in wanted:
                found[name] = value
    return found


def _load_bias(path: str) -> int | None:
    real = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == real and int(parts[2], 16) == 0:
                return int(parts[0].split("-")[0], 16)
    return None


def _session_ops_address() -> int | None:
    """The address of the session's copy of the operations table, or None."""
    path = pyfuse3.__file__
    names = {"__pyx_v_7pyfuse3_session", "__pyx_v_7pyfuse3_fuse_ops"}
    syms = _elf_symbols(path, names)
    bias = _load_bias(path)
    if len(syms) != 2 or bias is None:
        log.warning("file locks stay local: pyfuse3's symbols not found in %s", path)
        return None
    session = ctypes.c_void_p.from_address(bias + syms["__pyx_v_7pyfuse3_session"]).value
    if not session:
        return None
    table = ctypes.string_at(bias + syms["__pyx_v_7pyfuse3_fuse_ops"], OPS_POINTERS * 8)
    if not any(table):
        return None
    area = ctypes.string_at(session, SESSION_SEARCH + len(table))
    at = area.find(table)
    if at < 0 or at % 8 or area.find(table, at + 1) >= 0:
        log.warning("file locks stay local: libfuse's session layout is not as expected")
        return None
    return session + at


# ---------------------------------------------------------------- handlers


class LowLevel:
    """The callbacks of one mount; `ops` is the `ElkOperations` doing the work."""

    def __init__(self, ops):
        self.ops = ops
        self.lib = _libfuse()
        self._callbacks = [FLUSH(self._flush), GETLK(self._getlk), SETLK(self._setlk),
                           FLOCK(self._flock), FALLOCATE(self._fallocate),
                           READDIR(self._readdir)]
        self._on_interrupt = INTERRUPT(self._interrupted)
        self._waits: dict[int, asyncio.Task] = {}
        self._next_wait = 1
        self._tasks: set[asyncio.Task] = set()

    def install(self) -> bool:
        """Patch the session's table (after `pyfuse3.init`, before `pyfuse3.main`)."""
        table = _session_ops_address()
        if table is None:
            return False
        for slot, cb in zip((SLOT_FLUSH, SLOT_GETLK, SLOT_SETLK, SLOT_FLOCK, SLOT_FALLOCATE,
                             SLOT_READDIR), self._callbacks):
            ctypes.c_void_p.from_address(table + slot * 8).value = \
                ctypes.cast(cb, ctypes.c_void_p).value
        init = ctypes.c_void_p.from_address(table + SLOT_INIT * 8)
        self._pyfuse3_init = PYFUSE3_INIT(init.value)
        self._init = INIT(self._init_conn)
        init.value = ctypes.cast(self._init, ctypes.c_void_p).value
        return True

    def _init_conn(self, userdata, conn) -> None:
        """INIT: ask the kernel not to apply the umask itself (FUSE_CAP_DONT_MASK): a
        file created in a directory with a default ACL must not get it (the namespace
        applies the umask otherwise).

        And turn off FUSE_CAP_AUTO_INVAL_DATA (libfuse asks for it by default): with it
        the kernel drops a file's pages whenever new attributes show another mtime,
        and after this mount's own write they always do (the kernel stamps its mtime,
        the master another), so a file written here and read back went to a
        chunkserver every time. The mount says itself when pages are stale: an open
        keeps them only if the master's (mtime, size) is the one they were cached
        under (`keep_cache`), and the master's recalls of files open here drop them.

        Then pyfuse3's own init, which turns FUSE_CAP_READDIRPLUS_AUTO off (it has no
        plain readdir): back on, we have one."""
        capable = ctypes.c_uint.from_address(conn + CONN_CAPABLE)
        want = ctypes.c_uint.from_address(conn + CONN_WANT)
        if capable.value & FUSE_CAP_DONT_MASK:
            want.value |= FUSE_CAP_DONT_MASK
        want.value &= ~FUSE_CAP_AUTO_INVAL_DATA
        self._pyfuse3_init(userdata, conn)
        if want.value & FUSE_CAP_READDIRPLUS and capable.value & FUSE_CAP_READDIRPLUS_AUTO:
            want.value |= FUSE_CAP_READDIRPLUS_AUTO

    # Each callback runs inside `fuse_session_process_buf`, on the event loop's thread
    # with the loop running: it may only start a task. It must never raise (ctypes
    # would print and drop the exception, and the request would never be answered).

    def _start(self, req, coro) -> asyncio.Task | None:
        try:
            task = asyncio.get_running_loop().create_task(self._answer(req, coro))
        except Exception:
            coro.close()
            log.exception("cannot start a low-level handler")
            self.lib.fuse_reply_err(req, errno.EIO)
            return None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _answer(self, req, coro) -> None:
        """Run a handler; it returns None (success), a Flock or bytes to send back."""
        try:
            out = await coro
        except pyfuse3.FUSEError as e:
            self.lib.fuse_reply_err(req, e.errno)
        except asyncio.CancelledError:
            self.lib.fuse_reply_err(req, errno.EINTR)
        except Exception:
            log.exception("low-level handler failed")
            self.lib.fuse_reply_err(req, errno.EIO)
        else:
            if out is None:
                self.lib.fuse_reply_err(req, 0)
            elif type(out) is bytes:
                self.lib.fuse_reply_buf(req, out, len(out))
            else:
                self.lib.fuse_reply_lock(req, ctypes.byref(out))

    def _flush(self, req, ino, fi) -> None:
        info = fi.contents
        self._start(req, self.ops.flush_owner(info.fh, info.lock_owner))

    def _getlk(self, req, ino, fi, lock) -> None:
        info, lk = fi.contents, lock.contents
        start, end = _range(lk)
        self._start(req, self._getlk_reply(ino, info.fh, info.lock_owner, lk.l_type, start,
                                           end))

    async def _getlk_reply(self, ino, fh, owner, type, start, end) -> Flock:
        out = await self.ops.getlk(ino, fh, owner, type, start, end)
        ltype, lstart, lend, pid = out
        reply = Flock(l_type=ltype, l_whence=os.SEEK_SET, l_start=lstart, l_pid=pid)
        reply.l_len = 0 if lend >= (1 << 63) - 1 else lend - lstart + 1
        return reply

    def _setlk(self, req, ino, fi, lock, sleep) -> None:
        info, lk = fi.contents, lock.contents
        start, end = _range(lk)
        coro = self.ops.setlk(ino, info.fh, info.lock_owner, False, lk.l_type, start, end,
                              lk.l_pid, bool(sleep))
        self._start_wait(req, coro, bool(sleep) and lk.l_type != F_UNLCK)

    def _flock(self, req, ino, fi, op) -> None:
        info = fi.contents
        kind = op & (LOCK_SH | LOCK_EX | LOCK_UN)
        type = F_RDLCK if kind == LOCK_SH else F_WRLCK if kind == LOCK_EX else F_UNLCK
        sleep = not op & LOCK_NB
        pid = 0
        coro = self.ops.setlk(ino, info.fh, info.lock_owner, True, type, 0, (1 << 63) - 1,
                              pid, sleep)
        self._start_wait(req, coro, sleep and type != F_UNLCK)

    def _start_wait(self, req, coro, interruptible: bool) -> None:
        task = self._start(req, coro)
        if task is None or not interruptible:
            return
        wait = self._next_wait
        self._next_wait += 1
        self._waits[wait] = task
        task.add_done_callback(lambda _t: self._waits.pop(wait, None))
        # Called at once if the kernel already sent its INTERRUPT.
        self.lib.fuse_req_interrupt_func(req, self._on_interrupt, wait)

    def _interrupted(self, req, data) -> None:
        task = self._waits.get(data or 0)
        if task is not None:
            task.cancel()

    def _readdir(self, req, ino, size, off, fi) -> None:
        self._start(req, self.ops.readdir_plain(fi.contents.fh, off, size))

    def _fallocate(self, req, ino, mode, offset, length, fi) -> None:
        self._start(req, self.ops.fallocate(ino, fi.contents.fh, mode, offset, length))


def _range(lk: Flock) -> tuple[int, int]:
    """libfuse gives l_whence SEEK_SET, l_len 0 for "to the end"."""
    start = max(0, lk.l_start)
    if lk.l_len == 0:
        return start, (1 << 63) - 1
    if lk.l_len < 0:  # not from the kernel, but cheap to get right
        return max(0, start + lk.l_len), start - 1
    return start, start + lk.l_len - 1
