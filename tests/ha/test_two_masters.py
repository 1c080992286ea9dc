"""Two masters only (and three chunkservers voting): the voters break the tie, so the
cluster still fails over."""

from __future__ import annotations

from elkfs.testing.faults import converged, wait_until
from .test_failover import run_workload

NET = "127.0.83"
MASTERS = 2


def test_two_masters_fail_over(ha_cluster):
    c = ha_cluster.cluster
    old = c.leader()

    def fault():
        c.kill(old)
        c.wait_leader(30, other_than=old)

    run_workload(ha_cluster, fault)
    c.start_daemon(old)
    wait_until(lambda: converged(c), 30, "both masters in sync")
    assert c.status(old)["state"] == "FOLLOWER"
