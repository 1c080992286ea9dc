"""The client tools on a mount of an export with a password: run by root they ride on the
mount's session (its `.mastertoken`, proven to the master), with the mount's rights and no
more; anyone else gets a clear refusal; a forged or outlived token is refused; a reload
that takes the right away refuses the tools like the mount. Real master, real mounts, the
real tools (as root and as nobody).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from elkfs.client import Client
from elkfs.proto import messages as m
from elkfs.proto import rpc
from elkfs.proto.errors import FsError
from elkfs.proto.password import password_proof

from .mounted import unmount
from .test_exports import cluster_with_exports, exports_file
from .util import NOBODY

NET = "127.0.92"
BIN = os.path.dirname(sys.executable)
PASSWORD = "s3cret-tools"

RULES = f"""\
127.0.0.1        /      ro
127.0.93.0/24    /      rw,alldirs,maproot=0,password={PASSWORD}
127.0.94.0/24    /      rw,maproot=0
127.0.95.0/24    /      rw,alldirs,maproot=0,maxgoal=3,password={PASSWORD}
127.0.98.0/24    /      rw,alldirs,maproot=nobody,password={PASSWORD}
"""


@pytest.fixture(scope="module")
def env():
    with cluster_with_exports("elkfs-toolsessions-", NET, RULES) as mounts:
        mounts.pw = mounts.mount("pw", "mfsbind=127.0.93.5", f"mfspassword={PASSWORD}")
        mounts.open = mounts.mount("open", "mfsbind=127.0.94.5")
        yield mounts


def tool(*args: str, uid: int | None = None) -> subprocess.CompletedProcess:
    cmd = [os.path.join(BIN, args[0]), *args[1:]]
    if uid is not None:
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")


def write(path: str, data: bytes = b"data") -> None:
    with open(path, "wb") as f:
        f.write(data)


def read_token(mnt: str) -> tuple[bytes, bytes]:
    with open(os.path.join(mnt, ".mastertoken")) as f:
        session, token = f.read().split()
    return bytes.fromhex(session), bytes.fromhex(token)


async def attached(env, bind: str, attach) -> Client:
    return await Client.connect(*env.cluster.master_addr, info="attach test", bind=bind,
                                retry_s=3.0, attach=attach)


def master_log(env) -> str:
    with open(os.path.join(env.cluster.masters[0].data_dir, "mfsmaster.log")) as f:
        return f.read()


# ---------------------------------------------------------------- the cases


def test_root_tools_ride_on_the_mounts_session(env):
    d = os.path.join(env.pw, "root-tools")
    os.makedirs(os.path.join(d, "sub"))
    f = os.path.join(d, "sub", "file")
    write(f, b"x" * 1000)
    r = tool("mfssetgoal", "-r", "2", d)
    assert r.returncode == 0, r.stderr
    r = tool("mfsgetgoal", f)
    assert (r.returncode, r.stdout) == (0, f"{f}: 2\n"), r.stderr
    r = tool("mfsfileinfo", f)
    assert r.returncode == 0 and "chunk 0:" in r.stdout, r.stdout + r.stderr
    r = tool("mfscheckfile", f)
    assert r.returncode == 0, r.stderr
    r = tool("mfsdirinfo", d)
    assert r.returncode == 0 and "files:" in r.stdout and "1" in r.stdout, r.stdout + r.stderr
    r = tool("mfssettrashtime", "3600", f)
    assert r.returncode == 0, r.stderr
    assert tool("mfsgettrashtime", f).stdout == f"{f}: 3600\n"
    r = tool("mfscli", "-S", "IG", "--json", d)
    assert r.returncode == 0 and '"info"' in r.stdout, r.stderr
    r = tool("mfsmakesnapshot", f, os.path.join(d, "snap"))
    assert r.returncode == 0, r.stderr
    with open(os.path.join(d, "snap"), "rb") as fh:
        assert fh.read() == b"x" * 1000


def test_tools_keep_the_mounts_limits(env):
    """A tool session gets the mount's rule (here maxgoal=3), not more."""
    mnt = env.mount("ranged", "mfsbind=127.0.95.5", f"mfspassword={PASSWORD}")
    f = os.path.join(mnt, "ranged-file")
    write(f)
    assert tool("mfssetgoal", "3", f).returncode == 0
    r = tool("mfssetgoal", "4", f)
    assert r.returncode == 1 and "goal must be 1-3" in r.stderr, r.stderr


