"""mfshdd.cfg: the list of disks (directories) a chunkserver stores chunks on.

One path per line; `#` starts a comment; blank lines are ignored. MooseFS line forms are
accepted so an existing MooseFS file keeps working:

    /mnt/hd1                a disk
    */mnt/hd2               marked for removal: chunks are served, none are added
    </mnt/hd3  >/mnt/hd4    MooseFS "move chunks off" / "prefer" marks (recorded)
    ~/mnt/hd5               MooseFS "ignore I/O errors" mark (recorded)
    /mnt/hd6 -5GiB          a space limit after the path (recorded, not enforced yet)
    /mnt/hd7=...            an `=` suffix form (recorded as options)

A path that does not exist (or is not a directory) is an error naming the file and line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PREFIXES = "*<>~="


class HddConfigError(Exception):
    pass


@dataclass(frozen=True)
class HddEntry:
    path: str
    marked_for_removal: bool = False
    prefix: str = ""  # every MooseFS mark character seen before the path
    options: str = ""  # whatever followed the path (space limit, `=` forms)
    lineno: int = 0


def parse_text(text: str, cfg_path: str = "<mfshdd.cfg>", check_exists: bool = True
               ) -> list[HddEntry]:
    entries: list[HddEntry] = []
    seen: set[str] = set()
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        prefix = ""
        while line and line[0] in PREFIXES:
            prefix += line[0]
            line = line[1:].lstrip()
        if not line:
            raise HddConfigError(f"{cfg_path}:{lineno}: no path in {raw.strip()!r}")
        parts = line.split(None, 1)
        path = parts[0]
        options = parts[1].strip() if len(parts) > 1 else ""
        if "=" in path and not os.path.exists(path):
            path, _, rest = path.partition("=")
            options = ("=" + rest + (" " + options if options else "")).strip()
        if not os.path.isabs(path):  # relative to the file's directory
            base = os.getcwd() if cfg_path.startswith("<") else os.path.dirname(cfg_path)
            path = os.path.abspath(os.path.join(base, path))
        path = os.path.normpath(path)
        if check_exists:
            if not os.path.exists(path):
                raise HddConfigError(f"{cfg_path}:{lineno}: disk path {path} does not exist")
            if not os.path.isdir(path):
                raise HddConfigError(f"{cfg_path}:{lineno}: disk path {path} is not a directory")
        if path in seen:
            raise HddConfigError(f"{cfg_path}:{lineno}: disk path {path} listed twice")
        seen.add(path)
        entries.append(HddEntry(path, "*" in prefix, prefix, options, lineno))
    return entries


def load(cfg_path: str, check_exists: bool = True) -> list[HddEntry]:
    try:
        with open(cfg_path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise HddConfigError(f"{cfg_path}: disk list not found") from None
    except OSError as e:
        raise HddConfigError(f"{cfg_path}: cannot read: {e.strerror}") from None
    entries = parse_text(text, cfg_path, check_exists)
    if not entries:
        raise HddConfigError(f"{cfg_path}: no disks listed")
    return entries
