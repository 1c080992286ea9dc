"""The pieces of bench/moosefs_compare.py that can be checked without a file system cluster:
the CPU meter, the workloads on a local directory, and the MooseFS network namespace's
set-up and removal. Behaviour only; nothing here is timed."""

import os
import shutil
import socket
import subprocess
import sys

import pytest

from bench import workloads
from bench.cputime import CpuMeter, Watch
from bench.moosefs_cluster import NetNamespace


CHILD = ("import sys, time\n"
         "sys.stdin.readline()\n"
         "t = time.process_time()\n"
         "while time.process_time() - t < 0.3: pass\n"
         "print('spun', flush=True)\n"
         "sys.stdin.read()\n")


def test_cpu_meter_counts_children_and_keeps_exited_ones():
    # a parent whose child (sharing its stdin and stdout) spins 0.3 s of CPU on a word
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys\n"
         f"subprocess.Popen([sys.executable, '-c', {CHILD!r}]).wait()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        meter = None
        for _ in range(250):  # until the child exists
            meter = CpuMeter([parent.pid])
            if len(meter.pids) == 2:
                break
            subprocess.run(["sleep", "0.02"])
        assert len(meter.pids) == 2
        before = meter.seconds()
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline() == "spun\n"
        used = meter.seconds() - before
        assert 0.2 < used < 5
        parent.stdin.close()
        parent.wait(30)
        assert meter.seconds() - before == used  # the exited keep their last figure
    finally:
        parent.kill()


def test_watch_without_a_meter_times_only():
    w = Watch(None)
    with w:
        pass
    assert w.cpu_s is None and w.seconds >= 0


def test_random_io_is_seeded_and_reads_back_what_it_wrote(tmp_path):
    runs = [workloads.random_io(str(tmp_path), 1, 400, seed=3, watch=Watch(None))
            for _ in range(2)]
    assert [r.wrong_bytes_reads for r in runs] == [0, 0]
    assert os.listdir(tmp_path) == []


def test_small_files_and_tree_workloads_leave_nothing_behind(tmp_path):
    assert workloads.small_files(str(tmp_path), 3, 20, 1, Watch(None)) > 0
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a").write_text("a")
    tarball = str(tmp_path / "t.tar")
    assert workloads.make_tarball(str(tree), tarball) == 3
    dest = tmp_path / "dest"
    dest.mkdir()
    workloads.untar(tarball, str(dest), Watch(None))
    if shutil.which("rsync"):
        workloads.rsync(str(tree), str(dest), Watch(None))
    assert os.listdir(dest) == []


def _ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True).stdout


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                    reason="needs root and iproute2")
def test_namespace_is_reachable_from_the_host_and_removed_after(tmp_path):
    lo_before = _ip("-o", "addr", "show", "dev", "lo")
    with pytest.raises(RuntimeError), NetNamespace(hosts=2) as ns:
        assert ns.name in _ip("netns", "list")
        inside = _ip("-n", ns.name, "-o", "addr")
        assert all(f" {a}/24" in inside for a in ns.addrs)
        # a listener inside the namespace, reached from the host over the veth pair
        server = subprocess.Popen(
            [*ns.exec_args(), sys.executable, "-c",
             "import socket\n"
             f"s = socket.create_server(('{ns.addrs[1]}', 9422))\n"
             "print('up', flush=True)\n"
             "c, _ = s.accept(); c.sendall(b'hi'); c.close()"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline() == "up\n"
            with socket.create_connection((ns.addrs[1], 9422), timeout=5) as c:
                assert c.recv(2) == b"hi"
        finally:
            server.kill()
            server.wait()
        assert _ip("-o", "addr", "show", "dev", "lo") == lo_before
        raise RuntimeError("a failed run")
    assert ns.name not in _ip("netns", "list")
    assert ns.host_if not in _ip("link")
