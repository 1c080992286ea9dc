"""mfsmount's command line, config file, foreground mode, unmounting, and a master that
is briefly unreachable (retried) or gone for longer than mfsioretries (EIO, no hang)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from elkfs.mount.options import OptionError, parse

from .mounted import is_mounted, unmount, wait_mounted

NET = "127.0.35"
BIN = os.path.dirname(sys.executable)


def test_options_and_defaults():
    o = parse(["/mnt/x"])
    assert (o.mountpoint, o.master, o.port, o.subfolder) == ("/mnt/x", "mfsmaster", 9421, "/")
    assert o.io_retries == 30.0 and not o.foreground
    o = parse(["/m", "-H", "h1", "-P", "9999", "-f", "-o",
               "mfssubfolder=/a/b,mfspassword=secret,allow_other,mfsioretries=5",
               "-o", "mfsattrcacheto=0.5"])
    assert (o.master, o.port, o.subfolder, o.password) == ("h1", 9999, "/a/b", "secret")
    assert o.io_retries == 5.0 and o.attr_timeout == 0.5 and o.foreground
    assert "allow_other" in o.fuse_options
    o = parse(["/m", "-o", "mfsmaster=h2,mfsport=1234"])
    assert (o.master, o.port) == ("h2", 1234)
    with pytest.raises(OptionError):
        parse(["/m", "-o", "mfsnosuchoption=1"])
    with pytest.raises(OptionError):
        parse(["/m", "-o", "mfsport=notaport"])
    with pytest.raises(OptionError):
        parse([])


def test_config_file(tmp_path):
    cfg = tmp_path / "mfsmount.cfg"
    cfg.write_text("# comment\nmfsmaster=cfghost\nmfsport=9500 # trailing\n"
                   "mfsioretries=7,nosuid\n/mnt/fromcfg\n")
    o = parse(["-c", str(cfg)])
    assert (o.mountpoint, o.master, o.port, o.io_retries) == ("/mnt/fromcfg", "cfghost", 9500, 7.0)
    assert "nosuid" in o.fuse_options
    o = parse(["/other", "-o", f"mfscfgfile={cfg},mfsmaster=cli"])
    assert (o.mountpoint, o.master) == ("/other", "cli")  # the command line wins
    cfg.write_text("mfsport=x\n")
    with pytest.raises(OptionError, match="mfsmount.cfg"):
        parse(["/m", "-c", str(cfg)])


def test_foreground_subfolder_and_umount(mc):
    os.makedirs(os.path.join(mc.mnt, "exported", "inner"))
    with open(os.path.join(mc.mnt, "exported", "hello"), "w") as f:
        f.write("hi")
    mnt2 = os.path.join(mc.base_dir, "mnt2")
    os.makedirs(mnt2, exist_ok=True)
    host, port = mc.cluster.master_addr
    proc = subprocess.Popen([os.path.join(BIN, "mfsmount"), mnt2, "-f", "-H", host, "-P",
                             str(port), "-o", "mfssubfolder=/exported"],
                            stderr=subprocess.DEVNULL)
    try:
        wait_mounted(mnt2, proc)
        assert sorted(os.listdir(mnt2)) == ["hello", "inner"]
        assert open(os.path.join(mnt2, "hello")).read() == "hi"
        os.mkdir(os.path.join(mnt2, "made-here"))
        assert os.path.isdir(os.path.join(mc.mnt, "exported", "made-here"))
        subprocess.run(["umount", mnt2], check=True)
        assert proc.wait(30) == 0
        assert not is_mounted(mnt2)
    finally:
        unmount(mnt2, proc.pid)


def test_background_mount_fails_cleanly_without_master(mc):
    mnt3 = os.path.join(mc.base_dir, "mnt3")
    os.makedirs(mnt3, exist_ok=True)
    r = subprocess.run([os.path.join(BIN, "mfsmount"), mnt3, "-H", f"{mc.cluster.net}.99",
                        "-o", "mfsioretries=1"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "cannot connect" in r.stderr
    assert not is_mounted(mnt3)


def test_master_briefly_unreachable_is_retried(mc):
    master = mc.cluster.masters[0]
    results = []

    def work():
        try:
            os.mkdir(os.path.join(mc.mnt, "during-outage"))
            with open(os.path.join(mc.mnt, "during-outage", "f"), "w") as f:
                f.write("ok")
            results.append("ok")
        except OSError as e:
            results.append(e.errno)

    mc.cluster.signal(master, signal.SIGSTOP)
    try:
        t = threading.Thread(target=work)
        t.start()
        time.sleep(2)
    finally:
        mc.cluster.signal(master, signal.SIGCONT)
    t.join(60)
    assert results == ["ok"]
    assert open(os.path.join(mc.mnt, "during-outage", "f")).read() == "ok"


def test_master_gone_longer_than_ioretries_gives_eio(mc):
    mnt4 = os.path.join(mc.base_dir, "mnt4")
    os.makedirs(mnt4, exist_ok=True)
    host, port = mc.cluster.master_addr
    subprocess.run([os.path.join(BIN, "mfsmount"), mnt4, "-H", host, "-P", str(port), "-o",
                    "mfsioretries=2"], check=True, capture_output=True, timeout=60)
    pid = int(__import__("json").load(open(os.path.join(mnt4, ".masterinfo")))["pid"])
    master = mc.cluster.masters[0]
    try:
        mc.cluster.kill(master)
        try:
            os.mkdir(os.path.join(mnt4, "never"))
            got = 0
        except OSError as e:
            got = e.errno
        assert got == errno.EIO
    finally:
        unmount(mnt4, pid)
        mc.cluster.start_daemon(master)
        mc.cluster.wait_chunkservers_registered()
    os.mkdir(os.path.join(mc.mnt, "after-restart"))  # the main mount reconnects
    assert os.path.isdir(os.path.join(mc.mnt, "after-restart"))


def test_master_killed_and_restarted_under_a_busy_mount(mc):
    """SIGKILL of the master while an application creates, writes, renames, reads and
    removes files through the mount: the application sees no error, every file it was
    told is there is there with its content, and nothing was applied twice (a create
    retried as a second create would fail with EEXIST, a rename retried with ENOENT)."""
    base = os.path.join(mc.mnt, "busy")
    os.mkdir(base)
    errors: list[BaseException] = []
    done: list[str] = []
    finished_at: list[float] = []  # when each round ended (time.monotonic())
    stop = threading.Event()

    def work():
        i = 0
        after_stop = 0
        try:
            while after_stop < 10 or i < 40:  # ten more rounds once the master is back
                if stop.is_set():
                    after_stop += 1
                p = os.path.join(base, f"f{i}")
                with open(p, "xb") as f:  # O_EXCL: a create applied twice would fail
                    f.write(b"%d" % i * 100)
                os.rename(p, p + ".r")
                with open(p + ".r", "rb") as f:
                    assert f.read() == b"%d" % i * 100
                if i % 3 == 0:
                    os.unlink(p + ".r")
                else:
                    done.append(p + ".r")
                finished_at.append(time.monotonic())
                i += 1
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while len(finished_at) < 3 and time.monotonic() < deadline:  # busy first
            time.sleep(0.05)
        master = mc.cluster.masters[0]
        killed_at = time.monotonic()
        mc.cluster.kill(master)
        time.sleep(0.5)
        mc.cluster.start_daemon(master)
        restarted_at = time.monotonic()
        time.sleep(1.0)
    finally:
        stop.set()
        t.join(120)
    assert not t.is_alive()
    assert not errors, errors
    # it worked before the kill and kept working after the restart
    assert min(finished_at) < killed_at and max(finished_at) > restarted_at
    assert sorted(os.listdir(base)) == sorted(os.path.basename(p) for p in done)
    for p in done:
        i = int(os.path.basename(p)[1:-2])
        assert open(p, "rb").read() == b"%d" % i * 100