def test_tools_keep_the_mounts_maproot(env):
    """Root's tools act as the mount's root does: here as nobody (maproot=nobody)."""
    f = os.path.join(env.pw, "roots-file")  # root's, through a maproot=0 mount
    write(f)
    assert tool("mfssetgoal", "3", f).returncode == 0
    mnt = env.mount("maproot", "mfsbind=127.0.98.5", f"mfspassword={PASSWORD}")
    r = tool("mfsgetgoal", os.path.join(mnt, "roots-file"))
    assert r.returncode == 0, r.stderr
    r = tool("mfssetgoal", "2", os.path.join(mnt, "roots-file"))
    assert r.returncode == 1 and "only the owner" in r.stderr, r.stderr
    assert tool("mfsgetgoal", f).stdout == f"{f}: 3\n"


def test_other_users_are_refused_clearly(env):
    f = os.path.join(env.pw, "for-nobody")
    write(f)
    os.chmod(f, 0o644)
    # they see where the master is, but not the token
    with open(os.path.join(env.pw, ".masterinfo")) as fh:
        assert "token" not in fh.read()
    st = os.stat(os.path.join(env.pw, ".mastertoken"))
    assert (st.st_mode & 0o777, st.st_uid) == (0o400, 0)
    r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                        "cat", os.path.join(env.pw, ".mastertoken")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Permission denied" in r.stderr, r
    for args in (("mfsgetgoal", f), ("mfssetgoal", "2", f), ("mfsfileinfo", f),
                 ("mfsdirinfo", env.pw), ("mfsmakesnapshot", f, f + "-snap"),
                 ("mfscli", "-S", "IG", env.pw)):
        r = tool(*args, uid=NOBODY)
        assert r.returncode == 1, (args, r)
        assert "this export needs a password: run the tool as root" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_no_password_export_needs_no_token(env):
    assert not os.path.exists(os.path.join(env.open, ".mastertoken"))
    f = os.path.join(env.open, "open-file")
    write(f)
    os.chown(f, NOBODY, NOBODY)  # setting a goal is the owner's business
    r = tool("mfssetgoal", "2", f, uid=NOBODY)  # as today: a session of its own
    assert r.returncode == 0, r.stderr
    assert tool("mfsgetgoal", f, uid=NOBODY).stdout == f"{f}: 2\n"
    assert tool("mfsgetgoal", f).stdout == f"{f}: 2\n"


