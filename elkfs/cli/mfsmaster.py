"""`mfsmaster [-c CFG] [-f] start|stop|restart|reload|status`"""

import asyncio
import sys

from ..daemon import run_daemon
from ..master.server import OPTIONS, serve


def describe(cfg) -> str | None:
    """`status`: the running master's own word on its state (LEADER / FOLLOWER /
    CANDIDATE with HA), term and metadata version."""
    from ..client.masters import master_status

    host = cfg.MATOCL_LISTEN_HOST if cfg.MATOCL_LISTEN_HOST not in ("*", "0.0.0.0", "") \
        else "127.0.0.1"
    try:
        st = asyncio.run(master_status(host, cfg.MATOCL_LISTEN_PORT, timeout=3.0))
    except Exception as e:  # noqa: BLE001 - status must say something, whatever failed
        return f"state: unknown (no answer on {host}:{cfg.MATOCL_LISTEN_PORT}: {e!r})"
    line = f"state: {st['state']}, metadata version {st['metadata_version']}"
    if "term" in st and cfg.HA_ENABLED:
        line += f", term {st['term']}"
        if st.get("state") != "LEADER":
            line += f", leader {st.get('leader') or 'unknown'}"
        lease = st.get("lease")
        if lease:
            line += f", lease expires in {lease['expires_in']:.2f}s"
    return line


def init(cfg) -> int:
    """`mfsmaster init`: found a new HA cluster on this master, deliberately (a first
    start founds one by itself on the master with the lowest address; this is for when
    that master cannot be the one). Refused where a cluster or metadata already is."""
    import os

    from ..master.ha import found_cluster

    if not cfg.HA_ENABLED:
        print("mfsmaster init: HA_ENABLED is 0: a single master needs no init", file=sys.stderr)
        return 1
    try:
        os.makedirs(cfg.DATA_PATH, exist_ok=True)
        cluster = found_cluster(cfg.DATA_PATH)
    except (ValueError, OSError) as e:
        print(f"mfsmaster init: {e}", file=sys.stderr)
        return 1
    print(f"cluster {cluster} founded on this master; start it and the others "
          "(the others join it)")
    return 0


def check_reload(cfg) -> str | None:
    """`reload` first reads the exports file: a bad one is named here, and the running
    master keeps its rules (it would refuse the file too)."""
    from ..master.exports import ExportsError
    from ..master.server import exports_path, load_exports

    try:
        load_exports(exports_path(cfg))
    except ExportsError as e:
        return f"{e} (not reloaded: the running master keeps its rules)"
    return None


def main(argv=None) -> int:
    return run_daemon("mfsmaster", "/etc/mfs/mfsmaster.cfg", OPTIONS, serve, argv, describe,
                      {"init": init}, check_reload)


if __name__ == "__main__":
    sys.exit(main())
