"""mfschunkserver [-c CFG] [-f] [-o KEY=VALUE] start|stop|restart|reload|status"""

from __future__ import annotations

import sys

from elkfs import daemon
from elkfs.chunkserver.server import OPTIONS, run


def main(argv: list[str] | None = None) -> int:
    return daemon.run_daemon("mfschunkserver", "/etc/mfs/mfschunkserver.cfg", OPTIONS, run,
                             argv)


if __name__ == "__main__":
    sys.exit(main())
