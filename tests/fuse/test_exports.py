"""mfsexports.cfg with a real master, real mounts and the client library.

Every client connects from an address of its own (`mfsbind`, `Client.connect(bind=)`), so
one cluster serves every case: allowed, read-only, a refused range, a subtree as the root
(no way out by `..`, symlinks or inode numbers), maproot and mapall, passwords (right,
wrong, and never on the wire), goal and trash-time ranges, the meta file system, admin
commands, and `mfsmaster reload` (a session that lost its right gets EACCES, the others
go on without reconnecting; a broken file is refused naming its line).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile

import pytest

from elkfs.client import Client
from elkfs.client.masters import master_admin
from elkfs.proto import messages as m
from elkfs.proto import rpc
from elkfs.proto.errors import FsError
from elkfs.testing.cluster import Cluster

from .mounted import unmount
from .util import as_user

NET = "127.0.87"
BIN = os.path.dirname(sys.executable)
PASSWORD = "letmein"

RULES = """\
# the integration test's exports: one address range per case
127.0.0.1        /      ro
127.0.72.0/24    /      rw,alldirs,maproot=0,admin
127.0.73.5       /      ro,maproot=0
127.0.75.0/24    /sub   rw,maproot=0
127.0.76.0/24    /      rw,maproot=nobody
127.0.77.0/24    /      rw,maproot=0,mapall=1234:1234
127.0.78.0/24    /      rw,maproot=0,password=letmein
127.0.79.0/24    /      rw,maproot=0,mingoal=2,maxgoal=3,mintrashtime=1h,maxtrashtime=1d
127.0.80.0/24    /      rw,maproot=0
127.0.81.0/24    .      rw
"""


class Mounts:
    def __init__(self, cluster: Cluster, base: str):
        self.cluster = cluster
        self.base = base
        self.pids: dict[str, int | None] = {}

    def mount(self, name: str, *options: str, ok: bool = True) -> str:
        """Mount the cluster at base/name with `options`; the mount point, or (ok False)
        mfsmount's error output."""
        mnt = os.path.join(self.base, name)
        os.makedirs(mnt, exist_ok=True)
        opts = ",".join((f"mfslogfile={self.base}/{name}.log", *options))
        r = subprocess.run([os.path.join(BIN, "mfsmount"), mnt, *self.cluster.mount_args(),
                            "-o", opts], capture_output=True, text=True, timeout=60)
        if not ok:
            assert r.returncode != 0, f"mounted although refused: {r.stdout}"
            return r.stderr
        assert r.returncode == 0, r.stderr
        self.pids[mnt] = None  # the meta file system has no .masterinfo
        if "mfsmeta" not in options:
            with open(os.path.join(mnt, ".masterinfo")) as f:
                self.pids[mnt] = json.load(f)["pid"]
        return mnt

    def unmount_all(self) -> None:
        for mnt, pid in self.pids.items():
            unmount(mnt, pid)


@contextlib.contextmanager
def cluster_with_exports(prefix: str, net: str, rules: str):
    """A one-master cluster started with `rules` as its mfsexports.cfg; yields the
    `Mounts` of it, all unmounted and the cluster gone afterwards."""
    base = tempfile.mkdtemp(prefix=prefix)
    os.chmod(base, 0o755)
    cluster = Cluster(os.path.join(base, "cluster"), net=net, chunkservers=2)
    os.makedirs(cluster.masters[0].data_dir)
    with open(exports_file(cluster), "w") as f:
        f.write(rules)
    mounts = Mounts(cluster, base)
    cluster.start()
    try:
        yield mounts
    finally:
        mounts.unmount_all()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def env():
    with cluster_with_exports("elkfs-exports-", NET, RULES) as mounts:
        mounts.main = mounts.mount("main", "mfsbind=127.0.72.5")  # read-write, everything
        yield mounts


def exports_file(cluster: Cluster) -> str:
    return os.path.join(os.path.dirname(cluster.masters[0].cfg_path), "mfsexports.cfg")


async def client(env, bind: str, **kw) -> Client:
    return await Client.connect(*env.cluster.master_addr, info="exports test", bind=bind,
                                retry_s=5.0, **kw)


def write(path: str, data: bytes = b"data") -> None:
    with open(path, "wb") as f:
        f.write(data)


def errno_of(fn, *args) -> int:
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    return 0


def tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, args[0]), *args[1:]], capture_output=True,
                          text=True, timeout=60)


# ---------------------------------------------------------------- the cases


def test_allowed_read_write(env):
    write(os.path.join(env.main, "hello"), b"hi")
    with open(os.path.join(env.main, "hello"), "rb") as f:
        assert f.read() == b"hi"


