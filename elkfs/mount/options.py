"""mfsmount's command line and mfsmount.cfg, in MooseFS style.

    mfsmount MOUNTPOINT [-H HOST] [-P PORT] [-S SUBFOLDER] [-o opt[=val],...] [-m] [-f] [-c CFG]

mfsmount.cfg (default /etc/mfs/mfsmount.cfg, or `-c`/`-o mfscfgfile=`) holds one option
per line as given to `-o` (`mfsmaster=10.0.0.1`, `allow_other`), `#` comments, and
optionally a line with the mount point (a path starting with `/`). Command-line options
win over the file.

ElkFS options (the `mfs*` names MooseFS uses): mfsmaster (an address, or a name whose A
records are the masters: the mount follows the leader), mfsdnsserver (IP[:PORT] of the DNS
server to resolve it with; default: the system resolver), mfsport, mfssubfolder,
mfspassword / mfsmd5pass (an export's password, or its MD5 in hex: proven to the master
by challenge and response, never sent), mfsioretries (seconds a system
call keeps retrying while the master or chunkservers are unreachable, then EIO),
mfsattrcacheto, mfsentrycacheto, mfsnegentrycacheto, mfsdirentrycacheto (kernel cache
timeouts, seconds), mfswritecache (1/0: kernel write-back cache), mfscachemode
(AUTO|YES|NO: keep the page cache across opens), mfsreadahead (read-ahead window, MiB),
mfslogfile, mfsbind (same as `-B`: the local address to connect to the
master from, which is what mfsexports.cfg sees), mfsmeta (same as `-m`: mount the meta file system, the trash, instead of the
normal one). Every other `-o` option is handed to FUSE (allow_other, ro, ...).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

DEFAULT_CFG = "/etc/mfs/mfsmount.cfg"


class OptionError(ValueError):
    pass


@dataclass
class MountOptions:
    mountpoint: str = ""
    master: str = "mfsmaster"
    port: int = 9421
    dns_server: str | None = None  # where to resolve `master` (None: the system resolver)
    subfolder: str = "/"
    password: str | None = None
    md5pass: str | None = None  # the password's MD5 (hex), as mfsexports.cfg's md5pass
    bind: str | None = None  # local address to reach the master from (-B, mfsbind)
    io_retries: float = 30.0
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    neg_entry_timeout: float = 0.0
    direntry_timeout: float = 1.0
    # Off by default: with the kernel's write-back cache on, the kernel trusts its own
    # cached size of a regular file over any the mount returns (fuse_get_cache_mask),
    # and no notification can make it shrink or re-read it, so another client's change
    # of the size would stay unseen for as long as the inode stays cached
    # (docs/consistency.md).
    write_cache: bool = False
    cache_mode: str = "AUTO"
    readahead_mib: int = 16
    foreground: bool = False
    debug: bool = False
    logfile: str | None = None
    cfgfile: str | None = None
    meta: bool = False
    fuse_options: set[str] = field(default_factory=set)


def _float(key: str, value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise OptionError(f"option {key}: {value!r} is not a number") from None
    if v < 0:
        raise OptionError(f"option {key}: must not be negative")
    return v


def _int(key: str, value: str, lo: int = 0, hi: int = 1 << 30) -> int:
    try:
        v = int(value)
    except ValueError:
        raise OptionError(f"option {key}: {value!r} is not an integer") from None
    if not lo <= v <= hi:
        raise OptionError(f"option {key}: must be {lo}-{hi}")
    return v


def apply_option(opts: MountOptions, item: str) -> None:
    item = item.strip()
    if not item:
        return
    key, eq, value = item.partition("=")
    key = key.strip()
    value = value.strip()
    if key == "mfsmaster":
        if not value:
            raise OptionError("option mfsmaster needs a host")
        opts.master = value
    elif key == "mfsdnsserver":
        from ..discovery import parse_dns_server

        try:
            parse_dns_server(value)
        except ValueError as e:
            raise OptionError(f"option mfsdnsserver: {e}") from None
        opts.dns_server = value or None
    elif key == "mfsport":
        opts.port = _int(key, value, 1, 65535)
    elif key == "mfssubfolder":
        opts.subfolder = value or "/"
    elif key == "mfspassword":
        opts.password = value
    elif key == "mfsmd5pass":
        try:
            ok = len(bytes.fromhex(value)) == 16
        except ValueError:
            ok = False
        if not ok:
            raise OptionError("option mfsmd5pass: 32 hexadecimal digits (an MD5)")
        opts.md5pass = value
    elif key == "mfsbind":
        opts.bind = value or None
    elif key == "mfsioretries":
        opts.io_retries = _float(key, value)
    elif key == "mfsattrcacheto":
        opts.attr_timeout = _float(key, value)
    elif key == "mfsentrycacheto":
        opts.entry_timeout = _float(key, value)
    elif key == "mfsnegentrycacheto":
        opts.neg_entry_timeout = _float(key, value)
    elif key == "mfsdirentrycacheto":
        opts.direntry_timeout = _float(key, value)
    elif key == "mfswritecache":
        opts.write_cache = value.lower() not in ("0", "no", "false", "off")
    elif key == "mfscachemode":
        mode = value.upper()
        if mode not in ("AUTO", "YES", "NO", "DIRECT"):
            raise OptionError("option mfscachemode: AUTO, YES, NO or DIRECT")
        opts.cache_mode = mode
    elif key == "mfsreadahead":
        opts.readahead_mib = _int(key, value, 0, 1024)
    elif key == "mfslogfile":
        opts.logfile = value
    elif key == "mfscfgfile":
        opts.cfgfile = value
    elif key == "mfsmeta":
        opts.meta = True
    elif key in ("mfsdebug", "debug"):
        opts.debug = True
    elif key.startswith("mfs"):
        raise OptionError(f"unknown option {key}")
    else:
        opts.fuse_options.add(item if eq else key)


def read_cfg(path: str) -> tuple[list[str], str | None]:
    """Options and the mount point (if any) of an mfsmount.cfg file."""
    items: list[str] = []
    mountpoint = None
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("/"):
                mountpoint = line
            else:
                items.extend(p for p in line.split(",") if p.strip())
    return items, mountpoint


def parse(argv: list[str]) -> MountOptions:
    p = argparse.ArgumentParser(prog="mfsmount", description="Mount ElkFS (MooseFS style).")
    p.add_argument("mountpoint", nargs="?")
    p.add_argument("-H", dest="host", help="master host name (default mfsmaster)")
    p.add_argument("-P", dest="port", help="master client port (default 9421)")
    p.add_argument("-S", dest="subfolder", help="subfolder of ElkFS to mount")
    p.add_argument("-B", dest="bind", help="local address to connect to the master from")
    p.add_argument("-o", dest="options", action="append", default=[],
                   help="comma-separated mount options")
    p.add_argument("-c", dest="cfg", help=f"config file (default {DEFAULT_CFG})")
    p.add_argument("-m", "--meta", dest="meta", action="store_true",
                   help="mount the meta file system (trash) instead of the normal one")
    p.add_argument("-f", dest="foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-d", dest="debug", action="store_true", help="debug logging (implies -f)")
    a = p.parse_args(argv)
    cli_items = [i for o in a.options for i in o.split(",")]
    opts = MountOptions()
    cfg = a.cfg
    for item in cli_items:
        if item.strip().startswith("mfscfgfile="):
            cfg = item.split("=", 1)[1].strip()
    cfg_mountpoint = None
    if cfg is not None or os.path.exists(DEFAULT_CFG):
        path = cfg or DEFAULT_CFG
        try:
            items, cfg_mountpoint = read_cfg(path)
        except OSError as e:
            raise OptionError(f"cannot read {path}: {e.strerror}") from None
        for item in items:
            try:
                apply_option(opts, item)
            except OptionError as e:
                raise OptionError(f"{path}: {e}") from None
        opts.cfgfile = path
    for item in cli_items:
        apply_option(opts, item)
    if a.host:
        opts.master = a.host
    if a.port:
        opts.port = _int("-P", a.port, 1, 65535)
    if a.subfolder:
        opts.subfolder = a.subfolder
    if a.bind:
        opts.bind = a.bind
    opts.meta = opts.meta or a.meta
    opts.foreground = a.foreground or a.debug
    opts.debug = opts.debug or a.debug
    opts.mountpoint = a.mountpoint or cfg_mountpoint or ""
    if not opts.mountpoint:
        raise OptionError("no mount point given")
    return opts
