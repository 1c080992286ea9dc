"""Small state files that must survive a crash: written whole, atomically, fsynced.

Used for what a daemon promises others (a master's term and identity, a voter's vote):
the file is written to a temporary name, fsynced, renamed over the old one and the
directory fsynced, so after any crash the file holds either the old or the new state.
"""

from __future__ import annotations

import json
import os


def save(path: str, state: dict) -> None:
    tmp = path + ".tmp"
    data = json.dumps(state, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load(path: str) -> dict | None:
    """The saved state; None when there is no file. Raises ValueError when it is
    unreadable (a damaged state file must not be taken for a fresh start)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        state = json.loads(data)
    except ValueError as e:
        raise ValueError(f"{path}: unreadable state file: {e}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: unreadable state file")
    return state


def boot_id() -> str:
    """The kernel's id of this boot: it changes when the machine restarts."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""