def test_read_only_export(env):
    write(os.path.join(env.main, "ro-file"), b"before")
    mnt = env.mount("ro", "mfsbind=127.0.73.5")
    with open(os.path.join(mnt, "ro-file"), "rb") as f:
        assert f.read() == b"before"
    assert errno_of(write, os.path.join(mnt, "new")) == errno.EROFS
    assert errno_of(os.mkdir, os.path.join(mnt, "dir")) == errno.EROFS
    assert errno_of(os.unlink, os.path.join(mnt, "ro-file")) == errno.EROFS
    assert errno_of(os.chmod, os.path.join(mnt, "ro-file"), 0o600) == errno.EROFS
    assert errno_of(write, os.path.join(mnt, "ro-file"), b"after") == errno.EROFS
    with open(os.path.join(env.main, "ro-file"), "rb") as f:
        assert f.read() == b"before"


async def test_address_out_of_every_range_is_refused(env):
    err = env.mount("nowhere", "mfsbind=127.0.74.5", ok=False)
    assert "refused" in err and "no export of / for this address" in err, err
    with pytest.raises(FsError) as e:
        await client(env, "127.0.74.5")
    assert e.value.status == errno.EACCES


async def test_subtree_is_the_root(env):
    sub = os.path.join(env.main, "sub")
    os.makedirs(os.path.join(sub, "deeper"))
    write(os.path.join(sub, "inner"), b"inside")
    write(os.path.join(env.main, "secret"), b"outside")
    os.symlink("/secret", os.path.join(sub, "abs"))
    os.symlink("../secret", os.path.join(sub, "rel"))
    mnt = env.mount("subtree", "mfsbind=127.0.75.5", "mfssubfolder=/sub")
    assert sorted(n for n in os.listdir(mnt) if not n.startswith(".")) == \
        ["abs", "deeper", "inner", "rel"]
    with open(os.path.join(mnt, "inner"), "rb") as f:
        assert f.read() == b"inside"
    # symlinks resolve on the client against its own root: neither reaches /secret of ElkFS
    for link in ("abs", "rel"):
        path = os.path.join(mnt, link)
        try:
            with open(path, "rb") as f:
                assert f.read() != b"outside"
        except OSError as e:
            assert e.errno == errno.ENOENT
    assert os.path.realpath(os.path.join(mnt, "..")) == os.path.realpath(env.base)
    # only /sub itself: not "/", not below it (no alldirs)
    assert "no export of / " in env.mount("sub-root", "mfsbind=127.0.75.5", ok=False)
    assert "no export of /sub/deeper" in env.mount("sub-deeper", "mfsbind=127.0.75.5",
                                                   "mfssubfolder=/sub/deeper", ok=False)

    # the protocol itself: ".." at the root stays there, foreign inodes are refused
    outside = await client(env, "127.0.72.9")
    secret = await outside.stat("/secret")
    await outside.close()
    c = await client(env, "127.0.75.9", subfolder="/sub")
    try:
        root = await c.stat("/")
        assert root.inode == c.link.root != 1
        assert (await c.lookup(root.inode, b"..")).inode == root.inode
        assert (await c.stat("/../../inner")).size == 6
        for op in (m.GetAttr(secret.inode), m.GetAttr(1), m.ReadDir(1),
                   m.ReadChunk(secret.inode, 0), m.Lookup(1, b"secret"),
                   m.Link(secret.inode, root.inode, b"stolen")):
            with pytest.raises(FsError) as e:
                await c.op(op)
            assert e.value.status == errno.EACCES, op
        with pytest.raises(FsError) as e:
            await c.stat("/secret")
        assert e.value.status == errno.ENOENT
    finally:
        await c.close()


async def test_maproot(env):
    mnt = env.mount("maproot", "mfsbind=127.0.76.5")
    nobody = pwd.getpwnam("nobody")
    # root of this mount acts as nobody: the master refuses it root's directories
    assert errno_of(write, os.path.join(mnt, "not-here")) == errno.EACCES
    shared = os.path.join(env.main, "maproot-shared")
    os.mkdir(shared)
    os.chmod(shared, 0o777)
    write(os.path.join(mnt, "maproot-shared", "by-root"))
    os.mkdir(os.path.join(mnt, "maproot-shared", "dir-by-root"))
    for name in ("by-root", "dir-by-root"):
        st = os.stat(os.path.join(shared, name))  # as the master stored it
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    write(os.path.join(env.main, "root-here"))  # maproot=0 for the main mount
    assert os.stat(os.path.join(env.main, "root-here")).st_uid == 0


