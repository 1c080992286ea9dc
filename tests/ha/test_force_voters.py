"""The operator's way out when a majority of the voters is gone for good: two of the
three chunkservers lose their voter state (a disk replaced), so no master can be elected
under the old voter set; `mfscli -C FV` forces the voters that are there now."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from elkfs.testing.faults import converged, wait_until

NET = "127.0.87"
BIN = os.path.dirname(sys.executable)


def mfscli(mc, *args: str) -> subprocess.CompletedProcess:
    """As an operator on a machine without a mount: the masters by name, through DNS."""
    c = mc.cluster
    return subprocess.run([os.path.join(BIN, "mfscli"), "-H", c.master_host, "-D",
                           c.dns_server, *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_forced_voter_set_brings_back_a_leader(ha_cluster):
    c, mnt = ha_cluster.cluster, ha_cluster.mnt
    with open(os.path.join(mnt, "before"), "wb") as f:
        f.write(b"written before the disaster\n")
    old_leader = c.leader()
    old_voters = set(c.status(old_leader)["record_voters"])
    assert len(old_voters) == 3

    # A leader exists: the force is refused and changes nothing.
    out = mfscli(ha_cluster, "-C", "FV", "-y")
    assert out.returncode == 1 and "there is nothing to force" in out.stderr, out

    # Two chunkservers come back with new voter identities: the old set has one voter left.
    lost = c.chunkservers[:2]
    for cs in lost:
        c.kill(cs)
        os.remove(os.path.join(cs.data_dir, "voter.state"))
    for cs in lost:
        c.start_daemon(cs)
    time.sleep(3 * 2.0)  # three leases: no master can be elected under the old set
    assert not any((c.status(d) or {}).get("state") == "LEADER" for d in c.masters)

    # Without confirmation nothing is done.
    out = mfscli(ha_cluster, "-C", "FV")
    assert out.returncode == 1 and "confirm with -y" in out.stderr, out

    out = mfscli(ha_cluster, "-C", "FV", "-y")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "voters left out" in out.stdout and "leader " in out.stdout
    leader = c.wait_leader(10)
    new_voters = set(c.status(leader)["record_voters"])
    assert len(new_voters) == 3 and len(new_voters & old_voters) == 1
    events = open(os.path.join(leader.data_dir, "lease.log")).read()
    assert "force-done" in events

    # The file system works again, nothing acknowledged was lost, every master converges.
    with open(os.path.join(mnt, "before"), "rb") as f:
        assert f.read() == b"written before the disaster\n"
    with open(os.path.join(mnt, "after"), "wb") as f:
        f.write(b"written after the force\n")
    wait_until(lambda: converged(c), 60, "every master in sync under the forced voter set")
