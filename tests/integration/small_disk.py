"""A chunkserver disk that fills up: a small tmpfs mounted over its hdd directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess

import pytest

from elkfs.testing.cluster import Cluster


@contextlib.contextmanager
def small_disk(cluster: Cluster, index: int = 0, size: str = "100m"):
    """Mount a `size` tmpfs as chunkserver `index`'s disk (configs written first);
    skips the test when this machine cannot. Unmounted at exit."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    cluster.write_configs()
    hdd = os.path.join(cluster.chunkservers[index].data_dir, "hdd1")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", hdd]).returncode:
        pytest.skip("cannot mount tmpfs")
    try:
        yield cluster.chunkservers[index]
    finally:
        subprocess.run(["umount", hdd])
