"""The client tools on a password mount across a failover: the tool token lives in the
leader's memory only; the mount registers again with the new leader (a new token, on both
sides), the tools run by root go on with it, and the old token is refused.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from elkfs.client import Client
from elkfs.proto import messages as m
from elkfs.proto.errors import FsError
from elkfs.testing.cluster import Cluster

from .test_exports import Mounts

NET = "127.0.96"
BIN = os.path.dirname(sys.executable)
PASSWORD = "ha-tools"
RULES = f"""\
127.0.0.1        /      ro
127.0.97.0/24    /      rw,alldirs,maproot=0,password={PASSWORD}
"""


def tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, args[0]), *args[1:]], capture_output=True,
                          text=True, timeout=120, cwd="/")


def read_token(mnt: str) -> tuple[bytes, bytes]:
    with open(os.path.join(mnt, ".mastertoken")) as f:
        session, token = f.read().split()
    return bytes.fromhex(session), bytes.fromhex(token)


async def test_tools_across_a_failover():
    base = tempfile.mkdtemp(prefix="elkfs-toolsessions-ha-")
    os.chmod(base, 0o755)
    cluster = Cluster(os.path.join(base, "c"), net=NET, masters=2, chunkservers=2, ha=True)
    for d in cluster.masters:
        os.makedirs(d.data_dir)
        with open(os.path.join(d.data_dir, "mfsexports.cfg"), "w") as f:
            f.write(RULES)
    mounts = Mounts(cluster, base)
    cluster.start()
    try:
        first = cluster.wait_leader(30)
        mnt = mounts.mount("pw", "mfsbind=127.0.97.5", f"mfspassword={PASSWORD}")
        f = os.path.join(mnt, "file")
        with open(f, "wb") as fh:
            fh.write(b"data")
        r = tool("mfssetgoal", "2", f)
        assert r.returncode == 0, r.stderr
        session, old = read_token(mnt)

        cluster.kill(first)
        cluster.wait_leader(60, other_than=first)
        r = tool("mfsgetgoal", f)
        assert (r.returncode, r.stdout) == (0, f"{f}: 2\n"), r.stderr
        assert tool("mfssetgoal", "1", f).returncode == 0
        new_session, new = read_token(mnt)
        assert new_session == session and new != old

        with pytest.raises(FsError) as e:
            await Client.connect(**cluster.client_args(), info="old token",
                                 bind="127.0.97.5", retry_s=5.0,
                                 attach=lambda: (session, old))
        assert e.value.status == errno.EACCES and "wrong tool token" in e.value.detail
        c = await Client.connect(**cluster.client_args(), info="new token",
                                 bind="127.0.97.5", retry_s=5.0,
                                 attach=lambda: read_token(mnt))
        try:
            assert (await c.op(m.GetAttr(1))).attr.inode == 1
        finally:
            await c.close()
    finally:
        mounts.unmount_all()
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)
