"""What the exports check costs the master per request: `sessionaccess.admit` for a
session of `/` (the default) and for a session rooted in a subtree (inodes checked against
the root), on a namespace of 10 directories of 1000 files each. Prints microseconds per
request; not a test.

    .venv/bin/python -m bench.exports_admit
"""

from __future__ import annotations

import stat
import time

from elkfs.master import exports as ex
from elkfs.master.namespace import Namespace
from elkfs.master.records import OpenSession, Record
from elkfs.master.sessionaccess import SessionAccess, admit, resolve_root
from elkfs.proto import messages as m


def build() -> tuple[Namespace, list[int]]:
    ns = Namespace()
    version, files = 0, []

    def do(op):
        nonlocal version
        version += 1
        return ns.apply(Record(version, version * 1000, b"s" * 16 if version > 1 else b"",
                               version if version > 1 else 0, op))

    do(OpenSession(b"s" * 16, "bench"))
    top = do(m.Mkdir(1, b"top", 0o755, 0, 0)).attr.inode
    for d in range(10):
        parent = do(m.Mkdir(top, b"d%d" % d, 0o755, 0, 0)).attr.inode
        for f in range(1000):
            files.append(do(m.Mknod(parent, b"f%d" % f, stat.S_IFREG | 0o644, 0, 0)).attr.inode)
    return ns, files


def per_request(ns, access, ops) -> float:
    start = time.perf_counter()
    for op in ops:
        admit(ns, access, op)
    return (time.perf_counter() - start) / len(ops) * 1e6


def main() -> None:
    ns, files = build()
    ops = [m.GetAttr(i) for i in files] + [m.ReadChunk(i, 0) for i in files]
    top = ns.lookup(1, b"top").inode
    creates = [m.Mknod(top, b"x", stat.S_IFREG | 0o644, 0, 0)] * 20000
    base = [m.GetAttr(i) for i in files] * 2
    start = time.perf_counter()
    for op in base:
        isinstance(op, m.Mknod)
    floor = (time.perf_counter() - start) / len(base) * 1e6
    print(f"(one isinstance() per request here: {floor:.3f} us, for scale)")
    for name, text, path in (("/ (default rules)", ex.DEFAULT_TEXT, "/"),
                             ("subtree /top, maproot", "* /top rw,maproot=nobody", "/top")):
        [rule] = [r for r in ex.parse(text) if not r.meta]
        p = ex.split_path(path)
        access = SessionAccess(rule, None, p, frozenset(), resolve_root(ns, p))
        first = per_request(ns, access, ops[:1])  # a rooted session walks its tree once
        print(f"{name:24s} first request {first:8.1f} us, then {per_request(ns, access, ops):5.2f}"
              f" us/request (getattr, readchunk), {per_request(ns, access, creates):5.2f}"
              " us/create")


if __name__ == "__main__":
    main()
