"""ElkFS: a MooseFS-style distributed file system with highly available metadata masters."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("elkfs")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