async def test_forged_and_outlived_tokens_are_refused(env):
    session, token = read_token(env.pw)
    forged = bytes(b ^ 1 for b in token)
    for attach in (lambda: (session, forged), lambda: (os.urandom(16), token),
                   lambda: (session, b"")):
        with pytest.raises(FsError) as e:
            await attached(env, "127.0.93.5", attach)
        assert e.value.status == errno.EACCES
    # the right one from another address, even one the same rule allows
    with pytest.raises(FsError) as e:
        await attached(env, "127.0.93.9", lambda: (session, token))
    assert e.value.status == errno.EACCES and "mount's address" in e.value.detail
    # the right one, from the mount's address: the mount's root, rights, everything
    c = await attached(env, "127.0.93.5", lambda: (session, token))
    try:
        assert (await c.op(m.GetAttr(1))).attr.inode == 1
    finally:
        await c.close()
    # a mount that is gone: its token is worth nothing, and the tool sessions that rode
    # on it are refused from their next request
    mnt = env.mount("short-lived", "mfsbind=127.0.93.6", f"mfspassword={PASSWORD}")
    old = read_token(mnt)
    c = await attached(env, "127.0.93.6", lambda: old)
    try:
        await c.op(m.GetAttr(1))
        unmount(mnt, env.pids.pop(mnt))
        with pytest.raises(FsError) as e:
            await c.op(m.GetAttr(1))
        assert e.value.status == errno.EACCES and "session has ended" in e.value.detail
    finally:
        await c.close()
    with pytest.raises(FsError) as e:
        await attached(env, "127.0.93.6", lambda: old)
    assert e.value.status == errno.EACCES
    # a tool may not take the mount's session over
    conn = await rpc.connect(*env.cluster.master_addr, local_host="127.0.93.5")
    try:
        challenge, _ = await conn.call(m.SessionChallenge, timeout=5)
        reply, _ = await conn.call(m.RegisterSession, session=session, info="takeover",
                                   attach=session, timeout=5,
                                   proof=password_proof(token, challenge.nonce))
        assert reply.status == errno.EINVAL
    finally:
        conn.close()
    assert os.path.exists(os.path.join(env.pw, "for-nobody"))  # the mount goes on
    logs = [master_log(env)]
    for name in ("pw", "short-lived"):
        with open(os.path.join(env.base, f"{name}.log")) as fh:
            logs.append(fh.read())
    for secret in (token, old[1]):
        for log in logs:
            assert secret.hex() not in log


async def test_a_master_restart_makes_a_new_token(env):
    """The token lives in memory only: after a restart (or a failover) the mount registers
    again with a new one; the old one is refused, and a tool, or a running tool session,
    reads the new one and goes on."""
    f = os.path.join(env.pw, "across-restart")
    write(f)
    session, old = read_token(env.pw)
    c = await attached(env, "127.0.93.5", lambda: read_token(env.pw))
    try:
        await c.op(m.GetAttr(1))
        env.cluster.restart(env.cluster.masters[0])
        # the running tool session first: reading the token makes the mount register again
        assert (await c.op(m.GetAttr(1))).attr.inode == 1
    finally:
        await c.close()
    new_session, new = read_token(env.pw)
    assert (new_session, new != old) == (session, True)
    r = tool("mfsgetgoal", f)
    assert r.returncode == 0, r.stderr
    with pytest.raises(FsError) as e:
        await attached(env, "127.0.93.5", lambda: (session, old))
    assert e.value.status == errno.EACCES and "wrong tool token" in e.value.detail


async def test_reload_takes_the_tools_right_away(env):
    """The last test: it changes the rules (and puts them back)."""
    mnt = env.mount("reload", "mfsbind=127.0.93.7", f"mfspassword={PASSWORD}")
    f = os.path.join(mnt, "reload-file")
    write(f)
    assert tool("mfsgetgoal", f).returncode == 0
    token = read_token(mnt)
    c = await attached(env, "127.0.93.7", lambda: token)  # a tool's session, running
    cfg = env.cluster.masters[0].cfg_path

    def reload(rules: str) -> None:
        with open(exports_file(env.cluster), "w") as fh:
            fh.write(rules)
        r = subprocess.run([os.path.join(BIN, "mfsmaster"), "-c", cfg, "reload"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr

    try:
        await c.op(m.GetAttr(1))
        narrowed = RULES.replace("127.0.93.0/24 ", "127.0.93.5    ")
        assert narrowed != RULES
        reload(narrowed)
        _until(lambda: tool("mfsgetgoal", f).returncode == 1)
        with pytest.raises(FsError) as e:
            await c.op(m.GetAttr(1))
        assert e.value.status == errno.EACCES and "no longer allowed" in e.value.detail
        with pytest.raises(FsError) as e:
            await attached(env, "127.0.93.7", lambda: token)
        assert e.value.status == errno.EACCES
        kept = os.path.join(env.pw, "for-nobody")
        assert tool("mfsgetgoal", kept).returncode == 0  # 127.0.93.5 is still allowed
        reload(RULES)
        _until(lambda: tool("mfsgetgoal", f).returncode == 0)
        await c.op(m.GetAttr(1))  # given back, like the mount
    finally:
        await c.close()


def _until(check, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.2)
