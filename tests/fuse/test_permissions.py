"""The mount's own permission checks (elkfs/mount/perms.py, no `default_permissions`) give
another user the same answers as the kernel gives on a local file system.

The same tree is made by root on the mount and in a local directory, then one script runs
as `nobody` (with one supplementary group) on both and records, call by call, "ok" or the
errno; the two records must be equal. The tree covers each rule: read/write/execute bits
for owner, group and others, search and list permission on directories (also through names
root has just looked up, which the kernel may have cached), create and remove in
directories, the sticky bit, moving a directory to another parent, chmod (and its set-group-ID
rule), chown/chgrp, utimes (explicit and now), truncate, user.* extended attributes,
access(), chdir, hard links (fs.protected_hardlinks), and a write clearing set-user-ID.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from .mounted import MountedCluster
from .util import NOBODY

NET = "127.0.38"
CHUNKSERVERS = 1
GROUP = 1234  # a supplementary group of the user running the checks

SETUP = f"""
import os, stat
def w(p, data=b"data", mode=0o644, uid=0, gid=0):
    with open(p, "wb") as f:
        f.write(data)
    os.chown(p, uid, gid)
    os.chmod(p, mode)
def d(p, mode, uid=0, gid=0):
    os.mkdir(p)
    os.chown(p, uid, gid)
    os.chmod(p, mode)
w("secret", mode=0o600)
w("public")
w("groupw", mode=0o664, gid={GROUP})
w("exec_owner", b"#!/bin/sh\\nexit 0\\n", 0o744)
w("exec_all", b"#!/bin/sh\\nexit 0\\n", 0o755)
w("suid", mode=0o6777)
w("xattr_pub")
os.setxattr("xattr_pub", "user.a", b"A")
w("xattr_w", mode=0o666)
w("nobodys", uid={NOBODY})
w("tomove")
d("closed", 0o700)
w("closed/inner")
d("listonly", 0o744)
w("listonly/f")
d("searchonly", 0o711)
w("searchonly/f")
d("open", 0o777)
d("open2", 0o777)
w("open/roots")
d("open/rootdir", 0o755)
d("open/rootdir_b", 0o755)
d("sticky", 0o1777)
w("sticky/roots", mode=0o666)
d("sgid", 0o2777, gid={GROUP})
def special(p, kind, mode, dev=0):
    if kind == "sock":
        import socket
        s = socket.socket(socket.AF_UNIX)
        s.bind(p)
        s.close()
    else:
        os.mknod(p, kind | 0o600, dev)
    os.chmod(p, mode)
special("fifo_secret", stat.S_IFIFO, 0o600)
special("fifo_ro", stat.S_IFIFO, 0o644)
special("fifo_acl", stat.S_IFIFO, 0o600)
import subprocess
subprocess.run(["setfacl", "-m", "u:{NOBODY}:rw", "fifo_acl"], check=True)
special("dev_secret", stat.S_IFCHR, 0o600, os.makedev(1, 3))  # /dev/null's numbers
special("dev_pub", stat.S_IFCHR, 0o666, os.makedev(1, 3))
special("sock_secret", "sock", 0o600)
special("sock_pub", "sock", 0o666)
"""

# Run as nobody; prints a JSON object label -> "ok" / errno name / value.
CHECKS = """
import errno, json, os, stat, subprocess, sys
out = {}
def t(label, fn, *a):
    try:
        r = fn(*a)
        out[label] = "ok" if r is None or r is True else r
    except OSError as e:
        out[label] = errno.errorcode[e.errno]
def rd(p):
    with open(p, "rb") as f:
        return f.read().decode()
def wr(p, flags=os.O_WRONLY):
    os.close(os.open(p, flags))
def app(p):
    with open(p, "ab") as f:
        f.write(b"+")
def mode(p):
    return oct(os.stat(p).st_mode)
def gid(p):
    return os.stat(p).st_gid
def run(p):
    return subprocess.run([p]).returncode
def mkfifo(p):
    os.mkfifo(p)
def op(p, flags):
    os.close(os.open(p, flags))
def connect(p):
    import socket
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(p)
def chdir(p):
    old = os.getcwd()
    os.chdir(p)
    os.chdir(old)
