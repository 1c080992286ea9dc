"""The workloads bench/moosefs_compare.py runs on each side (a mount or a local directory).

Each takes a directory to work in, leaves nothing behind in it, and returns what it measured;
the caller times the CPU of the side's processes around it (bench/cputime.py). None of them
checks a target: they are instruments, never timed tests.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

from bench.cputime import CpuMeter, Watch

ROW = re.compile(r"^\s*(\w+):\s+([0-9.]+) ops/s\s+\(([0-9.]+) s\)")


@dataclass(frozen=True)
class Row:
    ops_per_s: float
    cpu_s_per_op: float | None  # of the side's processes; None for a local directory


def metabench(script: str, root: str, n: int, meter: CpuMeter | None) -> dict[str, Row]:
    """Run metabench on `root` and read the CPU of `meter`'s processes as each of its lines
    comes out: a line is printed right as its phase ends, so the CPU between two lines is
    that phase's (the next phase has just begun when the line is read: a few microseconds
    of it are counted with the one before)."""
    proc = subprocess.Popen([sys.executable, "-u", script, root, str(n)],
                            stdout=subprocess.PIPE, text=True)
    rows: dict[str, Row] = {}
    cpu_before = meter.seconds() if meter else 0.0
    try:
        for line in proc.stdout:
            m = ROW.match(line)
            if not m:
                continue
            name, ops_per_s, secs = m.group(1), float(m.group(2)), float(m.group(3))
            cpu_per_op = None
            if meter:
                cpu_now = meter.seconds()
                ops = ops_per_s * secs
                cpu_per_op = (cpu_now - cpu_before) / ops if ops else None
                cpu_before = cpu_now
            rows[name] = Row(ops_per_s, cpu_per_op)
    except BaseException:
        proc.kill()  # interrupted: not left writing into a mount being torn down
        proc.wait()
        raise
    if proc.wait() != 0:
        raise RuntimeError(f"metabench on {root} exited with {proc.returncode}")
    return rows


# ------------------------------------------------------------------ small files in parallel

def _write_files(root: str, files: int, size: int, start: multiprocessing.Barrier,
                 done: multiprocessing.Queue) -> None:
    os.mkdir(root)
    blob = os.urandom(size)
    start.wait()
    t0 = time.monotonic()
    for i in range(files):
        fd = os.open(os.path.join(root, f"f{i:06d}"), os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, blob)
        os.close(fd)
    done.put((t0, time.monotonic()))


def small_files(root: str, procs: int, files: int, size_kib: int, watch: Watch) -> float:
    """`procs` processes each create and write `files` files of `size_kib` KiB in a
    directory of their own, started together; seconds from the first start to the last
    end (`watch` brackets the writers' whole lives, for the CPU). The files are removed
    afterwards, outside both."""
    top = os.path.join(root, f"smallfiles.{os.getpid()}")
    os.mkdir(top)
    ctx = multiprocessing.get_context("fork")
    start, done = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_write_files,
                           args=(os.path.join(top, f"p{i}"), files, size_kib * 1024, start, done))
               for i in range(procs)]
    try:
        with watch:
            for w in workers:
                w.start()
            spans = [done.get(timeout=3600) for _ in workers]
            for w in workers:
                w.join()
    except BaseException:
        for w in workers:
            if w.is_alive():
                w.kill()  # interrupted: not left writing into a mount being torn down
        raise
    if any(w.exitcode != 0 for w in workers):
        raise RuntimeError("a small-file writer failed")
    shutil.rmtree(top)
    return max(e for _, e in spans) - min(s for s, _ in spans)


# ------------------------------------------------------------------ a source tree

def make_tarball(src: str, path: str) -> int:
    """tar `src` into `path` once (the input of every unpacking); the count of entries."""
    subprocess.run(["tar", "cf", path, "-C", os.path.dirname(src), os.path.basename(src)],
                   check=True)
    out = subprocess.run(["tar", "tf", path], capture_output=True, text=True, check=True)
    return len(out.stdout.splitlines())


def untar(tarball: str, root: str, watch: Watch) -> float:
    """Seconds to unpack `tarball` into a new directory of `root` (then removed)."""
    dest = os.path.join(root, f"untar.{os.getpid()}")
    os.mkdir(dest)
    with watch:
        subprocess.run(["tar", "xf", tarball, "-C", dest], check=True)
    shutil.rmtree(dest)
    return watch.seconds


def rsync(src: str, root: str, watch: Watch) -> float:
    """Seconds for `rsync -a src/ root/new/` (then removed)."""
    dest = os.path.join(root, f"rsync.{os.getpid()}")
    with watch:
        subprocess.run(["rsync", "-a", src.rstrip("/") + "/", dest + "/"], check=True)
    shutil.rmtree(dest)
    return watch.seconds


# ------------------------------------------------------------------ random mixed I/O

@dataclass(frozen=True)
class RandomIO:
    seconds: float  # the operations and the final fsync, not the initial fill
    ops: int
    wrong_bytes_reads: int  # reads that did not return what was written: must be 0


def random_io(root: str, size_mib: int, ops: int, seed: int, watch: Watch) -> RandomIO:
    """One process over one file of `size_mib` MiB (spanning chunks when that is over 64):
    a seeded mix of reads (40 %), writes (35 %), mmap accesses (20 %: map a window, read a
    range and write a few bytes through it) and truncates (5 %: down to between half and
    all of `size_mib`, or up to `size_mib`). Every read is checked against a model of the
    file kept in memory; a mismatch is counted, not raised, so the time is still printed."""
    rng = random.Random(seed)
    size = size_mib << 20
    path = os.path.join(root, f"randomio.{os.getpid()}")
    model = bytearray(rng.randbytes(size))
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
    try:
        for off in range(0, size, 1 << 20):
            os.pwrite(fd, model[off:off + (1 << 20)], off)
        os.fsync(fd)
        with watch:
            bad = sum(not _random_op(fd, model, size, rng) for _ in range(ops))
            os.fsync(fd)
        if os.pread(fd, len(model) + 1, 0) != bytes(model):
            bad += 1
    finally:
        os.close(fd)
        os.unlink(path)
    return RandomIO(watch.seconds, ops, bad)


def _random_op(fd: int, model: bytearray, size: int, rng: random.Random) -> bool:
    """One operation of `random_io` on `fd` and on `model`; False if a read did not
    return the model's bytes."""
    kind = rng.random()
    length = len(model)
    if kind < 0.40:  # read
        off = rng.randrange(max(length, 1))
        n = rng.randint(1, 128 * 1024)
        return os.pread(fd, n, off) == model[off:off + n]
    if kind < 0.75:  # write, sometimes past the end
        off = rng.randrange(size)
        data = rng.randbytes(rng.randint(1, 128 * 1024))
        os.pwrite(fd, data, off)
        if off > length:
            model.extend(bytes(off - length))
        model[off:off + len(data)] = data
        return True
    if kind < 0.95:  # mmap: a window of up to 1 MiB at a page-aligned offset
        if length < mmap.PAGESIZE:
            return True
        off = rng.randrange(length // mmap.PAGESIZE) * mmap.PAGESIZE
        win = min(length - off, rng.randint(1, 256) * mmap.PAGESIZE)
        with mmap.mmap(fd, win, offset=off) as m:
            a = rng.randrange(win)
            b = min(win, a + rng.randint(1, 64 * 1024))
            ok = m[a:b] == model[off + a:off + b]
            patch = rng.randbytes(min(16, win - a))
            m[a:a + len(patch)] = patch
            model[off + a:off + a + len(patch)] = patch
        return ok
    new = rng.randint(size // 2, size) if rng.random() < 0.7 else size  # truncate
    os.ftruncate(fd, new)
    if new < length:
        del model[new:]
    else:
        model.extend(bytes(new - length))
    return True
