"""Start-up of a cluster found through DNS, and what applications see with no leader."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from elkfs.testing.faults import converged, wait_until

NET = "127.0.85"
BIN = os.path.dirname(sys.executable)


def test_three_masters_found_through_dns_elect_one_leader(ha_cluster):
    """Every master, found through the name's three A records, agrees on one leader and
    its term; the leader logged its lease; the mount (by name) works."""
    c = ha_cluster.cluster
    wait_until(lambda: converged(c), 30, "all masters in sync")
    views = [c.status(d) for d in c.masters]
    leaders = [v for v in views if v["state"] == "LEADER"]
    assert len(leaders) == 1
    leader = leaders[0]
    for v in views:
        assert v["cluster"] == leader["cluster"] and v["cluster"]
        assert v["accepted_term"] == leader["accepted_term"]
        assert v["leader"] == leader["address"]
        assert sorted(m["address"] for m in v["masters"]) == sorted(d.host for d in c.masters)
        assert all(m["in_sync"] for m in v["masters"])
    assert len(leader["voters"]) == 3 and leader["lease"]["expires_in"] > 0
    lead_dir = next(d for d in c.masters if d.host == leader["address"]).data_dir
    with open(os.path.join(lead_dir, "lease.log")) as f:
        text = f.read()
    assert " lease-acquired " in text and " serving " in text and "mono=" in text
    with open(os.path.join(ha_cluster.mnt, "hello"), "w") as f:
        f.write("hello")
    with open(os.path.join(ha_cluster.mnt, "hello")) as f:
        assert f.read() == "hello"
    status = subprocess.run([os.path.join(BIN, "mfsmaster"), "-c", c.masters[0].cfg_path,
                             "status"], capture_output=True, text=True, timeout=30)
    assert status.returncode == 0 and "state: " in status.stdout
    assert ("LEADER" in status.stdout) == (leader["address"] == c.masters[0].host)


def test_no_leader_for_longer_than_mfsioretries_is_eio(ha_cluster):
    """With every master gone, a system call waits `mfsioretries` seconds, then fails
    with EIO (never hangs); once a leader is back the mount works again. (The setting is
    what this test is about: 4 s instead of the default 30 s.)"""
    retries = 4
    ha_cluster.remount(f"mfsioretries={retries}")
    c = ha_cluster.cluster
    os.mkdir(os.path.join(ha_cluster.mnt, "d"))
    for d in c.masters:
        c.kill(d)
    started = time.monotonic()
    with pytest.raises(OSError) as e:
        os.stat(os.path.join(ha_cluster.mnt, "d", "not-cached"))
    took = time.monotonic() - started
    assert e.value.errno == 5, e.value  # EIO
    assert retries - 1 <= took <= retries + 30
    for d in c.masters:
        c.start_daemon(d)
    c.wait_leader(30)
    with open(os.path.join(ha_cluster.mnt, "d", "after"), "w") as f:
        f.write("back")
    assert sorted(os.listdir(os.path.join(ha_cluster.mnt, "d"))) == ["after"]


def test_init_founds_the_cluster_on_the_chosen_master(tmp_path):
    """`mfsmaster init` founds the cluster on the master it runs on (here the one with the
    highest address, which would otherwise never found it): its id is everybody's, and a
    second init is refused."""
    from elkfs.testing.cluster import Cluster

    c = Cluster(str(tmp_path / "c"), net="127.0.86", masters=3, chunkservers=3, ha=True)
    c.write_configs()
    chosen = c.masters[-1]
    out = subprocess.run([os.path.join(BIN, "mfsmaster"), "-c", chosen.cfg_path, "init"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    cluster_id = out.stdout.split()[1]
    again = subprocess.run([os.path.join(BIN, "mfsmaster"), "-c", chosen.cfg_path, "init"],
                           capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "already belongs" in again.stderr
    try:
        c.start()
        assert c.wait_leader(30) is chosen  # nobody else may bootstrap
        wait_until(lambda: converged(c), 30, "all masters in sync")
        assert {c.status(d)["cluster"] for d in c.masters} == {cluster_id}
    finally:
        c.stop()
