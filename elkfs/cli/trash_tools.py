"""MooseFS tools for trash time and snapshots, on paths inside a mount:

    mfsgettrashtime [-r] PATH...      mfssettrashtime [-r] SECONDS PATH...
    mfsmakesnapshot SRC... DST

They find the master through the mount's `.masterinfo`, like the other tools (tools.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from ..client.client import Client
from ..proto import messages as m
from ..proto.errors import FsError
from .tools import (ToolError, _client, _recursive_flag, attr_summary_tool, find_mount,
                    master_inode, path_tool)


def mfsgettrashtime(argv: list[str] | None = None) -> int:
    return attr_summary_tool(argv, "mfsgettrashtime",
                             "Print how long deleted files stay in the trash.", "trashtime", 10)


def mfssettrashtime(argv: list[str] | None = None) -> int:
    def add_args(p):
        _recursive_flag(p)
        p.add_argument("seconds", type=int)

    async def report(client: Client, path: str, inode: int, a):
        attr = (await client.op(m.SetTrashTime(inode, a.seconds, a.r))).attr
        return ({"path": path, "trashtime": attr.trashtime, "recursive": a.r},
                f"{path}: {attr.trashtime}")

    return path_tool(argv, "mfssettrashtime", "Set how long deleted files stay in the trash.",
                     report, add_args, lambda a: "seconds must be 0 or more" if a.seconds < 0 else None)


def mfsmakesnapshot(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mfsmakesnapshot",
                                description="Lazy copy (copy-on-write) of files or trees.")
    p.add_argument("sources", nargs="+", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    a = p.parse_args(argv)

    async def main() -> int:
        try:
            info, mount_dir = find_mount(a.dst if os.path.exists(a.dst)
                                         else os.path.dirname(os.path.abspath(a.dst)))
            client = await _client(info, mount_dir)
        except ToolError as e:
            print(f"mfsmakesnapshot: {e}", file=sys.stderr)
            return 1
        status = 0
        try:
            dst_is_dir = os.path.isdir(a.dst)
            if len(a.sources) > 1 and not dst_is_dir:
                print(f"mfsmakesnapshot: {a.dst}: not a directory", file=sys.stderr)
                return 1
            if dst_is_dir:
                parent = master_inode(a.dst, info)
            else:
                parent = master_inode(os.path.dirname(os.path.abspath(a.dst)) or "/", info)
            for src in a.sources:
                name = os.path.basename(os.path.normpath(src)) if dst_is_dir \
                    else os.path.basename(os.path.normpath(a.dst))
                try:
                    src_info, _ = find_mount(src)
                    if (src_info["host"], src_info["port"]) != (info["host"], info["port"]):
                        raise ToolError(f"{src}: not on the same ElkFS as {a.dst}")
                    await client.op(m.Snapshot(master_inode(src, src_info), parent,
                                               os.fsencode(name), os.getuid(), os.getgid()))
                except (ToolError, FsError, OSError) as e:
                    print(f"mfsmakesnapshot: {e if isinstance(e, ToolError) else f'{src}: {e}'}",
                          file=sys.stderr)
                    status = 1
        finally:
            await client.close()
        return status

    return asyncio.run(main())
