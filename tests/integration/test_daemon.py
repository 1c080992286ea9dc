"""Daemon control and config handling of the real `mfsmaster` and `mfschunkserver`."""

import asyncio
import os
import subprocess
import sys
import time


from elkfs.client import Client
from elkfs.master import checkpoint as ckpt
from elkfs.testing.cluster import Cluster, wait_port

BIN = os.path.dirname(sys.executable)
MASTER = os.path.join(BIN, "mfsmaster")
CHUNKSERVER = os.path.join(BIN, "mfschunkserver")
HOST = "127.0.8.10"


def write_cfg(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def run(*args, timeout=60):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


def test_bad_value_names_file_line_and_key(tmp_path):
    cfg = write_cfg(tmp_path / "mfsmaster.cfg",
                    f"DATA_PATH = {tmp_path}\n# comment\nMATOCL_LISTEN_PORT = lots\n")
    out = run(MASTER, "-c", cfg, "-f", "start")
    assert out.returncode == 1
    assert f"{cfg}:3" in out.stderr and "MATOCL_LISTEN_PORT" in out.stderr


def test_bad_value_in_chunkserver_config(tmp_path):
    cfg = write_cfg(tmp_path / "cs.cfg", f"DATA_PATH = {tmp_path}\nCSSERV_LISTEN_PORT = 70000\n")
    out = run(CHUNKSERVER, "-c", cfg, "start")
    assert out.returncode == 1
    assert f"{cfg}:2" in out.stderr and "CSSERV_LISTEN_PORT" in out.stderr


def test_start_status_lock_reload_stop(tmp_path):
    cfg = write_cfg(tmp_path / "mfsmaster.cfg",
                    f"DATA_PATH = {tmp_path}\nMATOCL_LISTEN_HOST = {HOST}\n"
                    f"MATOCS_LISTEN_HOST = {HOST}\nSOME_FUTURE_OPTION = 1\n")
    out = run(MASTER, "-c", cfg, "start")
    assert out.returncode == 0, out.stderr
    try:
        assert "started" in out.stdout
        assert "unknown option SOME_FUTURE_OPTION" in out.stderr
        status = run(MASTER, "-c", cfg, "status")
        assert status.returncode == 0 and "is running" in status.stdout
        # A second daemon on the same data directory is refused.
        second = run(MASTER, "-c", cfg, "start")
        assert second.returncode == 1 and "already running" in second.stderr
        # reload keeps it running and says so in the log.
        assert run(MASTER, "-c", cfg, "reload").returncode == 0
        log = os.path.join(tmp_path, "mfsmaster.log")
        for _ in range(100):
            if "reloaded" in open(log).read():
                break
            time.sleep(0.05)
        assert "reloaded" in open(log).read()
        assert run(MASTER, "-c", cfg, "status").returncode == 0
    finally:
        stop = run(MASTER, "-c", cfg, "stop")
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert run(MASTER, "-c", cfg, "status").returncode == 3
    # A clean stop leaves a checkpoint.
    assert ckpt.list_checkpoints(str(tmp_path))


def test_periodic_checkpoint_while_serving(tmp_path):
    cluster = Cluster(str(tmp_path), net="127.0.8", chunkservers=0,
                      master_options={"METADATA_SAVE_FREQ": 0.0003})  # about one second
    cluster.start()
    try:
        async def changes():
            client = await Client.connect(*cluster.master_addr)
            for i in range(20):
                await client.mkdir(f"/d{i}")
            await client.close()

        asyncio.run(changes())
        data_dir = cluster.masters[0].data_dir
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            versions = [v for v, _ in ckpt.list_checkpoints(data_dir)]
            if versions and max(versions) >= 21:
                break
            time.sleep(0.2)
        assert versions and max(versions) >= 21
        # The checkpoint written while serving loads and holds the changes.
        ns = ckpt.read(ckpt.list_checkpoints(data_dir)[-1][1])
        assert {b"d%d" % i for i in range(20)} <= set(ns.nodes[1].children)
    finally:
        cluster.destroy()


def test_master_start_fails_loudly_on_corrupt_journal(tmp_path):
    cfg = write_cfg(tmp_path / "mfsmaster.cfg",
                    f"DATA_PATH = {tmp_path}\nMATOCL_LISTEN_HOST = {HOST}\n"
                    f"MATOCS_LISTEN_HOST = {HOST}\n")
    proc = subprocess.Popen([MASTER, "-c", cfg, "-f", "start"], stderr=subprocess.DEVNULL)
    try:
        wait_port(HOST, 9421, proc=proc)

        async def changes():
            client = await Client.connect(HOST)
            for i in range(30):
                await client.mkdir(f"/d{i}")
            await client.close()

        asyncio.run(changes())
    finally:
        proc.kill()
        proc.wait()
    [journal] = [n for n in os.listdir(tmp_path) if n.startswith("journal.")]
    path = os.path.join(tmp_path, journal)
    with open(path, "r+b") as f:  # damage a record in the middle
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\xde\xad\xbe\xef")
    out = run(MASTER, "-c", cfg, "start")
    assert out.returncode == 1
    assert journal in out.stderr and "metadata version" in out.stderr
