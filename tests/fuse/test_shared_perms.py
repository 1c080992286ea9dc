"""Permissions with many clients: ACLs enforced, and a change of permissions made through
mount A holds at once for another user on mount B (the master recalls the attributes
every mount caches before it acknowledges a chmod, chown or setfacl). Also the smaller
rules: utimensat for non-owners, ENAMETOOLONG, and the blocks of a sparse file.

Checks run as `nobody` in a child process (`as_nobody`), which answers "ok" or the
errno's name.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from .lockers import start_mount, stop_mount
from .util import as_user

NET = "127.0.63"
CHUNKSERVERS = 1

PROBE = r'''
import errno, os, sys
what, path = sys.argv[1], sys.argv[2]
try:
    if what == "read":
        with open(path, "rb") as f:
            f.read()
    elif what == "write":
        with open(path, "ab") as f:
            f.write(b"n")
    elif what == "stat":
        os.stat(path)
    elif what == "truncate":
        os.truncate(path, 0)
    elif what == "utime_now":
        os.utime(path, None)
    elif what == "utime_past":
        os.utime(path, (1000, 1000))
    elif what == "fifo_rw":
        os.close(os.open(path, os.O_RDWR))
    elif what == "mtime_only":
        os.utime(path, ns=(os.stat(path).st_atime_ns, 5 * 10**9))
    print("ok")
except OSError as e:
    print(errno.errorcode[e.errno])
'''

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="needs root (runs checks as nobody)")


@pytest.fixture(scope="module")
def mnt_b(mc):
    mnt, proc = start_mount(mc, "mnt_b")
    try:
        yield mnt
    finally:
        stop_mount(mnt, proc)


def on_b(mc, mnt_b, path: str) -> str:
    return os.path.join(mnt_b, os.path.relpath(path, mc.mnt))


def as_nobody(what: str, path: str) -> str:
    return as_user(f"import sys; sys.argv = ['probe', {what!r}, {path!r}]\n" + PROBE).strip()


def setfacl(*args: str) -> None:
    subprocess.run(["setfacl", *args], check=True, capture_output=True)


def getfacl(path: str) -> str:
    return subprocess.run(["getfacl", "-cp", path], check=True, capture_output=True,
                          text=True).stdout


def make(path: str, mode: int, data: bytes = b"data") -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def test_an_acl_entry_denies_what_the_mode_allows(mc, mnt_b, d):
    f = os.path.join(d, "f")
    make(f, 0o644)
    assert as_nobody("read", on_b(mc, mnt_b, f)) == "ok"
    setfacl("-m", "u:nobody:---", f)
    assert "user:nobody:---" in getfacl(on_b(mc, mnt_b, f))
    assert as_nobody("read", on_b(mc, mnt_b, f)) == "EACCES"
    assert as_nobody("read", f) == "EACCES"
    setfacl("-b", f)  # all entries gone: the mode alone again
    assert as_nobody("read", on_b(mc, mnt_b, f)) == "ok"


def test_an_acl_entry_allows_what_the_mode_denies_within_the_mask(mc, mnt_b, d):
    f = os.path.join(d, "f")
    make(f, 0o600)
    assert as_nobody("read", on_b(mc, mnt_b, f)) == "EACCES"
    setfacl("-m", "u:nobody:r", f)
    assert os.stat(f).st_mode & 0o777 == 0o640  # the group bits show the mask
    assert as_nobody("read", on_b(mc, mnt_b, f)) == "ok"
    assert as_nobody("write", on_b(mc, mnt_b, f)) == "EACCES"
    os.chmod(f, 0o600)  # chmod sets the mask: the entry no longer gives anything
    assert "mask::---" in getfacl(f)
    assert as_nobody("read", on_b(mc, mnt_b, f)) == "EACCES"


def test_a_default_acl_is_inherited_without_the_umask(mc, mnt_b, d):
    sub = os.path.join(d, "shared")
    os.mkdir(sub, 0o755)
    setfacl("-d", "-m", "u:nobody:rwx", sub)
    old = os.umask(0o077)
    try:
        make(os.path.join(sub, "f"), 0o666)
        os.mkdir(os.path.join(sub, "dir"))
    finally:
        os.umask(old)
    acl = getfacl(on_b(mc, mnt_b, os.path.join(sub, "f")))
    assert "user:nobody:rwx" in acl and "mask::rw-" in acl
    assert as_nobody("write", on_b(mc, mnt_b, os.path.join(sub, "f"))) == "ok"
    inner = getfacl(on_b(mc, mnt_b, os.path.join(sub, "dir")))
    assert "default:user:nobody:rwx" in inner


def test_taking_the_search_bit_off_a_directory_holds_at_once_on_another_mount(mc, mnt_b, d):
    sub = os.path.join(d, "dir")
    os.mkdir(sub, 0o755)
    inner = os.path.join(sub, "f")
    make(inner, 0o666)
    inner_b = on_b(mc, mnt_b, inner)
    for _ in range(3):  # the kernel and B's mount have the names and attributes cached
        assert as_nobody("stat", inner_b) == "ok"
    os.chmod(sub, 0o700)
    assert as_nobody("stat", inner_b) == "EACCES"
    assert as_nobody("truncate", inner_b) == "EACCES"
    assert os.stat(inner).st_size == 4
    os.chmod(sub, 0o755)
    assert as_nobody("stat", inner_b) == "ok"


def test_chmod_of_a_file_holds_at_once_on_another_mount(mc, mnt_b, d):
    f = os.path.join(d, "f")
    make(f, 0o644)
    assert as_nobody("read", on_b(mc, mnt_b, f)) == "ok"
    os.chmod(f, 0o600)
    assert as_nobody("read", on_b(mc, mnt_b, f)) == "EACCES"


def test_a_fifo_opens_as_its_mode_says_on_every_mount(mc, mnt_b, d):
    """The kernel opens a FIFO without asking the file system (no default_permissions):
    the mount checks at the lookup that precedes the open (elkfs/mount/intent.py), with
    the attributes every mount has been told of at once."""
    fifo = os.path.join(d, "fifo")
    os.mkfifo(fifo)
    os.chmod(fifo, 0o600)
    fifo_b = on_b(mc, mnt_b, fifo)
    assert as_nobody("fifo_rw", fifo_b) == "EACCES"
    assert as_nobody("stat", fifo_b) == "ok"
    os.chmod(fifo, 0o666)
    assert as_nobody("fifo_rw", fifo_b) == "ok"
    os.chmod(fifo, 0o600)
    assert as_nobody("fifo_rw", fifo_b) == "EACCES"
    setfacl("-m", "u:nobody:rw", fifo)
    assert as_nobody("fifo_rw", fifo_b) == "ok"
    assert as_nobody("fifo_rw", fifo) == "ok"


def test_utimensat_rules_for_a_writer_who_is_not_the_owner(mc, mnt_b, d):
    f = os.path.join(d, "f")
    make(f, 0o666)
    assert as_nobody("utime_now", on_b(mc, mnt_b, f)) == "ok"
    assert as_nobody("utime_past", on_b(mc, mnt_b, f)) == "EPERM"
    assert as_nobody("mtime_only", on_b(mc, mnt_b, f)) == "EPERM"
    assert os.stat(f).st_mtime > 1000


def test_names_over_255_bytes_are_enametoolong(mc, mnt_b, d):
    long = os.path.join(d, "x" * 256)
    make(os.path.join(d, "short"), 0o644)
    for call in (lambda: os.stat(long), lambda: os.unlink(long),
                 lambda: os.link(os.path.join(d, "short"), long), lambda: open(long, "w"),
                 lambda: os.mkdir(long), lambda: os.rename(os.path.join(d, "short"), long)):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.ENAMETOOLONG


def test_du_of_a_sparse_file_counts_no_holes(mc, mnt_b, d):
    f = os.path.join(d, "sparse")
    with open(f, "wb") as out:
        out.write(b"x" * 65536)
        out.truncate(5 << 30)
    for path in (f, on_b(mc, mnt_b, f)):
        st = os.stat(path)
        assert st.st_size == 5 << 30
        assert st.st_blocks * 512 <= 64 << 20  # one chunk of data at most, not 5 GiB
        du = subprocess.run(["du", "-k", path], capture_output=True, text=True).stdout
        assert int(du.split()[0]) <= 64 * 1024


WRITER = r'''
import os, sys
path = sys.argv[1]
with open(path, "rb") as f:  # read and closed: the mount keeps the file open a while
    f.read()
fd = os.open(path, os.O_WRONLY)  # wants more than that: the master must know of it
print("open", flush=True)
sys.stdin.readline()
os.write(fd, b"written after the chmod")
os.close(fd)
print("ok")
'''


def test_a_write_open_after_a_read_open_keeps_writing_after_a_chmod(mc, mnt_b, d):
    """A descriptor opened for writing keeps its right after the file turns read-only:
    on B the file was read (and closed) first, so its write open comes while the mount
    still holds the read one, and must be an open for writing on the master too."""
    f = os.path.join(d, "f")
    make(f, 0o644)
    os.chown(f, 65534, 65534)
    p = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-c", WRITER, on_b(mc, mnt_b, f)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert p.stdout.readline().strip() == "open"
        os.chmod(f, 0o444)
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.read().strip() == "ok"
    finally:
        p.stdin.close()
        assert p.wait(60) == 0
    with open(f, "rb") as g:
        assert g.read() == b"written after the chmod"
