"""HA clusters for the failover tests: masters found through a real dnsmasq, a real
mount by name, faults on real processes (SIGKILL, SIGSTOP, iptables on loopback
addresses).

Each test gets a fresh cluster (`ha_cluster`) on its module's loopback net (`NET`), with
the shipped defaults: 2 s leases, DNS refreshed every 5 s.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from elkfs.testing.faults import Firewall
from tests.fuse.mounted import MountedCluster

if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:  # pragma: no cover
    pytest.skip("FUSE is not available", allow_module_level=True)


@pytest.fixture
def ha_cluster(request):
    """A started HA cluster with a mount: `MASTERS` masters (default 3), three
    chunkservers; the mount finds the leader through the name."""
    net = getattr(request.module, "NET")
    masters = getattr(request.module, "MASTERS", 3)
    base = tempfile.mkdtemp(prefix=f"elkfs-ha-{request.node.name[:40]}-")
    os.chmod(base, 0o755)
    mc = MountedCluster(base, net, chunkservers=3, masters=masters, ha=True)
    mc.start()
    try:
        mc.cluster.wait_leader(30)
        yield mc
    finally:
        Firewall.heal_all()
        mc.stop()
        if os.environ.get("ELKFS_KEEP_TEST_DIRS"):
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
