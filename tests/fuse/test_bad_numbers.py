"""Numbers out of range (issue 15's "bad numbers"): each gets EINVAL from the master, the
master keeps serving (the same connection too), nothing is stored, `ls` through a mount
still works, and the client library refuses them itself without retrying.

The requests go straight onto the library's connection (bypassing its own check), as a
hostile client would send them, and then through the library's API."""

from __future__ import annotations

import errno
import os
import stat
import subprocess

import pytest

from elkfs.client import Client
from elkfs.proto import messages as m
from elkfs.proto.errors import FsError

NET = "127.0.151"
CHUNKSERVERS = 1


def bad_ops(dir_ino: int, file_ino: int) -> dict[str, m.Op]:
    reg = stat.S_IFREG | 0o644
    return {
        "ReadDir offset -5": m.ReadDir(dir_ino, -5),
        "Mknod mode -1": m.Mknod(dir_ino, b"bad-mode", -1, 0, 0),
        "Mknod mode 2**20": m.Mknod(dir_ino, b"bad-mode2", 1 << 20, 0, 0),
        "WriteChunk index -1": m.WriteChunk(file_ino, -1),
        "ReadChunk index 2**40": m.ReadChunk(file_ino, 1 << 40),
        "Mknod uid -1": m.Mknod(dir_ino, b"bad-uid", reg, -1, 0),
        "Mknod uid 2**40": m.Mknod(dir_ino, b"bad-uid2", reg, 1 << 40, 0),
        "Mkdir gid 2**32-1": m.Mkdir(dir_ino, b"bad-gid", 0o755, 0, (1 << 32) - 1),
        "chown -1": m.SetAttr(file_ino, m.SET_UID, uid=-1),
        "chown 2**40": m.SetAttr(file_ino, m.SET_UID, uid=1 << 40),
        "mtime 2**63": m.SetAttr(file_ino, m.SET_MTIME, mtime_ns=1 << 63),
        "mtime -2**63": m.SetAttr(file_ino, m.SET_MTIME, mtime_ns=-(1 << 63)),
        "atime 2**64-1": m.SetAttr(file_ino, m.SET_ATIME, atime_ns=(1 << 64) - 1),
        "truncate -1": m.Truncate(file_ino, -1),
        "truncate past the largest file": m.Truncate(file_ino, 1 << 60),
        "setgoal 300": m.SetGoal(file_ino, 300),
        "trashtime -1": m.SetTrashTime(file_ino, -1),
        "lock start -1": m.SetLock(file_ino, 1, 1, 1, -1, 10),
        "inode -1": m.GetAttr(-1),
    }


def master_log(mc) -> str:
    with open(os.path.join(mc.cluster.masters[0].data_dir, "mfsmaster.log")) as f:
        return f.read()


def snapshot_of(path: str) -> list[tuple]:
    out = []
    for name in sorted(os.listdir(path)):
        st = os.lstat(os.path.join(path, name))
        out.append((name, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                    st.st_atime_ns))
    return out


async def test_bad_numbers_get_einval_and_change_nothing(mc, d):
    with open(os.path.join(d, "x"), "wb") as f:
        f.write(b"contents")
    before = snapshot_of(d)
    client = await Client.connect(*mc.cluster.master_addr, info="bad numbers", retry_s=5.0)
    try:
        dir_ino = (await client.stat("/" + os.path.basename(d))).inode
        file_ino = (await client.lookup(dir_ino, b"x")).inode
        link = client.link
        conn = link.conn
        ops = bad_ops(dir_ino, file_ino)
        for what, op in ops.items():
            with pytest.raises(FsError) as e:
                await conn.call(m.MetaRequest, session=link.session, seq=0 if op.READ_ONLY
                                else 10**6 + len(what), op=op, uid=0, gid=0, timeout=10)
            assert e.value.status == errno.EINVAL, what
            assert conn.is_open, f"{what}: the master dropped the connection"
        # The request's own identity out of range.
        for uid in (-1, 1 << 40):
            with pytest.raises(FsError) as e:
                await conn.call(m.MetaRequest, session=link.session, seq=0,
                                op=m.GetAttr(dir_ino), uid=uid, gid=0, timeout=10)
            assert e.value.status == errno.EINVAL
        await conn.call(m.Ping, timeout=10)  # the same connection still answers
        assert conn is link.conn and link.reconnects == 0
        sent = master_log(mc).count("refused MetaRequest")
        assert 1 <= sent <= len(ops) + 2  # one line each at most (rate-limited)

        # The library refuses them itself: at once, nothing sent, no retry.
        for what, op in ops.items():
            with pytest.raises(FsError) as e:
                await client.op(op)
            assert e.value.status == errno.EINVAL, what
        assert link.reconnects == 0 and link.conn is conn
        assert master_log(mc).count("refused MetaRequest") == sent
        # and it still works
        assert (await client.getattr_inode(file_ino)).size == 8
    finally:
        await client.close()
    # Nothing stored: the directory lists and stats as before, `ls -l` works.
    assert snapshot_of(d) == before
    ls = subprocess.run(["ls", "-la", d], capture_output=True, text=True)
    assert ls.returncode == 0 and " x" in ls.stdout, ls.stderr
    with open(os.path.join(d, "y"), "wb") as f:
        f.write(b"still serving")
    with open(os.path.join(d, "y"), "rb") as f:
        assert f.read() == b"still serving"


def test_extreme_times_that_are_in_range_list_fine(mc, d):
    """The ends of the time range are stored and shown: `ls` never fails on them."""
    p = os.path.join(d, "t")
    open(p, "wb").close()
    for ns in (-(1 << 62), 1 << 62, 0, -1):
        os.utime(p, ns=(ns, ns))
        assert os.stat(p).st_mtime_ns == ns
        ls = subprocess.run(["ls", "-la", "--full-time", d], capture_output=True, text=True)
        assert ls.returncode == 0, ls.stderr
    with pytest.raises(OSError) as e:
        os.utime(p, ns=(0, (1 << 62) + 1))
    assert e.value.errno == errno.EINVAL
