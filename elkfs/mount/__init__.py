"""The ElkFS FUSE mount (pyfuse3 in asyncio mode, on top of `elkfs.client`).

`options` parses the MooseFS-style command line and mfsmount.cfg, `fs` holds the file
system (`ElkOperations`), `runner` mounts it and runs the event loop.
"""
