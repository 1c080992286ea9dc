"""Fixtures shared by the unit tests."""

import pytest


@pytest.fixture
def disks(tmp_path):
    """Two empty directories to use as a chunkserver's disks."""
    paths = [tmp_path / "hd1", tmp_path / "hd2"]
    for p in paths:
        p.mkdir()
    return [str(p) for p in paths]
