"""Status codes carried in replies.

Replies carry a POSIX errno (0 = success) so a client can hand it straight to the kernel.
A few ElkFS-specific conditions get codes above the errno range.
"""

from __future__ import annotations

import errno
import os

OK = 0
# ElkFS-specific statuses (above any errno value Linux uses).
WRONG_VERSION = 1001  # chunk version does not match the chunkserver's copy
NO_CHUNK = 1002  # chunkserver has no such chunk
CRC_ERROR = 1003  # a block failed its CRC check
NOT_LEADER = 1004  # this master does not serve clients (HA); meta names the leader
BAD_SESSION = 1005  # unknown or expired session
CHUNK_LOCKED = 1006  # another writer holds the chunk
NO_SERVERS = 1007  # no chunkserver can take the chunk
PROTOCOL = 1008  # request not understood
BAD_TOKEN = 1020  # chunk token missing, forged or for another chunk version or mode
TOKEN_EXPIRED = 1021  # chunk token past its expiry: ask the master for a fresh one

_NAMES = {
    WRONG_VERSION: "wrong chunk version",
    NO_CHUNK: "no such chunk",
    CRC_ERROR: "CRC error",
    NOT_LEADER: "not the leader",
    BAD_SESSION: "unknown session",
    CHUNK_LOCKED: "chunk locked",
    NO_SERVERS: "no chunkservers available",
    PROTOCOL: "protocol error",
    BAD_TOKEN: "chunk access refused",
    TOKEN_EXPIRED: "chunk token expired",
}


def describe(status: int) -> str:
    if status in _NAMES:
        return _NAMES[status]
    return os.strerror(status) if status > 0 else "OK"


class FsError(Exception):
    """An operation failed with `status` (an errno or an ElkFS status above)."""

    def __init__(self, status: int, detail: str = ""):
        self.status = status
        self.errno = status if status < 1000 else errno.EIO
        self.detail = detail
        super().__init__(f"{describe(status)}{': ' + detail if detail else ''}")

    def to_oserror(self) -> OSError:
        return OSError(self.errno, str(self))
