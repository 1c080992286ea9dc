#!/usr/bin/env python3
"""ElkFS beside a real MooseFS (4.x by default), in the same minutes: the instrument of issue 16.

    .venv/bin/python bench/moosefs_compare.py [N] [--runs K] [--stress B] [--moosefs PREFIX]
    .venv/bin/python bench/moosefs_compare.py --small-files [--procs 4,16] [--files 2000]
                                              [--size-kib 4] [--runs K] [--stress B]
    .venv/bin/python bench/moosefs_compare.py --untar [--tree /usr/include] [--runs K]
    .venv/bin/python bench/moosefs_compare.py --random-io [--file-mib 128] [--ops 20000]
                                              [--seed S] [--runs K]
    .venv/bin/python bench/moosefs_compare.py --dd SIZE_MIB [--runs K]

This machine's speed drifts several-fold over a day, so the only fair comparison is one run
beside the other. The script starts a MooseFS cluster (one master, three chunkservers, goal
2, `NICE_LEVEL = 0` like ours instead of MooseFS's -19; see bench/moosefs_cluster.py: the
daemons run in a network namespace made for the run, the mount on the host) and an ElkFS
cluster of the same shape on an unused 127.0.N net, mounts both with default options, and
runs the chosen workloads on each in turn, K rounds, the order of the sides reversed every
other round. It prints, per line:
- the best of the K rounds of each side, and their ratio as ElkFS/MooseFS *speed* (above 1:
  ElkFS is faster), with the spread: the lowest and highest ratio of the K rounds;
- the CPU time per operation of all ElkFS processes together (master, chunkservers, mount)
  beside all MooseFS processes together (median of the rounds), read from /proc/PID/stat;
  the benchmark's own process is not counted on either side.
Workloads (bench/workloads.py): metabench (/work/shared/bench/metabench.py, the default),
--small-files (parallel writers of small files), --untar (unpack a tar of a source tree
and `rsync -a` it, beside a local directory too), --random-io (seeded mixed I/O on one file
that spans chunks; also counts the "wrong chunk version" retries in ElkFS's mount log), and
--dd (streaming write with conv=fsync and cold read). --stress B runs B busy loops beside
both, a CPU-bound neighbour as real servers have.

MooseFS comes from --moosefs PREFIX (default /work/scratch/moosefs4: MooseFS CE 4.x built
from its source outside the repository, see docs/performance.md); without one there, Debian's
packaged MooseFS 3.0 (apt-get install moosefs-master moosefs-chunkserver moosefs-client),
and the output says so. Needs root (namespaces, mounts, dropping the page cache for --dd).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench import workloads  # noqa: E402
from bench.cputime import CpuMeter, Watch  # noqa: E402
from bench.fuse_throughput import write_then_cold_read  # noqa: E402
from bench.metabench_compare import DEFAULT as METABENCH, wait_stock  # noqa: E402
from bench.moosefs_cluster import Install, MooseFS, NetNamespace  # noqa: E402
from tests.fuse.mounted import MountedCluster  # noqa: E402

ELK = "ElkFS"
LOCAL = "local dir"


@dataclass
class Side:
    name: str
    root: str  # where the workloads run
    pids: Callable[[], list[int]]  # the side's processes; none for a local directory
    remount: Callable[[], None] | None = None

    def meter(self) -> CpuMeter | None:
        pids = self.pids()
        return CpuMeter(pids) if pids else None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_loopback_net() -> str:
    """A 127.0.N (N >= 41) on which nothing listens yet: other engineers' clusters run here."""
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout
    for n in range(41, 250):
        if f" 127.0.{n}." not in out and f"\t127.0.{n}." not in out:
            return f"127.0.{n}"
    raise RuntimeError("no free 127.0.N net")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def idle_cpu(sides: list[Side], seconds: float = 3.0) -> str:
    """What each side's processes use doing nothing (timers, heartbeats, disk scans), over
    the same `seconds`: part of every CPU-per-op figure, most in the shortest phases."""
    meters = [(s.name, s.meter()) for s in sides]
    before = [m.seconds() for _, m in meters]
    time.sleep(seconds)
    return "idle CPU, before the rounds: " + ", ".join(
        f"{name} {(m.seconds() - b) / seconds * 1e3:.0f} ms/s"
        for (name, m), b in zip(meters, before))


