"""Shared fixtures of the FUSE tests: one cluster + mount per test module.

A module sets `NET = "127.0.N"` (its own loopback net) and may set `MOUNT_OPTIONS`.
Tests get `d`, a fresh directory inside the mount named after the test.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import pytest

from .mounted import MountedCluster

if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:  # pragma: no cover
    pytest.skip("FUSE is not available", allow_module_level=True)


@pytest.fixture(scope="module")
def mc(request, tmp_path_factory):
    net = getattr(request.module, "NET")
    opts = getattr(request.module, "MOUNT_OPTIONS", "")
    chunkservers = getattr(request.module, "CHUNKSERVERS", 3)
    # Not under pytest's 0700 temporary root: other users must reach the mount point.
    base = tempfile.mkdtemp(prefix=f"elkfs-{request.module.__name__.rsplit('.', 1)[-1]}-")
    os.chmod(base, 0o755)
    cluster = MountedCluster(base, net, chunkservers=chunkservers, mount_options=opts)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def d(mc, request):
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:100]
    path = os.path.join(mc.mnt, name)
    os.mkdir(path)
    os.chmod(path, 0o755)
    return path
