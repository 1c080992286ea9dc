"""The master is the authority: the client library, as another user, gets from the master
what POSIX gives that user, whatever it asks (issue 15's attacks, and the same operations
where POSIX allows them).

Root makes the tree through the library; `nobody` (65534) then tries, by path and by
inode straight at the protocol, to read, overwrite, chmod, chown, unlink and plant a
root-owned set-user-ID file: every attempt is refused and nothing changes. The owner, a
member of the file's group, a user an ACL names, and root may do what POSIX lets them.
"""

from __future__ import annotations

import asyncio
import errno
import stat

import pytest

from elkfs import access
from elkfs.access import GROUP_OBJ, MASK, OTHER, USER, USER_OBJ, UNDEFINED_ID as U
from elkfs.client import Client
from elkfs.proto import messages as m
from elkfs.proto.errors import FsError
from elkfs.testing.cluster import Cluster

NET = "127.0.150"
NOBODY = 65534
STAFF = 1234  # a group
MEMBER = 1000  # a user in STAFF
SECRET = b"root's secret" * 100


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("authority")), net=NET, chunkservers=1)
    c.start()
    yield c
    c.destroy()


async def as_user(cluster, uid: int, gid: int | None = None, groups=()) -> Client:
    return await Client.connect(*cluster.master_addr, info=f"uid {uid}", uid=uid,
                                gid=uid if gid is None else gid, groups=list(groups),
                                retry_s=5.0)


@pytest.fixture(scope="module")
def tree(cluster):
    return asyncio.run(_make_tree(cluster))


async def _make_tree(cluster) -> dict[str, m.Attr]:
    root = await as_user(cluster, 0)
    try:
        await root.mkdir("/secret", 0o700)
        await root.write_file("/secret/f", SECRET, 0o600)
        await root.mkdir("/tmp", 0o1777)
        await root.chmod("/tmp", 0o1777)
        await root.write_file("/tmp/roots", b"mine", 0o666)
        await root.mkdir("/pub", 0o755)
        await root.write_file("/pub/staff", b"for staff", 0o640)
        await root.chown("/pub/staff", 0, STAFF)
        await root.write_file("/pub/acl", b"for nobody", 0o600)
        acl = access.encode([(USER_OBJ, 6, U), (USER, 6, NOBODY), (GROUP_OBJ, 0, U),
                             (MASK, 6, U), (OTHER, 0, U)])
        await root.setxattr("/pub/acl", access.ACCESS, acl)
        return {p: await root.stat(p) for p in ("/secret", "/secret/f", "/tmp", "/tmp/roots",
                                                "/pub", "/pub/staff", "/pub/acl")}
    finally:
        await root.close()


async def refused(coro, *errnos) -> int:
    with pytest.raises(FsError) as e:
        await coro
    assert e.value.status in (errnos or (errno.EACCES, errno.EPERM)), e.value
    return e.value.status