def rounds(sides: list[Side], runs: int):
    """(round, side) in the order they run: the sides' order reversed every other round."""
    for i in range(runs):
        for side in (sides if i % 2 == 0 else sides[::-1]):
            yield i, side


def spread(ratios: list[float]) -> str:
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:.0f}"


def median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


# ------------------------------------------------------------------ metabench

def compare_metabench(a, sides: list[Side], mfs_name: str) -> None:
    # rows[side][op] = one Row a round
    rows: dict[str, dict[str, list[workloads.Row]]] = {s.name: {} for s in sides}
    for i, side in rounds(sides, a.runs):
        for op, row in workloads.metabench(a.metabench, side.root, a.n, side.meter()).items():
            rows[side.name].setdefault(op, []).append(row)
        log(f"round {i + 1}/{a.runs} {side.name} done")
    print(f"metabench N={a.n}, ops/s, best of {a.runs} alternating rounds; ratio = ElkFS/"
          f"{mfs_name} speed (spread: lowest-highest of the rounds); CPU = us per op of all "
          "of a side's processes, median of the rounds")
    head = (f"{'op':>8}{mfs_name:>13}{ELK:>9}{LOCAL:>11}{'ratio':>7}{'spread':>11}"
            f"{'CPU MooseFS':>12}{'CPU ElkFS':>10}{'CPU ratio':>10}")
    print(head)
    for op, elk_rows in rows[ELK].items():
        mfs_rows = rows[mfs_name][op]
        best = {n: max(r.ops_per_s for r in rows[n][op]) for n in rows}
        per_round = [e.ops_per_s / m.ops_per_s for e, m in zip(elk_rows, mfs_rows)]
        cpu_m = median_or_none([r.cpu_s_per_op for r in mfs_rows])
        cpu_e = median_or_none([r.cpu_s_per_op for r in elk_rows])
        cpu_ratio = f"{cpu_e / cpu_m:.2f}" if cpu_m and cpu_e else "-"
        print(f"{op:>8}{best[mfs_name]:13.0f}{best[ELK]:9.0f}{best.get(LOCAL, 0):11.0f}"
              f"{best[ELK] / best[mfs_name]:7.2f}{spread(per_round):>11}"
              f"{us(cpu_m):>12}{us(cpu_e):>10}{cpu_ratio:>10}")
    print("each side's ops/s, lowest-highest of the rounds:")
    for op in rows[ELK]:
        print(f"{op:>8}" + "".join(
            f"  {n}: {min(r.ops_per_s for r in rows[n][op]):.0f}-"
            f"{max(r.ops_per_s for r in rows[n][op]):.0f}" for n in rows))


# ------------------------------------------------------------------ timed workloads

def run_timed(sides: list[Side], runs: int, label: str, fn: Callable[[Side, Watch], float]
              ) -> dict[str, list[tuple[float, float | None]]]:
    """(seconds, CPU seconds of the side's processes) of `fn(side, watch)` per side, one a
    round; `fn` returns its seconds and brackets what it times with `watch`."""
    out: dict[str, list[tuple[float, float | None]]] = {s.name: [] for s in sides}
    for i, side in rounds(sides, runs):
        watch = Watch(side.meter())
        secs = fn(side, watch)
        cpu = watch.cpu_s
        out[side.name].append((secs, cpu))
        log(f"round {i + 1}/{runs} {side.name} {label}: {secs:.2f} s"
            + (f", CPU {cpu:.2f} s" if cpu is not None else ""))
    return out


def print_times(label: str, times: dict[str, list[tuple[float, float | None]]], mfs_name: str,
                ops: int, op_name: str) -> None:
    """One line: each side's best and worst seconds, the speed ratio, CPU per op."""
    best = {n: min(t for t, _ in v) for n, v in times.items()}
    worst = {n: max(t for t, _ in v) for n, v in times.items()}
    per_round = [m[0] / e[0] for m, e in zip(times[mfs_name], times[ELK])]
    cpu = {n: median_or_none([c for _, c in v]) for n, v in times.items()}
    cells = "".join(f"  {n} {best[n]:.2f}-{worst[n]:.2f} s" for n in times)
    cpus = "  ".join(f"{n} {us(cpu[n] / ops if cpu[n] is not None else None)}"
                     for n in times if cpu[n] is not None)
    print(f"{label}:{cells}  ratio {best[mfs_name] / best[ELK]:.2f} (rounds "
          f"{spread(per_round)}), ElkFS worst/best {worst[ELK] / best[ELK]:.2f}; "
          f"CPU us per {op_name}: {cpus}")


