#!/usr/bin/env python3
"""`ls -f` of a huge directory through the mount: entries per second, and what the listing
adds to the resident memory of the mount and of the master.

The directory is made fast: its namespace is built in this process through the real state
machine and written as the master's checkpoint before the master starts (creating a
million files through the network would take most of the run).

    /work/bin/nsrun <ns> .venv/bin/python bench/bigdir_ls.py [N] [--runs K] [--profile DIR]

`--profile DIR`: py-spy records the mount and the master during the first run
(DIR/mount.txt, DIR/master.txt: folded stacks, one line per stack with its sample count;
py-spy from the venv or PATH).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from elkfs.master import checkpoint as ckpt  # noqa: E402
from elkfs.master.namespace import ROOT, Namespace  # noqa: E402
from elkfs.master.records import Record  # noqa: E402
from elkfs.proto import messages as m  # noqa: E402
from tests.fuse.mounted import MountedCluster  # noqa: E402


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_spies(out_dir: str | None, mount_pid: int, master_pid: int) -> list:
    if not out_dir:
        return []
    os.makedirs(out_dir, exist_ok=True)
    here = os.path.dirname(sys.executable)
    spy = os.path.join(here, "py-spy") if os.path.exists(os.path.join(here, "py-spy")) \
        else "py-spy"
    spies = [subprocess.Popen([spy, "record", "-r", "200", "-f", "raw", "-o",
                               os.path.join(out_dir, f"{name}.txt"), "--pid", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for name, pid in (("mount", mount_pid), ("master", master_pid))]
    time.sleep(1)  # attached before the listing starts
    return spies


def stop_spies(spies: list) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    for spy in spies:
        spy.wait(timeout=60)


def big_namespace(n: int) -> Namespace:
    ns = Namespace()
    ts = time.time_ns()

    def apply(op):
        return ns.apply(Record(ns.version + 1, ts, b"", 0, op))

    big = apply(m.Mkdir(ROOT, b"big", 0o755, 0, 0)).attr.inode
    for i in range(n):
        apply(m.Mknod(big, b"file-%07d.dat" % i, stat.S_IFREG | 0o644, 0, 0))
    return ns


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=1_000_000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--profile", metavar="DIR")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="elkfs-bigdir-")
    os.chmod(base, 0o755)
    mc = MountedCluster(base, "127.0.69", chunkservers=1)
    try:
        started = time.monotonic()
        ns = big_namespace(args.n)
        os.makedirs(mc.mnt)
        mc.cluster.write_configs()
        ckpt.write(ns, os.path.join(mc.cluster.masters[0].data_dir,
                                    ckpt.checkpoint_name(ns.version)))
        del ns
        print(f"namespace of {args.n} entries built and written in "
              f"{time.monotonic() - started:.0f} s", flush=True)
        cluster = mc.cluster
        started = time.monotonic()
        cluster.start_daemon(cluster.masters[0], timeout=1800)  # loads the checkpoint first
        print(f"master started (checkpoint loaded) in {time.monotonic() - started:.0f} s",
              flush=True)
        for cs in cluster.chunkservers:
            cluster.start_daemon(cs)
        cluster.wait_chunkservers_registered()
        mc.mount()
        master_pid = mc.cluster.masters[0].pid()
        big = os.path.join(mc.mnt, "big")
        for run in range(args.runs):
            before = rss_mib(mc.pid), rss_mib(master_pid)
            spies = start_spies(args.profile, mc.pid, master_pid) if run == 0 else []
            started = time.monotonic()
            out = subprocess.run(f"ls -f {big} | wc -l", shell=True, check=True,
                                 capture_output=True, text=True).stdout
            took = time.monotonic() - started
            stop_spies(spies)
            entries = int(out) - 2  # . and ..
            after = rss_mib(mc.pid), rss_mib(master_pid)
            print(f"run {run + 1}: ls -f of {entries} entries in {took:.1f} s = "
                  f"{entries / took:,.0f} entries/s; RSS mount {before[0]:.0f} -> "
                  f"{after[0]:.0f} MiB, master {before[1]:.0f} -> {after[1]:.0f} MiB",
                  flush=True)
    finally:
        try:
            mc.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
