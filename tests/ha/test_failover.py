"""Failover on real processes, with a recorded workload through a real mount.

Each test runs the same workload (an appender that fsyncs every record, a create-and-
rename loop, and another client reading the appended file's size), injects one fault
into the leader, and checks the history: no failed system call, every acknowledged
append present once and in order, every acknowledged rename complete, no stale read.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from elkfs.testing.faults import Firewall, converged, wait_until
from elkfs.testing.history import (Appender, History, Renamer, SizeReader, check_appends,
                                   check_no_failures, check_reads_not_stale, check_renames)

NET = "127.0.81"
BIN = os.path.dirname(sys.executable)
LEASE_S = 2.0  # the shipped LEADER_LEASE_DURATION


def run_workload(mc, fault, before_s: float = 2.0, after_s: float = 3.0) -> History:
    """Run the workload, call `fault()` once it is going, keep going `after_s` past the
    fault, then check the history."""
    d = os.path.join(mc.mnt, "w")
    os.mkdir(d)
    history = History()
    path = os.path.join(d, "log")
    workers = [Appender(history, path), Renamer(history, d),
               SizeReader(history, mc.cluster.client_args(), "/w/log")]
    for w in workers:
        w.start()
    try:
        time.sleep(before_s)
        fault_at = time.monotonic()
        fault()
        time.sleep(after_s)
    finally:
        for w in workers:
            w.stop()
    check_no_failures(history)
    check_appends(history, path)
    check_renames(history, d)
    check_reads_not_stale(history)
    after = [o for o in history.acked("append") if o.invoked > fault_at]
    assert after, "no append went through after the fault"
    return history


def lease_events(master) -> list[str]:
    with open(os.path.join(master.data_dir, "lease.log")) as f:
        return f.read().splitlines()


def test_kill_leader(ha_cluster):
    """kill -9 the leader: another master leads within a few seconds, the application
    only pauses; the old leader, restarted, comes back as a follower and catches up."""
    c = ha_cluster.cluster
    old = c.leader()

    def fault():
        c.kill(old)
        c.wait_leader(30, other_than=old)

    run_workload(ha_cluster, fault)
    c.start_daemon(old)
    wait_until(lambda: converged(c), 30, "all masters in sync")
    assert c.status(old)["state"] == "FOLLOWER"


def test_sigstop_leader_longer_than_its_lease(ha_cluster):
    """SIGSTOP the leader for three leases: a new leader serves meanwhile; after SIGCONT
    the old one sees its lease is gone, steps down, drops nothing acknowledged and
    catches up (the history would show anything it did after its lease ended)."""
    c = ha_cluster.cluster
    old = c.leader()

    def fault():
        c.signal(old, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            c.wait_leader(30, other_than=old)
            time.sleep(max(0.0, 3 * LEASE_S - (time.monotonic() - stopped_at)))
        finally:
            c.signal(old, signal.SIGCONT)

    run_workload(ha_cluster, fault)
    wait_until(lambda: converged(c), 30, "all masters in sync")
    assert c.status(old)["state"] == "FOLLOWER"
    assert any(" lease-lost " in line or " deposed " in line for line in lease_events(old))


def test_step_down_with_mfscli(ha_cluster):
    """`mfscli -C SD` hands the leadership to an in-sync follower under load."""
    c = ha_cluster.cluster
    old = c.leader()

    def fault():
        out = subprocess.run([os.path.join(BIN, "mfscli"), "-C", "SD", ha_cluster.mnt],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert re.search(r"new leader 127\.0\.81\.\d+ \(term \d+\)", out.stdout), out.stdout
        assert c.wait_leader(10) is not old

    run_workload(ha_cluster, fault)
    assert any(" step-down " in line for line in lease_events(old))
    wait_until(lambda: converged(c), 30, "all masters in sync")


def test_partition_isolates_the_leader(ha_cluster):
    """iptables cuts the leader off from the chunkservers and the other masters (both
    ways): the majority side elects, the old leader stops serving within its lease;
    after healing there is one leader and every master is in sync."""
    c = ha_cluster.cluster
    old = c.leader()
    others = [d.host for d in c.masters + c.chunkservers if d is not old]

    def fault():
        Firewall.isolate(old.host, others)
        cut_at = time.monotonic()
        wait_until(lambda: c.status(old)["state"] != "LEADER", 2 * LEASE_S,
                   "the isolated leader to stop serving")
        assert time.monotonic() - cut_at <= LEASE_S + 1.0
        c.wait_leader(30, other_than=old)

    run_workload(ha_cluster, fault)
    Firewall.heal_all()
    wait_until(lambda: converged(c), 30, "one leader and all masters in sync after healing")


def test_one_way_partition(ha_cluster):
    """The leader still sends but hears nothing (its renewals' answers are lost): it
    loses its lease, stops, and another master leads."""
    c = ha_cluster.cluster
    old = c.leader()
    others = [d.host for d in c.masters + c.chunkservers if d is not old]

    def fault():
        Firewall.isolate(old.host, others, both_ways=False)
        c.wait_leader(30, other_than=old)

    run_workload(ha_cluster, fault)
    assert c.status(old)["state"] != "LEADER"
    Firewall.heal_all()
    wait_until(lambda: converged(c), 30, "one leader and all masters in sync after healing")


def test_clean_stop_of_the_leader_hands_over(ha_cluster):
    """`mfsmaster stop` (SIGTERM) of the leader hands the leadership over first, as a
    step-down does, instead of leaving the others to wait for its lease."""
    c = ha_cluster.cluster
    old = c.leader()

    def fault():
        c.stop_daemon(old)
        c.wait_leader(10, other_than=old)

    run_workload(ha_cluster, fault)
    events = lease_events(old)
    assert any(" step-down " in line for line in events)
    assert any(" lease-released " in line for line in events)
    c.start_daemon(old)
    wait_until(lambda: converged(c), 30, "all masters in sync")
