#!/usr/bin/env python3
"""metabench on real MooseFS, on ElkFS and on a local directory, in the same minutes.

    .venv/bin/python bench/moosefs_compare.py [N] [--runs K] [--metabench PATH]
    .venv/bin/python bench/moosefs_compare.py --dd SIZE_MIB [--runs K]

The MooseFS figures in the mfsmount issue were measured at other times, and this machine's
speed drifts several-fold over a day, so the only fair comparison is one run beside the other.
This starts a MooseFS cluster from Debian's packages (one master, three chunkservers on
10.42.0.50-53, goal 2, `NICE_LEVEL = 0` like ours instead of MooseFS's default -19) and an
ElkFS cluster (127.0.41.x, goal 2, three chunkservers), mounts both, and runs metabench on
MooseFS, ElkFS and a local directory in turn, K times; it prints the best of each line.
With --dd it instead writes SIZE_MIB MiB with `dd bs=1M conv=fsync` and reads it back cold
(after a remount and dropping the page cache) on MooseFS and ElkFS in turn, K times.

Needs: apt-get install moosefs-master moosefs-chunkserver moosefs-client, and root: MooseFS
refuses a master on 127.x.x.x, so the script adds 10.42.0.50-53 to `lo` for the run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.fuse_throughput import write_then_cold_read  # noqa: E402
from bench.metabench_compare import DEFAULT, run, wait_stock  # noqa: E402
from elkfs.testing.cluster import wait_port  # noqa: E402
from tests.fuse.mounted import MountedCluster, is_mounted, unmount  # noqa: E402

NET = "10.42.0"  # not 127.x: MooseFS chunkservers refuse a "localhost" master
MASTER_HOST = f"{NET}.50"
MFS_BINARIES = ("/usr/sbin/mfsmaster", "/usr/sbin/mfschunkserver", "/usr/bin/mfsmount",
                "/usr/bin/mfssetgoal")


class LoopbackAddresses:
    """`ip addr add` each address to `lo` for the duration (those already there are kept)."""

    def __init__(self, hosts: list[str]):
        self.hosts = hosts
        self.added: list[str] = []

    def __enter__(self):
        have = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True,
                              text=True, check=True).stdout
        for h in self.hosts:
            if f" {h}/" not in have:
                subprocess.run(["ip", "addr", "add", f"{h}/32", "dev", "lo"], check=True)
                self.added.append(h)
        return self

    def __exit__(self, *exc):
        for h in self.added:
            subprocess.run(["ip", "addr", "del", f"{h}/32", "dev", "lo"], capture_output=True)


def write_cfg(path: str, opts: dict[str, object]) -> None:
    with open(path, "w") as f:
        f.writelines(f"{k} = {v}\n" for k, v in opts.items())


class MooseFS:
    """A MooseFS 3 cluster from Debian's packages, in `base`, mounted at `base`/mnt."""

    def __init__(self, base: str, chunkservers: int = 3, goal: int = 2,
                 fsync_chunks: bool = False):
        self.base = base
        self.fsync_chunks = fsync_chunks  # HDD_FSYNC_BEFORE_CLOSE (MooseFS's default: off)
        self.mnt = os.path.join(base, "mnt")
        self.n_cs = chunkservers
        self.goal = goal
        self.procs: list[subprocess.Popen] = []

    def _daemon(self, binary: str, cfg: str) -> None:
        log = open(cfg + ".log", "w")
        self.procs.append(subprocess.Popen([binary, "-f", "-c", cfg, "start"], stdout=log,
                                           stderr=subprocess.STDOUT))

    def start(self) -> "MooseFS":
        os.makedirs(self.mnt)
        common = {"WORKING_USER": "root", "WORKING_GROUP": "root", "NICE_LEVEL": 0}
        mdir = os.path.join(self.base, "master")
        os.makedirs(mdir)
        shutil.copy("/var/lib/mfs/metadata.mfs.empty", os.path.join(mdir, "metadata.mfs"))
        with open(os.path.join(mdir, "mfsexports.cfg"), "w") as f:
            f.write("*  /  rw,alldirs,admin,maproot=0:0\n")
        open(os.path.join(mdir, "mfstopology.cfg"), "w").close()
        write_cfg(os.path.join(mdir, "mfsmaster.cfg"), {
            **common, "DATA_PATH": mdir,
            "EXPORTS_FILENAME": os.path.join(mdir, "mfsexports.cfg"),
            "TOPOLOGY_FILENAME": os.path.join(mdir, "mfstopology.cfg"),
            "MATOML_LISTEN_HOST": MASTER_HOST, "MATOCS_LISTEN_HOST": MASTER_HOST,
            "MATOCL_LISTEN_HOST": MASTER_HOST})
        self._daemon("/usr/sbin/mfsmaster", os.path.join(mdir, "mfsmaster.cfg"))
        wait_port(MASTER_HOST, 9421, proc=self.procs[-1])
        for i in range(self.n_cs):
            host = f"{NET}.{51 + i}"
            cdir = os.path.join(self.base, f"cs{i + 1}")
            os.makedirs(os.path.join(cdir, "hdd"))
            with open(os.path.join(cdir, "mfshdd.cfg"), "w") as f:
                f.write(os.path.join(cdir, "hdd") + "\n")
            write_cfg(os.path.join(cdir, "mfschunkserver.cfg"), {
                **common, "DATA_PATH": cdir, "HDD_CONF_FILENAME": os.path.join(cdir, "mfshdd.cfg"),
                "MASTER_HOST": MASTER_HOST, "BIND_HOST": host, "CSSERV_LISTEN_HOST": host,
                "HDD_LEAVE_SPACE_DEFAULT": "64MiB",
                "HDD_FSYNC_BEFORE_CLOSE": int(self.fsync_chunks)})
            self._daemon("/usr/sbin/mfschunkserver", os.path.join(cdir, "mfschunkserver.cfg"))
            wait_port(host, 9422, proc=self.procs[-1])
        self.mount()
        subprocess.run(["/usr/bin/mfssetgoal", "-r", str(self.goal), self.mnt], check=True,
                       capture_output=True)
        self._wait_chunkservers()
        return self

    def _wait_chunkservers(self, timeout: float = 30.0) -> None:
        """Until a first file of goal copies can be written (all chunkservers registered)."""
        deadline = time.monotonic() + timeout
        probe = os.path.join(self.mnt, ".probe")
        while True:
            with open(probe, "wb") as f:
                f.write(b"x")
            out = subprocess.run(["/usr/bin/mfscheckfile", probe], capture_output=True,
                                 text=True).stdout
            os.unlink(probe)
            if f"chunks with {self.goal} copies" in out:
                return
            assert time.monotonic() < deadline, f"MooseFS chunkservers not ready: {out}"
            time.sleep(0.5)

    def mount(self) -> None:
        subprocess.run(["/usr/bin/mfsmount", self.mnt, "-H", MASTER_HOST, "-P", "9421"],
                       check=True, capture_output=True)
        deadline = time.monotonic() + 30
        while not is_mounted(self.mnt):
            assert time.monotonic() < deadline, "MooseFS not mounted in time"
            time.sleep(0.05)

    def remount(self) -> None:
        unmount(self.mnt)
        self.mount()

    def stop(self) -> None:
        unmount(self.mnt)
        for p in reversed(self.procs):
            p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()