def compare_small_files(a, sides: list[Side], mfs_name: str) -> None:
    print(f"parallel small files: P processes each write {a.files} files of {a.size_kib} KiB "
          f"(own directory each), seconds best-worst of {a.runs} alternating rounds; ratio = "
          f"{mfs_name} time / ElkFS time of the best rounds (above 1: ElkFS is faster)")
    for procs in a.procs:
        times = run_timed(sides, a.runs, f"{procs} writers",
                          lambda s, w: workloads.small_files(s.root, procs, a.files,
                                                             a.size_kib, w))
        print_times(f"{procs:>3} processes", times, mfs_name, procs * a.files, "file")


def compare_untar(a, sides: list[Side], mfs_name: str) -> None:
    tmp = tempfile.mkdtemp(prefix="elkfs-untar-")
    try:
        tarball = os.path.join(tmp, "tree.tar")
        entries = workloads.make_tarball(a.tree, tarball)
        print(f"{a.tree} ({entries} entries): `tar xf` of a tar of it made once, and `rsync -a` "
              f"of it, seconds best-worst of {a.runs} alternating rounds; ratio = {mfs_name} "
              "time / ElkFS time")
        times = run_timed(sides, a.runs, "tar x",
                          lambda s, w: workloads.untar(tarball, s.root, w))
        print_times("tar x   ", times, mfs_name, entries, "entry")
        times = run_timed(sides, a.runs, "rsync -a",
                          lambda s, w: workloads.rsync(a.tree, s.root, w))
        print_times("rsync -a", times, mfs_name, entries, "entry")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def count_retries(mount_log: str) -> int:
    try:
        with open(mount_log, errors="replace") as f:
            return sum("wrong chunk version" in line for line in f)
    except FileNotFoundError:
        return 0


def compare_random_io(a, sides: list[Side], mfs_name: str, elk_log: str) -> None:
    wrong: dict[str, int] = {}
    retries: list[int] = []

    def one(side: Side, watch: Watch) -> float:
        before = count_retries(elk_log)
        r = workloads.random_io(side.root, a.file_mib, a.ops, a.seed, watch)
        wrong[side.name] = wrong.get(side.name, 0) + r.wrong_bytes_reads
        if side.name == ELK:
            retries.append(count_retries(elk_log) - before)
        return r.seconds

    print(f"random mixed I/O: {a.ops} seeded operations (seed {a.seed}; reads 40 %, writes "
          f"35 %, mmap 20 %, truncates 5 %) on one {a.file_mib} MiB file, one process, "
          f"seconds (with the final fsync) best-worst of {a.runs} alternating rounds")
    times = run_timed(sides, a.runs, "random I/O", one)
    print_times("random I/O", times, mfs_name, a.ops, "op")
    print("reads that returned wrong bytes: " + ", ".join(f"{n} {v}" for n, v in wrong.items()))
    print(f"ElkFS mount log, \"wrong chunk version\" retries per round: {retries}")


def compare_dd(a, sides: list[Side], mfs_name: str) -> None:
    best: dict[str, list[float]] = {s.name: [0.0, 0.0] for s in sides}
    for i, side in rounds(sides, a.runs):
        w, r = write_then_cold_read(os.path.join(side.root, "ddfile"), a.dd, side.remount)
        os.sync()  # nothing left to write back into the next one's time
        log(f"round {i + 1}/{a.runs} {side.name}: write {w:.0f} MB/s, cold read {r:.0f} MB/s")
        best[side.name] = [max(best[side.name][0], w), max(best[side.name][1], r)]
    print(f"dd bs=1M, {a.dd} MiB, goal 2, 3 chunkservers ({os.cpu_count()} CPUs, "
          f"best of {a.runs} runs), MB/s")
    print(f"{'':>22}{mfs_name:>13}{ELK:>13}{'ElkFS/MooseFS':>15}")
    for i, label in enumerate(("write (conv=fsync)", "cold read")):
        theirs, ours = best[mfs_name][i], best[ELK][i]
        print(f"{label:>22}{theirs:13.0f}{ours:13.0f}{ours / theirs if theirs else 0:15.2f}")


