"""elkfs/mount/intent.py: which permission the system call a caller is blocked in needs
on the FIFO, socket or device it looks up (read from /proc/PID/syscall)."""

from __future__ import annotations

import os
import struct
import threading

from elkfs.mount import intent
from elkfs.mount.intent import R, W


def test_parse_syscall_lines():
    assert intent.parse_syscall("running\n") is None
    assert intent.parse_syscall("-1 0x7ffd 0x1\n") is None
    assert intent.parse_syscall("") is None
    number, args = intent.parse_syscall(
        "257 0xffffff9c 0x7ffe12 0x2 0x0 0x0 0x0 0x7ffe00 0x7f00aa\n")
    assert number == 257 and args == [0xffffff9c, 0x7ffe12, 2, 0, 0, 0]


def test_open_flags():
    assert intent.open_flags_wants(os.O_RDONLY | os.O_NONBLOCK) == R
    assert intent.open_flags_wants(os.O_WRONLY | os.O_CREAT) == W
    assert intent.open_flags_wants(os.O_RDWR) == R | W
    assert intent.open_flags_wants(os.O_ACCMODE) == R | W  # the odd "3": as strict as can be
    assert intent.open_flags_wants(os.O_PATH | os.O_RDWR) == 0


def test_each_call_and_what_it_needs():
    x86 = "x86_64"
    assert intent.wants(257, [0, 0, os.O_WRONLY, 0, 0, 0], x86, False) == W  # openat
    assert intent.wants(2, [0, os.O_RDONLY, 0, 0, 0, 0], x86, False) == R  # open
    assert intent.wants(85, [0] * 6, x86, False) == W  # creat
    assert intent.wants(4, [0] * 6, x86, False) == 0  # stat
    assert intent.wants(21, [0] * 6, x86, False) == 0  # access: FUSE asks for it itself
    assert intent.wants(42, [0] * 6, x86, True) == W  # connect to a socket
    assert intent.wants(257, [0, 0, os.O_RDWR, 0, 0, 0], x86, True) == 0  # a socket: no open
    assert intent.wants(56, [0, 0, os.O_RDWR, 0, 0, 0], "aarch64", False) == R | W
    assert intent.wants(257, [0, 0, os.O_RDWR, 0, 0, 0], "riscv64", False) == 0


def test_openat2_reads_the_flags_from_the_callers_memory():
    how = {0x1000: struct.pack("<QQQ", os.O_WRONLY, 0, 0)}
    read = lambda address, length: how.get(address, b"")[:length]  # noqa: E731
    assert intent.wants(437, [0, 0, 0x1000, 24, 0, 0], "x86_64", False, read) == W
    assert intent.wants(437, [0, 0, 0x2000, 24, 0, 0], "x86_64", False, read) == R | W


def test_a_blocked_thread_of_this_process_is_read():
    """A real /proc/TID/syscall: a thread blocked opening a FIFO for writing."""
    path = f"/tmp/elkfs-intent-{os.getpid()}"
    os.mkfifo(path)
    tid: list[int] = []
    started = threading.Event()

    def opener():
        tid.append(threading.get_native_id())
        started.set()
        fd = os.open(path, os.O_WRONLY)  # blocks until a reader opens
        os.close(fd)

    t = threading.Thread(target=opener)
    try:
        t.start()
        started.wait()
        for _ in range(200):
            got = intent.wants_of_caller(tid[0], False)
            if got:
                break
            threading.Event().wait(0.01)
        assert got == W
        assert intent.wants_of_caller(tid[0], True) == 0
        assert intent.wants_of_caller(0, False) == 0
    finally:
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer's open end
        t.join(5)
        os.close(reader)
        os.unlink(path)