async def test_nobody_is_refused_everything_issue_15_tried(cluster, tree):
    secret, f, tmp = tree["/secret"], tree["/secret/f"], tree["/tmp"]
    nobody = await as_user(cluster, NOBODY)
    try:
        # read: by path, by an open, by the chunk's location
        await refused(nobody.read_file("/secret/f"), errno.EACCES)
        await refused(nobody.op(m.Lookup(secret.inode, b"f")), errno.EACCES)
        await refused(nobody.op(m.Acquire(f.inode, access.R)), errno.EACCES)
        await refused(nobody.op(m.ReadChunk(f.inode, 0)), errno.EACCES)
        await refused(nobody.op(m.FileChunks(f.inode)), errno.EACCES)
        await refused(nobody.op(m.ReadDir(secret.inode)), errno.EACCES)
        # overwrite
        await refused(nobody.write_file("/secret/f", b"pwned"), errno.EACCES)
        await refused(nobody.op(m.Truncate(f.inode, 0)), errno.EACCES)
        await refused(nobody.op(m.WriteChunk(f.inode, 0)), errno.EACCES)
        await refused(nobody.op(m.AppendReserve(f.inode, 5)), errno.EACCES)
        await refused(nobody.op(m.WriteChunkEnd(f.inode, 0, 1, 10)), errno.EACCES)
        # chmod of root's directory, chown of the file, times, xattrs, goal
        await refused(nobody.chmod("/secret", 0o777), errno.EPERM)
        await refused(nobody.op(m.SetAttr(f.inode, m.SET_UID | m.SET_GID, 0, NOBODY, NOBODY)),
                      errno.EPERM)
        await refused(nobody.op(m.SetAttr(f.inode, m.SET_MODE, 0o666)), errno.EPERM)
        await refused(nobody.op(m.SetAttr(f.inode, m.SET_ATIME | m.SET_MTIME, 0, 0, 0, 1, 1)),
                      errno.EPERM)
        await refused(nobody.op(m.SetXattr(f.inode, access.ACCESS, access.encode(
            [(USER_OBJ, 7, U), (GROUP_OBJ, 7, U), (OTHER, 7, U)]))), errno.EPERM)
        await refused(nobody.op(m.SetXattr(f.inode, b"trusted.x", b"1")), errno.EPERM)
        await refused(nobody.op(m.SetXattr(f.inode, b"user.x", b"1")), errno.EACCES)
        await refused(nobody.op(m.SetGoal(secret.inode, 1, True)), errno.EPERM)
        await refused(nobody.op(m.SetTrashTime(f.inode, 0)), errno.EPERM)
        # unlink, rename, link, snapshot
        await refused(nobody.op(m.Unlink(secret.inode, b"f")), errno.EACCES)
        await refused(nobody.op(m.Rename(secret.inode, b"f", tmp.inode, b"stolen")),
                      errno.EACCES)
        await refused(nobody.op(m.Link(f.inode, tmp.inode, b"mine-now")), errno.EPERM)
        await refused(nobody.op(m.Snapshot(f.inode, tmp.inode, b"copy", NOBODY, NOBODY)),
                      errno.EACCES)
        await refused(nobody.unlink("/tmp/roots"), errno.EPERM)  # sticky
        await refused(nobody.rename("/tmp/roots", "/tmp/x"), errno.EPERM)
        # a root-owned set-user-ID file, in a directory anyone may write, or in root's
        await refused(nobody.op(m.Mknod(tmp.inode, b"evil", stat.S_IFREG | 0o4755, 0, 0)),
                      errno.EPERM)
        await refused(nobody.op(m.Mknod(secret.inode, b"evil", stat.S_IFREG | 0o4755,
                                        NOBODY, NOBODY)), errno.EACCES)
        await refused(nobody.op(m.Mkdir(tmp.inode, b"evil", 0o755, 0, 0)), errno.EPERM)
        await refused(nobody.op(m.Symlink(tmp.inode, b"evil", b"/x", 0, NOBODY)), errno.EPERM)
        await refused(nobody.op(m.Mknod(tmp.inode, b"dev", stat.S_IFCHR | 0o666, NOBODY,
                                        NOBODY, rdev=0x0101)), errno.EPERM)
        # the trash is root's
        await refused(nobody.op(m.PurgeTrash([f.inode])), errno.EPERM)
    finally:
        await nobody.close()
    # Nothing changed.
    root = await as_user(cluster, 0)
    try:
        assert await root.read_file("/secret/f") == SECRET
        for path, before in tree.items():
            now = await root.stat(path)
            assert (now.mode, now.uid, now.gid, now.size, now.mtime_ns, now.goal,
                    now.trashtime) == (before.mode, before.uid, before.gid, before.size,
                                       before.mtime_ns, before.goal, before.trashtime), path
        assert sorted(await root.listdir("/tmp")) == ["roots"]
        assert await root.listdir("/secret") == ["f"]
    finally:
        await root.close()


