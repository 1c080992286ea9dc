"""The ElkFS client library (async): `Client.connect(host, port)`, then file operations."""

from .client import Client, File

__all__ = ["Client", "File"]