t("stat closed/inner (root just looked it up)", os.stat, "closed/inner")
t("read closed/inner", rd, "closed/inner")
t("stat closed/moved (root just moved it there)", os.stat, "closed/moved")
t("list closed", os.listdir, "closed")
t("chdir closed", chdir, "closed")
t("read secret", rd, "secret")
t("read public", rd, "public")
t("write public", wr, "public")
t("O_RDONLY|O_TRUNC public", wr, "public", os.O_RDONLY | os.O_TRUNC)
t("append groupw (group member)", app, "groupw")
t("exec exec_owner", run, "./exec_owner")
t("exec exec_all", run, "./exec_all")
t("list listonly", lambda: sorted(os.listdir("listonly")))
t("stat listonly/f", os.stat, "listonly/f")
t("list searchonly", os.listdir, "searchonly")
t("read searchonly/f", rd, "searchonly/f")
t("chdir searchonly", chdir, "searchonly")
t("create in base", wr, "new", os.O_CREAT | os.O_WRONLY)
t("mkdir in base", os.mkdir, "newdir")
t("symlink in base", os.symlink, "public", "newlink")
t("mkfifo in base", mkfifo, "newfifo")
t("create in open", wr, "open/mine", os.O_CREAT | os.O_WRONLY)
t("mkdir in open", os.mkdir, "open/mydir")
t("unlink public", os.unlink, "public")
t("unlink open/roots", os.unlink, "open/roots")
t("rename open/rootdir within open", os.rename, "open/rootdir", "open/rootdir2")
t("rename open/rootdir_b to open2", os.rename, "open/rootdir_b", "open2/rootdir_b")
t("rename own dir to open2", os.rename, "open/mydir", "open2/mydir")
t("rmdir open/rootdir2", os.rmdir, "open/rootdir2")
t("unlink sticky/roots", os.unlink, "sticky/roots")
t("rename sticky/roots", os.rename, "sticky/roots", "sticky/moved")
t("write sticky/roots", app, "sticky/roots")
t("create sticky/mine", wr, "sticky/mine", os.O_CREAT | os.O_WRONLY)
t("unlink sticky/mine", os.unlink, "sticky/mine")
t("chmod public", os.chmod, "public", 0o666)
t("chmod nobodys", os.chmod, "nobodys", 0o600)
t("chmod nobodys g+s (group 0: not a member)", os.chmod, "nobodys", 0o2755)
t("mode nobodys", mode, "nobodys")
t("chown nobodys to root", os.chown, "nobodys", 0, -1)
t("chgrp nobodys to 0", os.chown, "nobodys", -1, 0)
t("chgrp nobodys to member group", os.chown, "nobodys", -1, int(sys.argv[1]))
t("chgrp public to member group", os.chown, "public", -1, int(sys.argv[1]))
t("utime public explicit", os.utime, "public", (1, 1))
t("utime public now", os.utime, "public", None)
t("utime xattr_w now", os.utime, "xattr_w", None)
t("utime xattr_w explicit", os.utime, "xattr_w", (1, 1))
t("utime nobodys explicit", os.utime, "nobodys", (5, 5))
t("truncate public", os.truncate, "public", 0)
t("truncate xattr_w", os.truncate, "xattr_w", 1)
t("getxattr secret user.a", os.getxattr, "secret", "user.a")
t("getxattr xattr_pub user.a", lambda: os.getxattr("xattr_pub", "user.a").decode())
t("setxattr xattr_pub", os.setxattr, "xattr_pub", "user.b", b"B")
t("removexattr xattr_pub", os.removexattr, "xattr_pub", "user.a")
t("setxattr xattr_w", os.setxattr, "xattr_w", "user.b", b"B")
t("access secret R", os.access, "secret", os.R_OK)
t("access public R", os.access, "public", os.R_OK)
t("access public W", os.access, "public", os.W_OK)
t("access exec_owner X", os.access, "exec_owner", os.X_OK)
t("access exec_all X", os.access, "exec_all", os.X_OK)
t("access closed X", os.access, "closed", os.X_OK)
t("link secret into open", os.link, "secret", "open/secret_link")
t("link xattr_w into open", os.link, "xattr_w", "open/xattr_w_link")
t("write suid", app, "suid")
t("mode suid", mode, "suid")
t("create sgid/f", wr, "sgid/f", os.O_CREAT | os.O_WRONLY)
t("gid sgid/f", gid, "sgid/f")
t("mkdir sgid/d", os.mkdir, "sgid/d")
t("mode sgid/d", mode, "sgid/d")
NB = os.O_NONBLOCK
t("read fifo_secret", op, "fifo_secret", os.O_RDONLY | NB)
t("read+write fifo_secret", op, "fifo_secret", os.O_RDWR)
t("write fifo_secret", op, "fifo_secret", os.O_WRONLY | NB)
t("O_PATH fifo_secret", op, "fifo_secret", os.O_PATH)
t("stat fifo_secret", mode, "fifo_secret")
t("access fifo_secret W", os.access, "fifo_secret", os.W_OK)
t("read fifo_ro", op, "fifo_ro", os.O_RDONLY | NB)
t("read+write fifo_ro", op, "fifo_ro", os.O_RDWR)
t("read+write fifo_acl (ACL names nobody)", op, "fifo_acl", os.O_RDWR)
t("read dev_secret", op, "dev_secret", os.O_RDONLY)
t("write dev_secret", op, "dev_secret", os.O_WRONLY)
t("read+write dev_pub", op, "dev_pub", os.O_RDWR)
t("connect sock_secret", connect, "sock_secret")
t("connect sock_pub", connect, "sock_pub")
t("stat sock_secret", mode, "sock_secret")
print(json.dumps(out))
"""


def _answers(base: str) -> dict:
    os.chmod(base, 0o755)
    subprocess.run([sys.executable, "-c", SETUP], cwd=base, check=True)
    os.stat(os.path.join(base, "tomove"))  # cached, then moved where it must not be
    os.rename(os.path.join(base, "tomove"), os.path.join(base, "closed", "moved"))
    time.sleep(0.2)  # the mount drops the moved name from the kernel's cache from a thread
    os.stat(os.path.join(base, "closed", "inner"))  # the kernel may now cache the name
    r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                        f"--groups={GROUP}", sys.executable, "-c", CHECKS, str(GROUP)],
                       cwd=base, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_another_user_gets_what_a_local_file_system_answers(d, local_answers):
    with open("/proc/self/mountinfo") as f:
        mount_opts = next(ln for ln in f if ln.split()[4] == os.path.dirname(d)).split()[5]
    assert "nodev" in mount_opts.split(",")  # as every FUSE mount unless -o dev
    want = _expected(local_answers, "")
    got = _answers(d)
    differ = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    assert not differ, f"mount vs local: {differ}"
    # The scenario must exercise refusals of both kinds, and the cached-name case.
    assert list(want.values()).count("EACCES") >= 10 and list(want.values()).count("EPERM") >= 5
    assert want["stat closed/inner (root just looked it up)"] == "EACCES"
    # FIFOs, devices and sockets: refused by their mode bits, allowed by mode or ACL
    refused = ("read fifo_secret", "read+write fifo_ro", "write dev_secret", "connect sock_secret")
    allowed = ("read fifo_ro", "read+write fifo_acl (ACL names nobody)", "read+write dev_pub",
               "O_PATH fifo_secret")
    assert [local_answers[k] for k in refused] == ["EACCES"] * len(refused)
    assert [local_answers[k] for k in allowed] == ["ok"] * len(allowed)
    assert not int(want["mode suid"], 8) & stat.S_ISUID


def _expected(local: dict, options: str) -> dict:
    """A local file system's answers as a mount with `options` must give them: FUSE
    mounts are nodev unless -o dev, so no device file opens there."""
    if "dev" in options.split(","):
        return local
    return dict(local, **{"read+write dev_pub": "EACCES"})


@pytest.fixture(scope="module")
def local_answers():
    local = tempfile.mkdtemp(prefix="elkfs-perms-local-")
    try:
        return _answers(local)
    finally:
        shutil.rmtree(local, ignore_errors=True)


@pytest.mark.parametrize("options", ["mfswritecache=0", "default_permissions", "dev"])
def test_same_answers_with_other_mount_options(options, local_answers):
    """Without the write-back cache (other SETATTRs come from the kernel), with
    `-o default_permissions` (the kernel checks, the mount does not), and with `-o dev`
    (device files may be opened, as their mode bits allow)."""
    base = tempfile.mkdtemp(prefix="elkfs-perms-opts-")
    os.chmod(base, 0o755)
    try:
        with MountedCluster(base, "127.0.39", chunkservers=1, mount_options=options) as mc2:
            with open("/proc/self/mountinfo") as f:
                line = next(ln for ln in f if ln.split()[4] == mc2.mnt)
            assert ("default_permissions" in line) == (options == "default_permissions")
            d = os.path.join(mc2.mnt, "t")
            os.mkdir(d)
            got = _answers(d)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    differ = {k: (got.get(k), v) for k, v in _expected(local_answers, options).items()
              if got.get(k) != v}
    assert not differ, f"mount ({options}) vs local: {differ}"