def compare_dd(size_mib: int, runs: int, mfs: MooseFS, elk: MountedCluster) -> int:
    best = {"MooseFS 3.0": [0.0, 0.0], "ElkFS": [0.0, 0.0]}
    for i in range(runs):
        for name, mnt, remount in (("MooseFS 3.0", mfs.mnt, mfs.remount),
                                   ("ElkFS", elk.mnt, elk.remount)):
            w, r = write_then_cold_read(os.path.join(mnt, "ddfile"), size_mib, remount)
            os.sync()  # nothing left to write back into the next one's time
            print(f"run {i + 1}/{runs} {name}: write {w:.0f} MB/s, cold read {r:.0f} MB/s",
                  file=sys.stderr)
            best[name] = [max(best[name][0], w), max(best[name][1], r)]
    print(f"dd bs=1M, {size_mib} MiB, goal 2, 3 chunkservers ({os.cpu_count()} CPUs, "
          f"best of {runs} runs), MB/s")
    print(f"{'':>22}{'MooseFS 3.0':>13}{'ElkFS':>13}{'ElkFS/MooseFS':>15}")
    for i, label in enumerate(("write (conv=fsync)", "cold read")):
        theirs, ours = best["MooseFS 3.0"][i], best["ElkFS"][i]
        print(f"{label:>22}{theirs:13.0f}{ours:13.0f}{ours / theirs if theirs else 0:15.2f}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("n", nargs="?", type=int, default=2000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--metabench", default=DEFAULT)
    p.add_argument("--dd", type=int, metavar="SIZE_MIB",
                   help="compare dd bs=1M write (conv=fsync) and cold read instead")
    a = p.parse_args()
    missing = [b for b in MFS_BINARIES if not os.path.exists(b)]
    if missing:
        print(f"missing {', '.join(missing)}: apt-get install moosefs-master "
              "moosefs-chunkserver moosefs-client", file=sys.stderr)
        return 2
    base = tempfile.mkdtemp(prefix="elkfs-moosefs-compare-")
    columns = {"MooseFS 3.0": {}, "ElkFS": {}, "local dir": {}}
    try:
        local = os.path.join(base, "local")
        os.makedirs(local)
        hosts = [f"{NET}.{50 + i}" for i in range(4)]
        # With --dd both sides fsync the chunk files when the writer fsyncs (conv=fsync):
        # MooseFS only does with HDD_FSYNC_BEFORE_CLOSE.
        with LoopbackAddresses(hosts), \
                MooseFS(os.path.join(base, "moosefs"), fsync_chunks=bool(a.dd)) as mfs, \
                MountedCluster(os.path.join(base, "elkfs"), "127.0.41", goal=2) as elk:
            wait_stock(elk.cluster)
            if a.dd:
                return compare_dd(a.dd, a.runs, mfs, elk)
            roots = {"MooseFS 3.0": mfs.mnt, "ElkFS": elk.mnt, "local dir": local}
            for i in range(a.runs):
                for name, root in roots.items():
                    for k, v in run(a.metabench, root, a.n).items():
                        columns[name][k] = max(columns[name].get(k, 0.0), v)
                print(f"run {i + 1}/{a.runs} done", file=sys.stderr)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    runs = f", best of {a.runs} runs" if a.runs > 1 else ""
    print(f"metabench N={a.n} ({os.cpu_count()} CPUs{runs}), ops/s")
    print(f"{'op':>10}" + "".join(f"{name:>13}" for name in columns) + f"{'ElkFS/MooseFS':>15}")
    for k in columns["ElkFS"]:
        mfs_v = columns["MooseFS 3.0"].get(k, 0)
        ratio = columns["ElkFS"][k] / mfs_v if mfs_v else 0
        print(f"{k:>10}" + "".join(f"{c.get(k, 0):13.0f}" for c in columns.values())
              + f"{ratio:15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