async def test_mapall(env):
    mnt = env.mount("mapall", "mfsbind=127.0.77.5")
    shared = os.path.join(env.main, "mapall-shared")
    os.mkdir(shared)
    os.chmod(shared, 0o777)
    # a new file, as user nobody (not `touch`: setting the times of a file one does not
    # own is refused by the mount, which sees the mapped owner; docs/security.md)
    target = os.path.join(mnt, "mapall-shared", "by-user")
    as_user(f"open({target!r}, 'x').write('x')")
    st = os.stat(os.path.join(shared, "by-user"))
    assert (st.st_uid, st.st_gid) == (1234, 1234)
    write(os.path.join(mnt, "by-root-mapall"))  # root is maproot's business: 0 here
    assert os.stat(os.path.join(env.main, "by-root-mapall")).st_uid == 0
    c = await client(env, "127.0.77.9")
    try:
        c.uid, c.gid = 1000, 1000
        assert (await c.mkdir("/made-by-1000")).uid == 1234
    finally:
        await c.close()


async def test_password(env):
    assert "password required" in env.mount("pw-none", "mfsbind=127.0.78.5", ok=False)
    assert "wrong password" in env.mount("pw-wrong", "mfsbind=127.0.78.5",
                                         "mfspassword=letmeout", ok=False)
    mnt = env.mount("pw-right", "mfsbind=127.0.78.5", f"mfspassword={PASSWORD}")
    write(os.path.join(mnt, "with-password"))
    md5 = hashlib.md5(PASSWORD.encode()).hexdigest()
    mnt2 = env.mount("pw-md5", "mfsbind=127.0.78.6", f"mfsmd5pass={md5}")
    assert os.path.exists(os.path.join(mnt2, "with-password"))


