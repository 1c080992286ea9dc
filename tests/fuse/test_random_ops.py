"""Randomized file operations: the same seeded sequence runs on the mount and on a local
directory; after every step both trees must hold the same names, contents and attributes.
"""

from __future__ import annotations

import os
import random
import stat

import pytest

NET = "127.0.33"
KiB = 1 << 10
NAMES = [f"f{i}" for i in range(8)]
DIRS = ["", "da", "db"]


class Tree:
    """One side of the comparison: a root plus some long-lived descriptors."""

    def __init__(self, root: str):
        self.root = root
        self.fds: dict[str, int] = {}

    def p(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def run(tree: Tree, step):
    """Apply one step; the result (or errno) must match between the trees."""
    kind, args = step
    try:
        return ("ok", _apply(tree, kind, args))
    except OSError as e:
        return ("err", e.errno)


def _apply(t: Tree, kind: str, a: dict):
    if kind == "pwrite":
        fd = os.open(t.p(a["path"]), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            return os.pwrite(fd, a["data"], a["off"])
        finally:
            os.close(fd)
    if kind == "append":
        fd = os.open(t.p(a["path"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            return os.write(fd, a["data"])
        finally:
            os.close(fd)
    if kind == "truncate":
        os.truncate(t.p(a["path"]), a["len"])
        return None
    if kind == "otrunc":
        fd = os.open(t.p(a["path"]), os.O_WRONLY | os.O_TRUNC | os.O_CREAT, 0o600)
        os.write(fd, a["data"])
        os.close(fd)
        return None
    if kind == "read":
        fd = os.open(t.p(a["path"]), os.O_RDONLY)
        try:
            return os.pread(fd, a["size"], a["off"])
        finally:
            os.close(fd)
    if kind == "rename":
        os.rename(t.p(a["src"]), t.p(a["dst"]))
        return None
    if kind == "unlink":
        os.unlink(t.p(a["path"]))
        return None
    if kind == "link":
        os.link(t.p(a["src"]), t.p(a["dst"]))
        return None
    if kind == "chmod":
        os.chmod(t.p(a["path"]), a["mode"])
        return None
    if kind == "keep_open":  # open and keep a descriptor (may outlive an unlink)
        if a["path"] in t.fds:
            os.close(t.fds.pop(a["path"]))
        t.fds[a["path"]] = os.open(t.p(a["path"]), os.O_RDWR)
        return None
    if kind == "fd_write":
        fd = t.fds.get(a["path"])
        if fd is None:
            return "no fd"
        return os.pwrite(fd, a["data"], a["off"])
    if kind == "fd_read":
        fd = t.fds.get(a["path"])
        if fd is None:
            return "no fd"
        return os.pread(fd, a["size"], a["off"])
    if kind == "fd_close":
        fd = t.fds.pop(a["path"], None)
        if fd is not None:
            os.close(fd)
        return None
    raise AssertionError(kind)


def gen_step(rng: random.Random):
    path = os.path.join(rng.choice(DIRS), rng.choice(NAMES))
    other = os.path.join(rng.choice(DIRS), rng.choice(NAMES))
    r = rng.random()
    size = rng.choice([1, 100, 4 * KiB, 5000, 64 * KiB + 3, 300 * KiB])
    off = rng.choice([0, rng.randrange(0, 2048 * KiB), rng.randrange(0, 4096) * 512])
    data = rng.randbytes(size)
    if r < 0.25:
        return ("pwrite", {"path": path, "off": off, "data": data})
    if r < 0.32:
        return ("append", {"path": path, "data": data})
    if r < 0.40:
        return ("truncate", {"path": path, "len": rng.choice([0, 10, 70000, off])})
    if r < 0.44:
        return ("otrunc", {"path": path, "data": data[:5000]})
    if r < 0.54:
        return ("read", {"path": path, "off": rng.choice([0, off]), "size": size})
    if r < 0.62:
        return ("rename", {"src": path, "dst": other})
    if r < 0.67:
        return ("unlink", {"path": path})
    if r < 0.71:
        return ("link", {"src": path, "dst": other})
    if r < 0.74:
        return ("chmod", {"path": path, "mode": rng.choice([0o600, 0o644, 0o755, 0o400])})
    if r < 0.80:
        return ("keep_open", {"path": path})
    if r < 0.88:
        return ("fd_write", {"path": path, "off": off, "data": data})
    if r < 0.95:
        return ("fd_read", {"path": path, "off": rng.choice([0, off]), "size": size})
    return ("fd_close", {"path": path})


def snapshot(root: str) -> dict:
    out = {}
    for d in DIRS:
        base = os.path.join(root, d)
        for name in sorted(os.listdir(base)):
            rel = os.path.join(d, name)
            st = os.lstat(os.path.join(root, rel))
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
                continue
            with open(os.path.join(root, rel), "rb") as f:
                data = f.read()
            out[rel] = (stat.S_IMODE(st.st_mode), st.st_size, st.st_nlink, len(data),
                        hash(data))
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_same_results_as_a_local_directory(d, tmp_path, seed):
    local = tmp_path / "local"
    local.mkdir()
    trees = [Tree(d), Tree(str(local))]
    for t in trees:
        for sub in DIRS[1:]:
            os.mkdir(t.p(sub))
    rng = random.Random(seed)
    try:
        for i in range(200):
            step = gen_step(rng)
            results = [run(t, step) for t in trees]
            assert results[0] == results[1], f"step {i} {step[0]}: {results[0]!r:.200} != {results[1]!r:.200}"
            if i % 5 == 4:  # now and then read what the chunkservers hold, not the page cache
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("1")
            ours, theirs = snapshot(d), snapshot(str(local))
            assert ours == theirs, f"after step {i} {step[0]} {step[1].get('path', '')}"
    finally:
        for t in trees:
            t.close()
    assert sum(1 for v in snapshot(str(local)).values() if v != ("dir",)) >= 3
