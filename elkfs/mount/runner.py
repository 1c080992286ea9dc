"""Mount the file system and serve it until unmounted (or SIGTERM/SIGINT).

Background mode (MooseFS's default) starts the same program with `-f` as a new session
leader and waits until it reports the file system mounted (or fails), so `mfsmount`
returns only once the mount point is usable.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import subprocess
import sys

import pyfuse3

from .. import loglimit
from ..client.client import Client, password_digest_of
from ..client.master_link import MasterLink
from ..proto.errors import FsError
from . import fuseloop
from .fs import ElkOperations
from .lowlevel import LowLevel
from .options import MountOptions
from .unmount import UnmountOnSignal

log = logging.getLogger("elkfs.mount")

READY_ENV = "ELKFS_MOUNT_READY_FD"


def _mount_devnum(mountpoint: str) -> str | None:
    """major:minor of the FUSE mount at `mountpoint`, from /proc/self/mountinfo (a stat()
    of the mount point would ask this very process, which is not serving yet)."""
    target = os.path.abspath(mountpoint)
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 4 and parts[4] == target and " - fuse" in line:
                    found = parts[2]
    except OSError:
        return None
    return found


def _raise_readahead(mountpoint: str, kib: int) -> None:
    dev = _mount_devnum(mountpoint)
    if dev is None:
        return
    try:
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(str(kib))
    except OSError as e:
        log.debug("cannot raise read-ahead of %s: %s", dev, e)


def _signal_ready(text: str) -> None:
    fd = os.environ.pop(READY_ENV, None)
    if fd is None:
        return
    try:
        os.write(int(fd), text.encode())
        os.close(int(fd))
    except OSError:
        pass


def _failed(why: str) -> int:
    """Report a failed mount on stderr and to a waiting `mfsmount` parent; exit status."""
    msg = f"mfsmount: {why}"
    print(msg, file=sys.stderr)
    _signal_ready("ERR " + msg)
    return 1


async def serve(opts: MountOptions) -> int:
    retry = opts.io_retries
    link = MasterLink(opts.master, opts.port, f"mfsmount {os.path.abspath(opts.mountpoint)}",
                      retry_s=retry, request_timeout_s=max(10.0, retry),
                      listing_ttl_ms=int(opts.direntry_timeout * 1000),
                      dns_server=opts.dns_server, path=opts.subfolder, meta=opts.meta,
                      password_digest=password_digest_of(opts.password, opts.md5pass),
                      bind=opts.bind)
    try:
        await link.connect()
    except FsError as e:
        if e.errno in (errno.EACCES, errno.ENOENT, errno.ENOTDIR, errno.EINVAL):
            what = "the meta file system" if opts.meta else opts.subfolder
            return _failed(f"master {opts.master}:{opts.port} refused to mount {what}: {e}")
        return _failed(f"cannot connect to master {opts.master}:{opts.port}: {e}")
    client = Client(link, retry)
    if opts.meta:
        return await _serve_meta(client, opts)
    root = link.root  # the master resolved the subfolder (mfsexports.cfg decides)
    ops = ElkOperations(client, opts, root)
    # No default_permissions unless asked for: the mount checks permissions itself (perms.py),
    # which saves the kernel's GETATTR of a directory after every change in it.
    fuse_opts = {f"fsname=mfs#{opts.master}:{opts.port}", "subtype=elkfs"}
    if os.getuid() == 0:
        fuse_opts.add("allow_other")
    fuse_opts |= opts.fuse_options
    fuse_opts.discard("no_default_permissions")
    try:
        pyfuse3.init(ops, opts.mountpoint, fuse_opts)
    except Exception as e:
        await client.close()
        return _failed(f"cannot mount {opts.mountpoint}: {e}")
    lowlevel = LowLevel(ops)  # global file locks, fallocate (what pyfuse3 leaves out)
    if not lowlevel.install():
        log.warning("file locks are local to this mount")
    loop = asyncio.get_running_loop()
    signals = UnmountOnSignal((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
    if opts.readahead_mib and os.getuid() == 0:
        # The kernel sets the mount's read-ahead when FUSE's INIT completes, which happens
        # once the loop below runs: raise it just after that.
        kib = max(1024, opts.readahead_mib * 1024)
        for delay in (0.2, 1.0, 3.0):
            loop.call_later(delay, _raise_readahead, opts.mountpoint, kib)
    log.info("mounted %s:%d%s at %s", opts.master, opts.port, opts.subfolder, opts.mountpoint)
    _signal_ready("OK")
    try:
        await pyfuse3.main(min_tasks=4, max_tasks=64)
    finally:
        try:
            await ops.shutdown()
        finally:
            try:
                pyfuse3.close(unmount=signals.stopping)
            except Exception as e:
                log.debug("close: %s", e)
            await client.close()
    log.info("unmounted %s", opts.mountpoint)
    return 0


async def _serve_meta(client: Client, opts: MountOptions) -> int:
    """`mfsmount -m` / `-o mfsmeta`: the trash as a file system (elkfs/mount/meta.py)."""
    from . import meta

    fuse_opts = set()
    if os.getuid() == 0:
        fuse_opts.add("allow_other")
    fuse_opts |= opts.fuse_options
    fuse_opts -= {"no_default_permissions", "default_permissions"}

    def ready() -> None:
        log.info("meta file system of %s:%d mounted at %s", opts.master, opts.port,
                 opts.mountpoint)
        _signal_ready("OK")

    try:
        await meta.serve(client, opts.mountpoint, fuse_opts, ready=ready)
    except Exception as e:
        return _failed(f"cannot mount {opts.mountpoint}: {e}")
    finally:
        await client.close()
    log.info("unmounted %s", opts.mountpoint)
    return 0


def run_foreground(opts: MountOptions) -> int:
    level = logging.DEBUG if opts.debug else logging.INFO
    fmt = "%(asctime)s mfsmount[%(process)d] %(levelname)s %(name)s: %(message)s"
    if opts.logfile:
        logging.basicConfig(filename=opts.logfile, level=level, format=fmt)
    else:
        logging.basicConfig(level=level if opts.foreground else logging.WARNING, format=fmt)
    for handler in logging.getLogger().handlers:
        loglimit.install(handler)
    fuseloop.enable()
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    return runner(serve(opts))


def run_background(argv: list[str], opts: MountOptions) -> int:
    """Start `mfsmount -f ...` detached and wait until it has mounted (or failed)."""
    r, w = os.pipe()
    env = dict(os.environ)
    env[READY_ENV] = str(w)
    args = [sys.executable, "-m", "elkfs.cli.mfsmount", *argv, "-f"]
    out = subprocess.DEVNULL
    proc = subprocess.Popen(args, env=env, pass_fds=(w,), stdin=subprocess.DEVNULL,
                            stdout=out, stderr=out, start_new_session=True, cwd="/")
    os.close(w)
    chunks = []
    while True:
        try:
            data = os.read(r, 4096)
        except OSError as e:
            if e.errno == errno.EINTR:
                continue
            raise
        if not data:
            break
        chunks.append(data)
    os.close(r)
    text = b"".join(chunks).decode(errors="replace")
    if text.startswith("OK"):
        print(f"mfsmount: {opts.master}:{opts.port} mounted at {opts.mountpoint} "
              f"(pid {proc.pid})")
        return 0
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
    print(text[4:] if text.startswith("ERR ") else
          f"mfsmount: mount process exited ({proc.returncode})", file=sys.stderr)
    return 1
