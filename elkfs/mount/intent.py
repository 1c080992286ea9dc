"""What a caller means to do with a FIFO, socket or device it is looking up.

Without FUSE's `default_permissions` the kernel opens a FIFO or a device, and connects to
a Unix socket, without asking the file system: the file system sees the LOOKUP of the name
and nothing after it. So the mount gives the kernel such names with an entry timeout of 0
(every path walk to them is a LOOKUP, made in the caller's context) and, at that LOOKUP,
reads which system call the caller is blocked in (`/proc/PID/syscall`, readable by the
mount's root): an open asks for read and/or write permission as its flags say, a connect
or a send to a socket's path asks for write permission, anything else (stat, ls, access,
chmod...) for none. Pure parsing here; `wants_of_caller` does the reading.

What this cannot see is a call made for the caller by the kernel (io_uring's worker
threads) or from a process outside the mount's PID namespace (FUSE gives pid 0): those
LOOKUPs are checked as nothing more than a lookup (docs/consistency.md).
"""

from __future__ import annotations

import os
import struct

R, W = 4, 2
O_PATH = 0o10000000

# syscall numbers: (open, creat, openat, openat2) and the socket calls that name a path
_OPEN = {"x86_64": {2: 1, 257: 2, 437: 2}, "aarch64": {56: 2, 437: 2}}
_CREAT = {"x86_64": 85}
_SOCKET_SENDS = {"x86_64": {42, 44, 46, 307}, "aarch64": {203, 206, 211, 269}}
OPENAT2 = 437


def open_flags_wants(flags: int) -> int:
    """The permission an open with `flags` needs on a special file (O_PATH: none)."""
    if flags & O_PATH:
        return 0
    return {os.O_RDONLY: R, os.O_WRONLY: W, os.O_RDWR: R | W}.get(flags & os.O_ACCMODE, R | W)


def parse_syscall(text: str) -> tuple[int, list[int]] | None:
    """(number, arguments) from a /proc/PID/syscall line; None when the task is not in a
    system call ("running", or -1)."""
    fields = text.split()
    if not fields or not fields[0].lstrip("-").isdigit():
        return None
    number = int(fields[0])
    if number < 0:
        return None
    return number, [int(f, 16) for f in fields[1:7]]


def wants(number: int, args: list[int], arch: str, is_socket: bool,
          read_user=None) -> int:
    """The permission system call `number` with `args` needs on the special file it
    looks up; `read_user(address, length)` reads the caller's memory (openat2's
    struct open_how)."""
    if is_socket:
        return W if number in _SOCKET_SENDS.get(arch, ()) else 0
    if number == _CREAT.get(arch):
        return W
    flags_at = _OPEN.get(arch, {}).get(number)
    if flags_at is None:
        return 0
    if number == OPENAT2:
        raw = read_user(args[2], 8) if read_user is not None else None
        if raw is None or len(raw) < 8:
            return R | W  # cannot tell: as strict as the widest open
        return open_flags_wants(struct.unpack("<Q", raw)[0])
    return open_flags_wants(args[flags_at])


ARCH = os.uname().machine


def wants_of_caller(pid: int, is_socket: bool) -> int:
    """What caller `pid`'s current system call needs on the special file it looks up
    (0 when it cannot be told: see the module's note)."""
    if pid <= 0:
        return 0
    try:
        with open(f"/proc/{pid}/syscall") as f:
            call = parse_syscall(f.read())
    except OSError:
        return 0
    if call is None:
        return 0

    def read_user(address: int, length: int) -> bytes | None:
        try:
            with open(f"/proc/{pid}/mem", "rb") as mem:
                mem.seek(address)
                return mem.read(length)
        except (OSError, ValueError, OverflowError):
            return None

    return wants(call[0], call[1], ARCH, is_socket, read_user)
