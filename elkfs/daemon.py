"""MooseFS-style daemon control shared by `mfsmaster` and `mfschunkserver`.

    mfsmaster [-c CFG] [-f] [-o KEY=VALUE ...] start|stop|restart|reload|status

- `start` runs in the background; the starting command returns only when the daemon says
  it is serving (or failed, with its message), so scripts can rely on it.
- `-f` runs in the foreground and logs to stderr as well.
- A lock file in the data directory (flock, holding the pid) keeps two daemons off one
  data directory and tells `stop`/`status`/`reload` whom to signal.
- Logs always go to `<name>.log` in the data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import fcntl
import logging
import os
import signal
import sys
import time
from typing import Awaitable, Callable

from . import config as cfgmod
from . import loglimit

LOG_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s: %(message)s"


class DaemonError(Exception):
    pass


class LockFile:
    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DaemonError(f"another daemon holds {self.path} (pid {self.holder()})") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def holder(self) -> int | None:
        """The pid of the daemon holding the lock, or None when nobody does."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return None  # we could lock it: nobody holds it
            except OSError:
                pass
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        finally:
            os.close(fd)


def setup_logging(log_path: str, foreground: bool, name: str) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO)
    fmt = logging.Formatter(LOG_FORMAT)
    fh = logging.FileHandler(log_path)
    fh.setFormatter(fmt)
    loglimit.install(fh)
    root.addHandler(fh)
    if foreground:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        loglimit.install(sh)
        root.addHandler(sh)


def parse_args(prog: str, default_cfg: str, argv: list[str] | None, extra=()):
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("-c", dest="cfg", default=default_cfg, help=f"config file (default {default_cfg})")
    p.add_argument("-f", dest="foreground", action="store_true", help="run in the foreground")
    p.add_argument("-o", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config option")
    p.add_argument("action", nargs="?", default="start",
                   choices=["start", "stop", "restart", "reload", "status", *extra])
    return p.parse_args(argv)


def run_daemon(prog: str, default_cfg: str, options: dict[str, cfgmod.Option],
               body: Callable[[cfgmod.Config, Callable[[], None]], Awaitable[None]],
               argv: list[str] | None = None,
               describe: Callable[[cfgmod.Config], str | None] | None = None,
               actions: dict[str, Callable[[cfgmod.Config], int]] | None = None,
               check_reload: Callable[[cfgmod.Config], str | None] | None = None) -> int:
    """Entry point of a daemon. `body(cfg, ready)` runs the service; it calls `ready()`
    once it serves and returns when the daemon should exit (SIGTERM cancels it).
    `describe(cfg)` adds what the running daemon says of itself to `status`; `actions`
    are the daemon's own commands besides start/stop/... (run while it is stopped).
    `check_reload(cfg)` says what is wrong with the files a reload would read (None: all
    good): `reload` then prints it and signals nothing."""
    actions = actions or {}
    args = parse_args(prog, default_cfg, argv, tuple(actions))
    try:
        overrides = dict(o.split("=", 1) for o in args.overrides)
    except ValueError:
        print(f"{prog}: -o expects KEY=VALUE", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.WARNING, format=f"{prog}: %(message)s")
    try:
        cfg = cfgmod.load(args.cfg, options, overrides=overrides)
    except cfgmod.ConfigError as e:
        print(f"{prog}: config error: {e}", file=sys.stderr)
        return 1
    data_path = cfg.DATA_PATH
    lock = LockFile(os.path.join(data_path, f".{prog}.lock"))

    if args.action in actions:
        if lock.holder():
            print(f"{prog} {args.action}: stop the running daemon first", file=sys.stderr)
            return 1
        return actions[args.action](cfg)
    if args.action == "status":
        pid = lock.holder()
        print(f"{prog} is running (pid {pid})" if pid else f"{prog} is not running")
        if pid and describe is not None:
            detail = describe(cfg)
            if detail:
                print(detail)
        return 0 if pid else 3
    if args.action == "reload":
        pid = lock.holder()
        if not pid:
            print(f"{prog} is not running", file=sys.stderr)
            return 1
        problem = check_reload(cfg) if check_reload is not None else None
        if problem:
            print(f"{prog} reload: {problem}", file=sys.stderr)
            return 1
        os.kill(pid, signal.SIGHUP)
        return 0
    if args.action in ("stop", "restart"):
        rc = _stop(prog, lock)
        if args.action == "stop":
            return rc
    try:
        os.makedirs(data_path, exist_ok=True)
    except OSError as e:
        print(f"{prog}: cannot create DATA_PATH {data_path}: {e.strerror}", file=sys.stderr)
        return 1
    if lock.holder():
        print(f"{prog}: already running (pid {lock.holder()}) on {data_path}", file=sys.stderr)
        return 1
    if args.foreground:
        return _run(prog, cfg, lock, body, foreground=True, ready_fd=None)
    return _start_background(prog, cfg, lock, body)


def _stop(prog: str, lock: LockFile, timeout: float = 60.0) -> int:
    pid = lock.holder()
    if not pid:
        print(f"{prog} is not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while lock.holder() and time.monotonic() < deadline:
        time.sleep(0.05)
    if lock.holder():
        print(f"{prog}: pid {pid} did not stop within {timeout:.0f}s", file=sys.stderr)
        return 1
    print(f"{prog} stopped")
    return 0


def _start_background(prog, cfg, lock, body) -> int:
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: new session, detach from the terminal
        os.close(rfd)
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        code = 1
        try:
            code = _run(prog, cfg, lock, body, foreground=False, ready_fd=wfd)
        finally:
            os._exit(code)
    os.close(wfd)
    os.waitpid(pid, 0)
    with os.fdopen(rfd, "rb") as r:
        answer = r.read().decode(errors="replace")
    if answer.startswith("ready"):
        print(f"{prog} started ({answer[6:].strip()})")
        return 0
    print(f"{prog}: start failed: {answer.strip() or 'daemon exited'}", file=sys.stderr)
    return 1


def _run(prog, cfg, lock, body, foreground: bool, ready_fd: int | None) -> int:
    def tell(text: str):
        nonlocal ready_fd
        if ready_fd is not None:
            try:
                os.write(ready_fd, text.encode())
            finally:
                os.close(ready_fd)
                ready_fd = None

    try:
        lock.acquire()
    except DaemonError as e:
        tell(str(e))
        if foreground:
            print(f"{prog}: {e}", file=sys.stderr)
        return 1
    setup_logging(os.path.join(cfg.DATA_PATH, f"{prog}.log"), foreground, prog)
    log = logging.getLogger(prog)
    log.info("starting with config %s", cfg.path)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main():
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        loop.add_signal_handler(signal.SIGINT, task.cancel)
        ready = lambda: (log.info("serving"), tell(f"ready pid {os.getpid()}"))
        try:
            await body(cfg, ready)
        except asyncio.CancelledError:
            log.info("stopping on signal")

    try:
        asyncio.run(main())
    except Exception as e:
        log.exception("fatal error")
        tell(f"{type(e).__name__}: {e}")
        return 1
    tell("daemon exited before serving")
    log.info("stopped")
    return 0
