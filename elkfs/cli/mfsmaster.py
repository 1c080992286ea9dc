"""`mfsmaster [-c CFG] [-f] start|stop|restart|reload|status`"""

import sys

from ..daemon import run_daemon
from ..master.server import OPTIONS, serve


def main(argv=None) -> int:
    return run_daemon("mfsmaster", "/etc/mfs/mfsmaster.cfg", OPTIONS, serve, argv)


if __name__ == "__main__":
    sys.exit(main())
