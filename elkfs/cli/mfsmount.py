"""mfsmount: mount ElkFS with FUSE (MooseFS style).

    mfsmount MOUNTPOINT [-H HOST] [-P PORT] [-S SUBFOLDER] [-o opt,...] [-c CFG] [-f] [-d]
    mfsmount -m MOUNTPOINT [-H HOST] [-P PORT] [-o ...]   (meta file system: the trash)
    umount MOUNTPOINT   (or fusermount3 -u MOUNTPOINT)
"""

from __future__ import annotations

import os
import sys

from ..mount.options import OptionError, parse


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts = parse(argv)
    except OptionError as e:
        print(f"mfsmount: {e}", file=sys.stderr)
        return 2
    if not os.path.isdir(opts.mountpoint):
        print(f"mfsmount: mount point {opts.mountpoint} is not a directory", file=sys.stderr)
        return 1
    from ..mount import runner

    if opts.foreground:
        return runner.run_foreground(opts)
    return runner.run_background([a for a in argv if a != "-f"], opts)


if __name__ == "__main__":
    sys.exit(main())