async def test_password_never_on_the_wire(env):
    """Every byte between a client and the master, through a relay: neither the password
    nor its MD5 (raw or hex) is there, and a replayed registration proves nothing."""
    master = env.cluster.master_addr
    seen: list[bytes] = []

    async def pipe(reader, writer):
        while data := await reader.read(65536):
            seen.append(data)
            writer.write(data)
            await writer.drain()
        writer.close()

    async def relay(reader, writer):
        up_r, up_w = await asyncio.open_connection(*master, local_addr=("127.0.78.7", 0))
        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer), return_exceptions=True)

    server = await asyncio.start_server(relay, "127.0.78.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        c = await Client.connect("127.0.78.1", port, password=PASSWORD, retry_s=5.0)
        assert (await c.stat("/with-password")).size == 4
        await c.close()
    finally:
        server.close()
    wire = b"".join(seen)
    digest = hashlib.md5(PASSWORD.encode()).digest()
    assert len(wire) > 100
    for secret in (PASSWORD.encode(), digest, digest.hex().encode()):
        assert secret not in wire
    # The answer given on one connection is worth nothing on another (a new challenge).
    proof = [msg.proof for msg in _registrations(wire)]
    assert proof and all(proof)
    conn = await rpc.connect(*master, local_host="127.0.78.8")
    try:
        await conn.call(m.SessionChallenge, timeout=5)
        reply, _ = await conn.call(m.RegisterSession, session=b"", info="replay",
                                   proof=proof[0], timeout=5)
        assert reply.status == errno.EACCES and reply.detail == "wrong password"
    finally:
        conn.close()


def _registrations(wire: bytes) -> list[m.RegisterSession]:
    """The RegisterSession messages in a client's byte stream."""
    import msgspec

    from elkfs.proto.frames import HEADER_SIZE, parse_header

    found, pos = [], 0
    decoder = msgspec.msgpack.Decoder(m.RegisterSession)
    while pos + HEADER_SIZE <= len(wire):
        msg_type, _, meta_len, data_len = parse_header(wire[pos:pos + HEADER_SIZE])
        body = wire[pos + HEADER_SIZE:pos + HEADER_SIZE + meta_len]
        if msg_type == m.RegisterSession.TYPE:
            found.append(decoder.decode(body))
        pos += HEADER_SIZE + meta_len + data_len
    return found


async def test_goal_and_trash_time_ranges(env):
    mnt = env.mount("goals", "mfsbind=127.0.79.5")
    f = os.path.join(mnt, "ranged")
    write(f)
    for goal, ok in (("1", False), ("4", False), ("2", True), ("3", True)):
        r = tool("mfssetgoal", goal, f)
        assert (r.returncode == 0) == ok, (goal, r.stdout, r.stderr)
        if not ok:
            assert "Operation not permitted" in r.stdout + r.stderr
    assert tool("mfsgetgoal", f).stdout == f"{f}: 3\n"
    assert tool("mfssettrashtime", "0", f).returncode != 0
    assert tool("mfssettrashtime", "90000", f).returncode != 0
    assert tool("mfssettrashtime", "7200", f).returncode == 0
    assert tool("mfsgettrashtime", f).stdout == f"{f}: 7200\n"
    # the main mount's export has no range
    assert tool("mfssetgoal", "1", os.path.join(env.main, "ranged")).returncode == 0


async def test_meta_file_system(env):
    write(os.path.join(env.main, "to-trash"))
    os.unlink(os.path.join(env.main, "to-trash"))
    c = await client(env, "127.0.81.5", meta=True)
    try:
        assert b"to-trash" in [e.path for e in await c.list_trash()]
        with pytest.raises(FsError) as e:
            await c.op(m.GetAttr(1))
        assert e.value.status == errno.EACCES
    finally:
        await c.close()
    with pytest.raises(FsError) as e:  # no "." line for this range
        await client(env, "127.0.72.6", meta=True)
    assert e.value.status == errno.EACCES
    with pytest.raises(FsError):  # and the "." range has no normal export
        await client(env, "127.0.81.6")
    mnt = env.mount("meta", "mfsbind=127.0.81.7", "mfsmeta")
    assert "trash" in os.listdir(mnt)


async def test_admin_commands_need_admin(env):
    cs = f"{env.cluster.chunkservers[0].host}:{env.cluster.chunkservers[0].port}"
    with pytest.raises(FsError) as e:  # 127.0.0.1: read-only, no admin
        await master_admin(env.cluster.master_host, "maintenance-on", cs)
    assert e.value.status == errno.EACCES
    conn = await rpc.connect(*env.cluster.master_addr, local_host="127.0.72.7")
    try:
        for command in ("maintenance-on", "maintenance-off"):
            reply, _ = await conn.call(m.MasterAdmin, command=command, target=cs, timeout=10)
            assert json.loads(reply.result.text)["chunkserver"] == cs
    finally:
        conn.close()


def test_reload(env):
    """The last test: it changes the rules (and puts them back)."""
    keep = env.mount("reload-keep", "mfsbind=127.0.80.6")
    lose = env.mount("reload-lose", "mfsbind=127.0.80.5")
    write(os.path.join(keep, "k0"))
    write(os.path.join(lose, "l0"))
    cfg = env.cluster.masters[0].cfg_path
    path = exports_file(env.cluster)

    def reload(rules: str) -> subprocess.CompletedProcess:
        with open(path, "w") as f:
            f.write(rules)
        return subprocess.run([os.path.join(BIN, "mfsmaster"), "-c", cfg, "reload"],
                              capture_output=True, text=True, timeout=60)

    narrowed = RULES.replace("127.0.80.0/24    /      rw,maproot=0",
                             "127.0.80.6       /      rw,maproot=0")
    assert narrowed != RULES
    assert reload(narrowed).returncode == 0
    _until(lambda: errno_of(write, os.path.join(lose, "l1")) == errno.EACCES)
    assert errno_of(os.mkdir, os.path.join(lose, "d")) == errno.EACCES
    write(os.path.join(keep, "k1"), b"still")  # untouched: same session, no remount
    with open(os.path.join(keep, "k1"), "rb") as f:
        assert f.read() == b"still"

    broken = narrowed + "127.0.80.7 / rw,turbo\n"
    r = reload(broken)
    assert r.returncode == 1
    lineno = len(broken.splitlines())
    assert f"mfsexports.cfg:{lineno}: unknown option 'turbo'" in r.stderr, r.stderr
    # SIGHUP behind the tool's back: the master refuses the file too, the rules stay
    env.cluster.signal(env.cluster.masters[0], __import__("signal").SIGHUP)
    write(os.path.join(keep, "k2"))
    assert errno_of(write, os.path.join(lose, "l2")) == errno.EACCES
    log = os.path.join(env.cluster.masters[0].data_dir, "mfsmaster.log")
    _until(lambda: "unknown option 'turbo'" in open(log).read())

    assert reload(RULES).returncode == 0  # given back: the same session works again
    _until(lambda: errno_of(write, os.path.join(lose, "l3")) == 0)
    with open(os.path.join(env.base, "reload-keep.log")) as f:
        assert "connection lost" not in f.read()  # the kept mount never reconnected


def _until(check, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def test_bad_exports_file_stops_the_start(tmp_path):
    exports = tmp_path / "mfsexports.cfg"
    exports.write_text("* / rw\n10.0.0.0/33 / rw\n")
    cfg = tmp_path / "mfsmaster.cfg"
    cfg.write_text(f"DATA_PATH = {tmp_path}\nMATOCL_LISTEN_HOST = {NET}.90\n"
                   f"MATOCS_LISTEN_HOST = {NET}.90\nHTTP_LISTEN_HOST = {NET}.90\n")
    r = subprocess.run([os.path.join(BIN, "mfsmaster"), "-c", str(cfg), "start"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"{exports}:2: netmask /33 is more than 32 bits" in r.stderr, r.stderr