# ------------------------------------------------------------------ main

class BusyLoops:
    """`count` processes that spin on the CPU for the duration: a CPU-bound neighbour."""

    def __init__(self, count: int):
        self.count = count
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "BusyLoops":
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                      for _ in range(self.count)]
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)  # so every `with` below unmounts and tears down


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("n", nargs="?", type=int, default=2000, help="metabench's N")
    p.add_argument("--runs", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--moosefs", default="/work/scratch/moosefs4", metavar="PREFIX",
                   help="MooseFS install prefix (default %(default)s; else Debian's 3.0)")
    p.add_argument("--stress", type=int, default=0, metavar="B",
                   help="run B busy-loop processes beside both")
    p.add_argument("--metabench", default=METABENCH, metavar="PATH", help="metabench script")
    p.add_argument("--small-files", action="store_true", help="parallel small-file writers")
    p.add_argument("--procs", default="4,16", help="--small-files: writer counts")
    p.add_argument("--files", type=int, default=2000, help="--small-files: files per writer")
    p.add_argument("--size-kib", type=int, default=4, help="--small-files: file size")
    p.add_argument("--untar", action="store_true", help="tar x and rsync -a of --tree")
    p.add_argument("--tree", default="/usr/include", help="--untar: the tree")
    p.add_argument("--random-io", action="store_true", help="random mixed I/O on one file")
    p.add_argument("--file-mib", type=int, default=128, help="--random-io: file size")
    p.add_argument("--ops", type=int, default=20000, help="--random-io: operations")
    p.add_argument("--seed", type=int, default=16, help="--random-io: seed")
    p.add_argument("--dd", type=int, metavar="SIZE_MIB",
                   help="dd bs=1M write (conv=fsync) and cold read of SIZE_MIB")
    a = p.parse_args()
    a.procs = [int(x) for x in a.procs.split(",")]
    return a


def main() -> int:
    a = parse_args()
    install, which = Install.find(a.moosefs)
    print(which, flush=True)
    if install is None:
        return 2
    mfs_name = install.label
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    base = tempfile.mkdtemp(prefix="elkfs-moosefs-compare-")
    local = os.path.join(base, "local")
    os.makedirs(local)
    elk_net = free_loopback_net()
    print(f"{os.cpu_count()} CPUs; {mfs_name} and ElkFS: 1 master, 3 chunkservers, goal 2; "
          f"ElkFS on {elk_net}.x" + (f"; {a.stress} busy loops beside both" if a.stress else "")
          + f"; load average before: {load_average()}", flush=True)
    try:
        # With --dd both sides fsync the chunk files when the writer fsyncs (conv=fsync):
        # MooseFS only does with HDD_FSYNC_BEFORE_CLOSE.
        with NetNamespace(hosts=4) as ns, \
                MooseFS(install, os.path.join(base, "moosefs"), ns,
                        fsync_chunks=bool(a.dd)) as mfs, \
                MountedCluster(os.path.join(base, "elkfs"), elk_net, goal=2) as elk:
            log(f"MooseFS namespace {ns.name}, {ns.net}.0/24 over {ns.host_if}")
            wait_stock(elk.cluster)
            elk_pids = lambda: [p for p in [elk.pid] + [d.pid() for d in elk.cluster.masters
                                                        + elk.cluster.chunkservers] if p]
            sides = [Side(mfs_name, mfs.mnt, mfs.pids, mfs.remount),
                     Side(ELK, elk.mnt, elk_pids, elk.remount)]
            with_local = sides + [Side(LOCAL, local, lambda: [])]
            print(idle_cpu(sides), flush=True)
            with BusyLoops(a.stress):
                if a.dd:
                    compare_dd(a, sides, mfs_name)
                if a.small_files:
                    compare_small_files(a, sides, mfs_name)
                if a.untar:
                    compare_untar(a, with_local, mfs_name)
                if a.random_io:
                    compare_random_io(a, sides, mfs_name,
                                      os.path.join(elk.base_dir, "mount.log"))
                if not (a.dd or a.small_files or a.untar or a.random_io):
                    compare_metabench(a, with_local, mfs_name)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"load average after (the machine is shared): {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
