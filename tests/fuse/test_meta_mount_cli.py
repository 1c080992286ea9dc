"""`mfsmount -m` (and `-o mfsmeta`): the meta file system (the trash) mounted through
mfsmount with the usual -H/-P options; a file unlinked through the normal mount shows up
under trash/, is restored by moving it into trash/undel/ and read back through the normal
mount."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from elkfs.mount.options import parse

from .mounted import is_mounted, unmount, wait_mounted

NET = "127.0.36"
CHUNKSERVERS = 2
BIN = os.path.dirname(sys.executable)


def test_meta_options():
    assert parse(["/m", "-m"]).meta
    assert parse(["/m", "-o", "mfsmeta"]).meta
    assert not parse(["/m"]).meta


def _mount_meta(mc, path: str, *args: str) -> int:
    host, port = mc.cluster.master_addr
    r = subprocess.run([os.path.join(BIN, "mfsmount"), path, "-H", host, "-P", str(port),
                        *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert is_mounted(path)
    return int(re.search(r"pid (\d+)", r.stdout).group(1))


def _wait_listing(path: str, name: str, present: bool, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (name in os.listdir(path)) != present:
        assert time.monotonic() < deadline, f"{name} {'not ' if present else ''}in {path}"
        time.sleep(0.1)


def test_mfsmount_m_restore_from_trash(mc, d):
    meta = os.path.join(mc.base_dir, "meta")
    os.makedirs(meta, exist_ok=True)
    pid = _mount_meta(mc, meta, "-m")
    try:
        assert sorted(os.listdir(meta)) == ["trash"]
        data = os.urandom(200_000)
        path = os.path.join(d, "doc.bin")
        with open(path, "wb") as f:
            f.write(data)
        inode = os.stat(path).st_ino
        os.unlink(path)
        assert not os.path.exists(path)
        rel = os.path.relpath(path, mc.mnt)
        name = "%08X|%s" % (inode, rel.replace("/", "|"))
        trash = os.path.join(meta, "trash")
        _wait_listing(trash, name, True)
        assert "undel" in os.listdir(trash)
        assert os.stat(os.path.join(trash, name)).st_size == len(data)
        os.rename(os.path.join(trash, name), os.path.join(trash, "undel", name))
        _wait_listing(trash, name, False)
        deadline = time.monotonic() + 5
        while not os.path.exists(path):  # the normal mount's entry cache may say ENOENT
            assert time.monotonic() < deadline, "restored file not visible"
            time.sleep(0.1)
        with open(path, "rb") as f:
            assert f.read() == data
        assert os.stat(path).st_ino == inode
    finally:
        unmount(meta, pid)
    assert not is_mounted(meta)


def test_mfsmount_o_mfsmeta_foreground(mc):
    meta = os.path.join(mc.base_dir, "meta2")
    os.makedirs(meta, exist_ok=True)
    host, port = mc.cluster.master_addr
    proc = subprocess.Popen([os.path.join(BIN, "mfsmount"), meta, "-f", "-H", host, "-P",
                             str(port), "-o", "mfsmeta"], stderr=subprocess.DEVNULL)
    try:
        wait_mounted(meta, proc)
        assert sorted(os.listdir(meta)) == ["trash"]
        assert "undel" in os.listdir(os.path.join(meta, "trash"))
    finally:
        unmount(meta, proc.pid)
        proc.wait(10)