async def test_what_posix_allows_is_allowed(cluster, tree):
    nobody = await as_user(cluster, NOBODY)
    member = await as_user(cluster, MEMBER, groups=[STAFF])
    root = await as_user(cluster, 0)
    try:
        # the owner: create, write, read, chmod (also set-user-ID on its own file), chgrp
        # to its own group, times, xattrs, goal, rename and unlink in a sticky directory
        await nobody.write_file("/tmp/n", b"hello", 0o600)
        assert await nobody.read_file("/tmp/n") == b"hello"
        attr = await nobody.chmod("/tmp/n", 0o4755)
        assert stat.S_IMODE(attr.mode) == 0o4755 and attr.uid == NOBODY
        await nobody.chown("/tmp/n", NOBODY, NOBODY)
        await nobody.utime("/tmp/n", 10**9, 2 * 10**9)
        await nobody.setxattr("/tmp/n", b"user.note", b"x")
        await nobody.setgoal("/tmp/n", 1)
        await nobody.rename("/tmp/n", "/tmp/n2")
        await nobody.mkdir("/tmp/nd", 0o700)
        await nobody.write_file("/tmp/nd/inner", b"deep")
        await nobody.setgoal("/tmp/nd", 1, recursive=True)
        await refused(nobody.chown("/tmp/n2", 0, NOBODY), errno.EPERM)  # chown: root's
        await refused(nobody.chown("/tmp/n2", NOBODY, STAFF), errno.EPERM)  # not its group
        # the group: read, not write
        assert await member.read_file("/pub/staff") == b"for staff"
        await refused(member.write_file("/pub/staff", b"no"), errno.EACCES)
        await refused(nobody.read_file("/pub/staff"), errno.EACCES)
        # a named user of an ACL: read and write
        assert await nobody.read_file("/pub/acl") == b"for nobody"
        f = await nobody.open("/pub/acl")
        await f.write(0, b"FOR")
        await f.close()
        await refused(member.read_file("/pub/acl"), errno.EACCES)
        # anyone unlinks their own file in a sticky directory; root anything
        await nobody.unlink("/tmp/n2")
        await root.unlink("/tmp/roots")
        await root.chown("/secret/f", NOBODY, NOBODY)
        await root.chmod("/secret", 0o711)
        # nobody owns the file now and may search the directory: read it (not list it)
        assert await nobody.read_file("/secret/f") == SECRET
        await refused(nobody.listdir("/secret"), errno.EACCES)
        await root.write_file("/secret/g", b"g", 0o644)
        assert await root.read_file("/pub/acl") == b"FOR nobody"
        # a file made in a set-group-ID directory takes its group; set-group-ID of a file
        # whose group the maker is not in is dropped
        await root.mkdir("/pub/sg", 0o777)
        await root.chown("/pub/sg", 0, STAFF)
        await root.chmod("/pub/sg", 0o2777)
        sg = await root.stat("/pub/sg")
        made = (await nobody.op(m.Mknod(sg.inode, b"x", stat.S_IFREG | 0o2775, NOBODY,
                                         NOBODY))).attr
        assert made.gid == STAFF and not made.mode & stat.S_ISGID
        made = (await member.op(m.Mknod(sg.inode, b"y", stat.S_IFREG | 0o2775, MEMBER,
                                         MEMBER))).attr
        assert made.gid == STAFF and made.mode & stat.S_ISGID
        # chmod by the owner outside the file's group drops set-group-ID
        attr = (await member.op(m.SetAttr(made.inode, m.SET_MODE, 0o2755))).attr
        assert attr.mode & stat.S_ISGID
        await root.chown("/pub/sg/y", MEMBER, 0)
        attr = (await member.op(m.SetAttr(made.inode, m.SET_MODE, 0o2755))).attr
        assert not attr.mode & stat.S_ISGID
    finally:
        for c in (nobody, member, root):
            await c.close()


async def test_an_open_file_stays_writable_after_its_mode_changes(cluster, tree):
    """POSIX checks at open: a file created 0444 is written through the open that made
    it (tar, cp -p), and a file opened for writing stays writable after a chmod."""
    nobody = await as_user(cluster, NOBODY)
    try:
        f = await nobody.create("/tmp/ro", 0o444)
        await f.write(0, b"written after create")
        await f.close()
        assert await nobody.read_file("/tmp/ro") == b"written after create"
        await refused(nobody.open("/tmp/ro"), errno.EACCES)  # a new open for writing
        await nobody.chmod("/tmp/ro", 0o644)
        f = await nobody.open("/tmp/ro")
        await nobody.chmod("/tmp/ro", 0o444)
        await f.write(0, b"W")
        await f.close()
        assert await nobody.read_file("/tmp/ro") == b"Written after create"
    finally:
        await nobody.close()
