"""A non-root user's recursive setgoal/settrashtime and snapshot of a tree big enough to
be done in steps, on real daemons: the permission check walks the tree in steps too, so
another client's GetAttrs keep being answered while it runs; a tree of the user's own is
changed or copied, one holding a file the user may not have is refused with nothing
changed (docs/security.md, "Requests that would hold the master").

The tree has ENTRIES entries (over longops.ONE_STEP_MAX: stepped), made through the
client library as the user.
"""

import asyncio
import errno
import json
import stat

import pytest

from elkfs.client import Client
from elkfs.master.longops import CHECK_STEP_ENTRIES, ONE_STEP_MAX
from elkfs.proto import messages as m
from elkfs.proto.errors import FsError
from elkfs.testing.bigtree import LatencyWatch, count_entries, make_big_dir
from elkfs.testing.cluster import Cluster

NET = "127.0.152"
ENTRIES = 60_000
USER = 1000

assert ENTRIES > max(ONE_STEP_MAX, 4 * CHECK_STEP_ENTRIES)  # several check steps


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("longauth")), net=NET, chunkservers=1)
    c.start()
    yield c
    c.destroy()


async def connect(cluster, uid: int, info: str) -> Client:
    return await Client.connect(*cluster.master_addr, info=info, uid=uid, gid=uid,
                                retry_s=5.0)


@pytest.fixture(scope="module")
def tree(cluster):
    """/u (the user's) and /u/big, ENTRIES files of the user's."""

    async def make():
        root = await connect(cluster, 0, "root")
        user = await connect(cluster, USER, "maker")
        try:
            await root.mkdir("/u")
            await root.chown("/u", USER, USER)
            return await make_big_dir(user, "/u/big", ENTRIES)
        finally:
            await user.close()
            await root.close()

    return asyncio.run(make())


async def during(asker: Client, inode: int, op_coro):
    """Runs `op_coro` while `asker` does GetAttr after GetAttr. Returns (its result or
    FsError, GetAttrs answered while it ran)."""
    with LatencyWatch(asker, inode) as watch:
        await asyncio.sleep(0.1)
        before = watch.count
        try:
            result = await op_coro
        except FsError as e:
            result = e
        answered = watch.count - before
    print(f"{type(result).__name__}: {answered} GetAttrs answered meanwhile, worst "
          f"{watch.worst_s * 1000:.0f} ms")
    return result, answered


async def inodes(client: Client) -> int:
    return json.loads((await client.op(m.ClusterInfo())).text)["inodes"]


async def sample_goals(client: Client, inode: int) -> set[int]:
    entries = []
    for offset in (0, ENTRIES // 2, ENTRIES - 5):
        entries += (await client.op(m.ReadDir(inode, offset, 5))).entries
    return {e.attr.goal for e in entries} | {(await client.op(m.GetAttr(inode))).attr.goal}


async def test_users_own_tree_changed_and_copied_in_steps(cluster, tree):
    user = await connect(cluster, USER, "user")
    asker = await connect(cluster, 0, "asker")
    progress: list[int] = []
    user.link.on_progress = progress.append
    try:
        root = await asker.stat("/")
        u = await user.stat("/u")
        result, answered = await during(asker, root.inode,
                                        user.op(m.SetGoal(tree, 3, True)))
        assert not isinstance(result, FsError), result
        assert answered >= 3  # held in one go, the master answers one or two meanwhile
        assert await sample_goals(user, tree) == {3}

        result, answered = await during(asker, root.inode,
                                        user.op(m.SetTrashTime(tree, 7200, True)))
        assert not isinstance(result, FsError), result
        assert answered >= 3
        last = (await user.stat(f"/u/big/f{ENTRIES - 1:08d}"))
        assert last.trashtime == 7200

        result, answered = await during(
            asker, root.inode, user.op(m.Snapshot(tree, u.inode, b"copy", USER, USER)))
        assert not isinstance(result, FsError), result
        assert answered >= 3
        assert await count_entries(user, result.attr.inode) == ENTRIES
        assert progress == sorted(progress)  # Progress, if the ops took a second
    finally:
        await asker.close()
        await user.close()


async def test_a_tree_holding_anothers_file_is_refused_and_nothing_changes(cluster, tree):
    user = await connect(cluster, USER, "user")
    root_client = await connect(cluster, 0, "root")
    try:
        root = await root_client.stat("/")
        u = await user.stat("/u")
        # root's unreadable file, at the end of the big directory (the check walk
        # meets it last)
        await root_client.op(m.Mknod(tree, b"zz-roots", stat.S_IFREG | 0o600, 0, 0))
        goals_before = await sample_goals(user, tree)
        count_before = await inodes(user)

        result, answered = await during(root_client, root.inode,
                                        user.op(m.SetGoal(tree, 5, True)))
        assert isinstance(result, FsError) and result.status == errno.EPERM, result
        assert answered >= 3
        assert await sample_goals(user, tree) == goals_before != {5}

        result, _ = await during(root_client, root.inode,
                                 user.op(m.SetTrashTime(tree, 60, True)))
        assert isinstance(result, FsError) and result.status == errno.EPERM, result
        assert (await user.stat("/u/big/f00000000")).trashtime != 60

        result, answered = await during(
            root_client, root.inode,
            user.op(m.Snapshot(tree, u.inode, b"stolen", USER, USER)))
        assert isinstance(result, FsError) and result.status == errno.EACCES, result
        assert answered >= 3
        assert not await user.exists("/u/stolen")
        assert await inodes(user) == count_before

        # root may: no walk, the whole tree changes
        await root_client.op(m.SetGoal(tree, 2, True))
        assert await sample_goals(user, tree) == {2}
        assert (await root_client.stat("/u/big/zz-roots")).goal == 2
    finally:
        await root_client.close()
        await user.close()
