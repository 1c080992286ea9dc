"""The MooseFS client tools, working on paths inside a mount:

    mfsgetgoal [-r] PATH...          mfssetgoal [-r] GOAL PATH...
    mfsfileinfo PATH...              mfscheckfile PATH...
    mfsdirinfo PATH...               mfscli [-H HOST] [-P PORT] [-S IN|IG|CS|IM] [PATH]

Each finds the master through the hidden `.masterinfo` file at the root of the mount the
path is in (as MooseFS does), and asks it about the path's inode (a mount's inode numbers
are the master's). Text output follows MooseFS; `--json` prints JSON instead.

On a mount with a password, the tools run by root (or the mount's owner) ride on the
mount's session: they read its `.mastertoken` and prove it to the master, which gives
them the mount's rights and never more (docs/security.md). Other users are refused there.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import stat
import sys
import time

from ..client.client import Client
from ..proto import messages as m
from ..proto.errors import FsError

MASTERINFO = ".masterinfo"
MASTERTOKEN = ".mastertoken"
NEEDS_ROOT = ("this export needs a password: run the tool as root (it then uses the "
              "mount's session)")


class ToolError(Exception):
    pass


def find_mount(path: str) -> tuple[dict, str]:
    """(masterinfo, mount root) of the ElkFS mount holding `path`."""
    path = os.path.abspath(path)
    try:
        dev = os.lstat(path).st_dev
    except OSError as e:
        raise ToolError(f"{path}: {e.strerror}") from None
    d = path if os.path.isdir(path) and not os.path.islink(path) else os.path.dirname(path)
    while True:
        info = os.path.join(d, MASTERINFO)
        try:
            if os.stat(d).st_dev == dev and os.path.isfile(info):
                with open(info) as f:
                    return json.load(f), d
        except (OSError, ValueError):
            pass
        if d == "/":
            raise ToolError(f"{path}: not inside an ElkFS mount")
        d = os.path.dirname(d)


def master_inode(path: str, info: dict) -> int:
    st = os.lstat(path)
    return info.get("root_inode", 1) if st.st_ino == 1 else st.st_ino


def mount_attach(mount_dir: str):
    """How to ride on the session of the mount at `mount_dir` (`MasterLink.attach`), or
    None: the mount has no token (no password: the tools need none), or we may not read
    it (not root)."""
    path = os.path.join(mount_dir, MASTERTOKEN)
    try:
        with open(path):
            pass
    except OSError:
        return None

    def attach() -> tuple[bytes, bytes]:
        try:
            with open(path) as f:
                session, token = f.read().split()
            return bytes.fromhex(session), bytes.fromhex(token)
        except (OSError, ValueError) as e:
            raise FsError(errno.EACCES, f"{path}: no token to read ({e})") from None

    return attach


async def _client(info: dict, mount_dir: str, name: str = "mfstools") -> Client:
    """A session of our own, on the mount's subfolder (the exports allow it as they allow
    the mount), riding on the mount's session when it has a password."""
    attach = mount_attach(mount_dir)
    try:
        client = await Client.connect(info["host"], info["port"], info=name, retry_s=10.0,
                                      dns_server=info.get("dns_server"),
                                      subfolder=info.get("subfolder") or "/",
                                      bind=info.get("bind"), attach=attach)
    except FsError as e:
        if attach is None and e.status == errno.EACCES and "password" in e.detail:
            raise ToolError(f"{mount_dir}: {NEEDS_ROOT}") from None
        raise ToolError(f"{mount_dir}: master {info['host']}:{info['port']}: {e}") from None
    client.link.on_progress = _show_progress
    return client


def _show_progress(done: int) -> None:
    """A long operation (a big tree, done by the master in steps) reports how far it got,
    about once a second."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "mfstools"
    print(f"{prog}: {done} entries done...", file=sys.stderr, flush=True)


async def _walk(client: Client, inode: int):
    """Yield the Attr of `inode` and of everything below it."""
    attr = (await client.op(m.GetAttr(inode))).attr
    stack = [attr]
    while stack:
        a = stack.pop()
        yield a
        if stat.S_ISDIR(a.mode):
            for e in await client.readdir_inode(a.inode):
                stack.append(e.attr)


def _run_paths(paths: list[str], per_path) -> int:
    """Run `per_path(client, path, inode)` for each path, one client per master."""

    async def main() -> int:
        status = 0
        clients: dict[tuple, Client] = {}
        try:
            for path in paths:
                try:
                    info, mount_dir = find_mount(path)
                    key = (info["host"], info["port"], mount_dir)
                    if key not in clients:
                        clients[key] = await _client(info, mount_dir)
                    await per_path(clients[key], path, master_inode(path, info))
                except (ToolError, FsError, OSError) as e:
                    msg = str(e) if isinstance(e, ToolError) else f"{path}: {e}"
                    print(msg, file=sys.stderr)
                    status = 1
        finally:
            for c in clients.values():
                await c.close()
        return status

    return asyncio.run(main())


def _emit_json(items) -> None:
    print(json.dumps(items, indent=2))


# ---------------------------------------------------------------- goals


def path_tool(argv, prog: str, description: str, report, add_args=None, check=None) -> int:
    """The shape every path tool shares: `PROG [options] [--json] PATH...`.
    `report(client, path, inode, args)` returns (JSON item, text) for one path; `check(args)`
    may return what is wrong with the arguments (exit 2)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--json", action="store_true")
    if add_args is not None:
        add_args(p)
    p.add_argument("paths", nargs="+")
    a = p.parse_args(argv)
    problem = check(a) if check is not None else None
    if problem:
        print(f"{prog}: {problem}", file=sys.stderr)
        return 2
    out = []

    async def one(client: Client, path: str, inode: int) -> None:
        item, text = await report(client, path, inode, a)
        out.append(item)
        if not a.json:
            print(text)

    status = _run_paths(a.paths, one)
    if a.json:
        _emit_json(out)
    return status


def _recursive_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("-r", action="store_true", help="recursive")


def attr_summary_tool(argv, prog: str, description: str, field: str, width: int) -> int:
    """`PROG [-r] [--json] PATH...`: an attribute of each path (`PATH: VALUE`) or, with -r,
    how many files and directories of the tree have each value (MooseFS style).
    Serves mfsgetgoal and mfsgettrashtime."""

    async def report(client: Client, path: str, inode: int, a):
        if not a.r:
            value = getattr((await client.op(m.GetAttr(inode))).attr, field)
            return {"path": path, field: value}, f"{path}: {value}"
        files: dict[int, int] = {}
        dirs: dict[int, int] = {}
        async for attr in _walk(client, inode):
            target = dirs if stat.S_ISDIR(attr.mode) else files
            value = getattr(attr, field)
            target[value] = target.get(value, 0) + 1
        lines = [f"{path}:"]
        lines += [f" files with {field:<12}{v:>{width}} : {n:10d}" for v, n in sorted(files.items())]
        lines += [f" directories with {field:<6}{v:>{width}} : {n:10d}" for v, n in sorted(dirs.items())]
        item = {"path": path, "files": {str(k): v for k, v in sorted(files.items())},
                "directories": {str(k): v for k, v in sorted(dirs.items())}}
        return item, "\n".join(lines)

    return path_tool(argv, prog, description, report, _recursive_flag)


def mfsgetgoal(argv: list[str] | None = None) -> int:
    return attr_summary_tool(argv, "mfsgetgoal", "Print the goal (copies).", "goal", 1)


def mfssetgoal(argv: list[str] | None = None) -> int:
    def add_args(p):
        _recursive_flag(p)
        p.add_argument("goal", type=int)

    async def report(client: Client, path: str, inode: int, a):
        if not a.r:
            attr = (await client.op(m.SetGoal(inode, a.goal, False))).attr
            return {"path": path, "goal": attr.goal}, f"{path}: {attr.goal}"
        changed = unchanged = 0
        async for attr in _walk(client, inode):
            if attr.goal == a.goal:
                unchanged += 1
            else:
                changed += 1
        await client.op(m.SetGoal(inode, a.goal, True))
        item = {"path": path, "goal": a.goal, "changed": changed, "not_changed": unchanged,
                "permission_denied": 0}
        return item, "\n".join([
            f"{path}:",
            f" inodes with goal changed:      {changed:10d}",
            f" inodes with goal not changed:  {unchanged:10d}",
            f" inodes with permission denied: {0:10d}"])

    return path_tool(argv, "mfssetgoal", "Set the goal (copies).", report, add_args,
                     lambda a: None if 1 <= a.goal <= 9 else "goal must be 1-9")


# ---------------------------------------------------------------- files and directories


def mfsfileinfo(argv: list[str] | None = None) -> int:
    async def report(client: Client, path: str, inode: int, a):
        chunks = (await client.op(m.FileChunks(inode))).chunks
        item = {"path": path, "chunks": [
            {"index": c.index, "chunk_id": c.chunk_id, "version": c.version,
             "copies": [{"address": f"{cp.addr[0]}:{cp.addr[1]}", "version": cp.version,
                         "status": "VALID" if cp.valid else "INVALID"} for cp in c.copies]}
            for c in chunks]}
        lines = [f"{path}:"]
        if not chunks:
            lines.append("\tno chunks - empty file")
        for c in item["chunks"]:
            lines.append(f"\tchunk {c['index']}: {c['chunk_id']:016X}_{c['version']:08X} / "
                         f"(id:{c['chunk_id']} ver:{c['version']})")
            if not c["copies"]:
                lines.append("\t\tno valid copies !!!")
            for i, cp in enumerate(c["copies"], 1):
                lines.append(f"\t\tcopy {i}: {cp['address']} (status:{cp['status']})")
        return item, "\n".join(lines)

    return path_tool(argv, "mfsfileinfo", "Chunks of a file and their copies.", report)


def mfscheckfile(argv: list[str] | None = None) -> int:
    async def report(client: Client, path: str, inode: int, a):
        hist: dict[int, int] = {}
        for c in (await client.op(m.FileChunks(inode))).chunks:
            n = sum(1 for cp in c.copies if cp.valid)
            hist[n] = hist.get(n, 0) + 1
        item = {"path": path, "chunks_with_copies": {str(k): v for k, v in sorted(hist.items())}}
        lines = [f"{path}:"] + [f" chunks with {n} cop{'y' if n == 1 else 'ies'}: {count}"
                                for n, count in sorted(hist.items())]
        return item, "\n".join(lines)

    return path_tool(argv, "mfscheckfile", "Chunks per number of copies.", report)


def mfsdirinfo(argv: list[str] | None = None) -> int:
    fields = ("inodes", "dirs", "files", "chunks", "length", "size", "realsize")

    async def report(client: Client, path: str, inode: int, a):
        s = await client.op(m.DirStats(inode))
        item = {"path": path, **{f: getattr(s, f) for f in fields}}
        return item, "\n".join([
            f"{path}:",
            f" inodes:       {s.inodes:16d}",
            f"  directories: {s.dirs:16d}",
            f"  files:       {s.files:16d}",
            f" chunks:       {s.chunks:16d}",
            f" length:       {s.length:16d}",
            f" size:         {s.size:16d}",
            f" realsize:     {s.realsize:16d}"])

    return path_tool(argv, "mfsdirinfo", "Totals of a directory tree.", report)


# ---------------------------------------------------------------- mfscli

SECTIONS = {"IN": "full master info", "IG": "general master info", "CS": "chunkservers",
            "IM": "masters", "MS": "masters"}


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _print_general(info: dict) -> None:
    total, used = info["total_bytes"], info["used_bytes"]
    pct = 100.0 * used / total if total else 0.0
    rows = [
        ("metadata version", info["metadata_version"]),
        ("total space", f"{_human(total)} ({total})"),
        ("used space", f"{_human(used)} ({used}, {pct:.1f}%)"),
        ("avail space", f"{_human(total - used)} ({total - used})"),
        ("all inodes", info["inodes"]),
        ("all chunks", info["chunks"]),
        ("sessions", info["sessions"]),
        ("missing chunks", info["missing_chunks"]),
        ("endangered chunks", info["endangered_chunks"]),
        ("undergoal chunks", info.get("undergoal_chunks", 0)),
        ("last checkpoint version", info.get("last_checkpoint_version", "-")),
    ]
    print("master info:")
    for k, v in rows:
        print(f" {k:<24}: {v}")
    hist = info.get("chunks_by_copies") or {}
    if hist:
        print(" chunks by number of valid copies:")
        for n, count in sorted(hist.items(), key=lambda kv: int(kv[0])):
            print(f"  {n} cop{'y' if n == '1' else 'ies'}: {count}")


def _print_chunkservers(info: dict) -> None:
    servers = info["chunkservers"]
    print("chunk servers:")
    print(f" {'#':>2} {'address':<22} {'state':<24} {'chunks':>8} {'used':>12} {'total':>12} {'used%':>6}")
    for i, s in enumerate(sorted(servers, key=lambda s: s["address"]), 1):
        pct = 100.0 * s["used_bytes"] / s["total_bytes"] if s["total_bytes"] else 0.0
        state = "connected" if s["connected"] else "disconnected"
        if s.get("maintenance_s"):
            state += f", maintenance {s['maintenance_s']:.0f}s"
        print(f" {i:>2} {s['address']:<22} {state:<24} {s['chunks']:>8} "
              f"{_human(s['used_bytes']):>12} {_human(s['total_bytes']):>12} {pct:>5.1f}%")


def _print_masters(masters: list[dict]) -> None:
    """Each master as it describes itself (with HA every master is asked)."""
    print("metadata servers:")
    print(f" {'#':>2} {'address':<16} {'state':<24} {'term':>5} {'meta version':>13} "
          f"{'in sync':>8} {'lease left':>10} {'uptime':>9}")
    for i, ms in enumerate(masters, 1):
        lease = ms.get("lease")
        left = f"{lease['expires_in']:.2f}s" if lease else "-"
        in_sync = {True: "yes", False: "no"}.get(_self_entry(ms).get("in_sync"), "-")
        uptime = f"{ms['uptime_s']} s" if "uptime_s" in ms else "-"
        print(f" {i:>2} {ms.get('address', '?'):<16} {ms.get('state', '?'):<24} "
              f"{ms.get('term', '-'):>5} {ms.get('metadata_version', '-'):>13} {in_sync:>8} "
              f"{left:>10} {uptime:>9}")
        if not ms.get("reachable", True):
            print(f"      unreachable: {ms.get('error', '')}")


def _self_entry(view: dict) -> dict:
    return next((x for x in view.get("masters", []) if x.get("self")), {})


def _step_down(host: str, port: int, dns_server: str | None, target: str) -> int:
    """Hand the leadership over (to `target`, or the most caught-up master) and show it
    happen."""
    from ..client.masters import cluster_status, master_admin

    started = time.monotonic()
    try:
        asyncio.run(master_admin(host, "step-down", target, port, dns_server))
    except (FsError, OSError) as e:
        print(f"mfscli: step-down: {e}", file=sys.stderr)
        return 1
    print("step-down requested; waiting for the new leader...")
    while time.monotonic() - started < 15:
        views = asyncio.run(cluster_status(host, port, dns_server, timeout=1.0))
        leaders = [v for v in views if v.get("state") == "LEADER"]
        if leaders:
            v = leaders[0]
            print(f"new leader {v['address']} (term {v['term']}) after "
                  f"{time.monotonic() - started:.2f}s")
            return 0
        time.sleep(0.05)
    print("mfscli: no new leader within 15 s", file=sys.stderr)
    return 1


def _force_voters(host: str, port: int, dns_server: str | None, target: str,
                  yes: bool) -> int:
    """The way out when a majority of the voters is gone for good (docs/ha.md): the voters
    the chosen master (the most up-to-date one by default) sees now become the voter set.
    Every master must answer, because the new term must be above every term any of them
    holds; the command is repeated until a leader shows up."""
    from ..client.masters import admin_one, cluster_status

    views = asyncio.run(cluster_status(host, port, dns_server, timeout=2.0))
    silent = [v["address"] for v in views if not v.get("reachable")]
    if silent:
        print(f"mfscli: force-voters: {', '.join(silent)} do not answer, so the highest term "
              "cannot be known: bring them back, or remove their A records if they are gone "
              "for good, and retry", file=sys.stderr)
        return 1
    leaders = [v["address"] for v in views if v.get("state") == "LEADER"]
    if leaders:
        print(f"mfscli: force-voters: {leaders[0]} leads: there is nothing to force",
              file=sys.stderr)
        return 1
    if target:
        chosen = next((v for v in views if v.get("address") == target), None)
        if chosen is None:
            print(f"mfscli: force-voters: {target} is not a master of {host}", file=sys.stderr)
            return 1
    else:
        chosen = max(views, key=lambda v: (tuple(v.get("log") or (0, 0)), v["address"]))
    voters = tuple(chosen.get("voters", []))
    if not voters:
        print(f"mfscli: force-voters: no voter is connected to {chosen['address']}",
              file=sys.stderr)
        return 1
    min_term = max(max(v.get("term", 0), v.get("accepted_term", 0)) for v in views)
    lost = sorted(set(chosen.get("record_voters", [])) - set(voters))
    print(f"master {chosen['address']} (log at {chosen.get('log')}) will lead with the voters "
          f"it sees now: {', '.join(voters)}, in a term above {min_term}.")
    print(f"voters left out: {', '.join(lost) or 'none'}. They must never come back under "
          "their old ids: delete voter.state on their chunkservers before restarting them, "
          "or two leaders may be elected.")
    if not yes:
        if not sys.stdin.isatty():
            print("mfscli: force-voters: confirm with -y", file=sys.stderr)
            return 1
        if input("type 'force' to go on: ").strip() != "force":
            print("nothing done")
            return 1
    started = time.monotonic()
    last_answer = None
    while time.monotonic() - started < 60:
        try:
            answer = asyncio.run(admin_one(chosen["address"], port, "force-voters",
                                           voters=voters, min_term=min_term))
            if answer != last_answer:
                print(f"  {time.monotonic() - started:5.1f}s {chosen['address']} is "
                      f"{answer['state']}")
                last_answer = answer
        except (FsError, OSError, asyncio.TimeoutError) as e:
            if getattr(e, "status", None) != errno.EBUSY:  # EBUSY: it leads already
                print(f"  {time.monotonic() - started:5.1f}s {e}")
        views = asyncio.run(cluster_status(host, port, dns_server, timeout=1.0))
        leader = next((v for v in views if v.get("state") == "LEADER"), None)
        if leader is not None:
            print(f"leader {leader['address']} (term {leader['term']}) with voters "
                  f"{', '.join(leader.get('record_voters', []))} after "
                  f"{time.monotonic() - started:.1f}s; see lease.log on "
                  f"{chosen['address']} for the force-* events")
            return 0
        time.sleep(1.0)
    print("mfscli: force-voters: no leader within 60 s; see lease.log of "
          f"{chosen['address']} (force-refused tells why)", file=sys.stderr)
    return 1


def _chunkserver_command(host: str, port: int, dns_server: str | None, command: str,
                         target: str) -> int:
    from ..client.masters import master_admin

    try:
        result = asyncio.run(master_admin(host, command, target, port, dns_server))
    except (FsError, OSError) as e:
        print(f"mfscli: {command} {target}: {e}", file=sys.stderr)
        return 1
    if command == "remove-chunkserver":
        print(f"chunkserver {target} removed")
    elif result["maintenance"]:
        left = result["until"] - time.time()
        print(f"chunkserver {target} in maintenance for {left:.0f} s (its copies are not "
              "rebuilt while it is away; M0 ends it)")
    else:
        print(f"chunkserver {target}: maintenance off")
    return 0


def mfscli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mfscli", description="ElkFS cluster information.")
    p.add_argument("-H", dest="host", help="master host (default: from the mount, else mfsmaster)")
    p.add_argument("-P", dest="port", type=int, default=None, help="master client port (9421)")
    p.add_argument("-S", dest="sections", action="append", default=[],
                   help="section: IN (all), IG (general), CS (chunkservers), IM (masters)")
    p.add_argument("-D", dest="dns_server", default=None,
                   help="DNS server (IP[:PORT]) to resolve the master name with")
    p.add_argument("-C", dest="command", default=None,
                   help="command: SD (the leader steps down), SD/ADDRESS (hands over to that "
                        "master), M1/HOST:PORT and M0/HOST:PORT (a chunkserver's maintenance "
                        "mode on/off), RC/HOST:PORT (remove a chunkserver gone for good), "
                        "FV[/ADDRESS] (force the voter set to the voters that master sees, "
                        "when a majority of the voters is lost for good; see docs/ha.md)")
    p.add_argument("-y", dest="yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true")
    p.add_argument("path", nargs="?", help="a path inside a mount (default: current directory)")
    a = p.parse_args(argv)
    sections = [s.upper() for s in a.sections] or ["IN"]
    for s in sections:
        if s not in SECTIONS:
            print(f"mfscli: unknown section {s} (known: {', '.join(SECTIONS)})", file=sys.stderr)
            return 2
    host, port, dns_server = a.host, a.port, a.dns_server
    subfolder, bind, attach = "/", None, None  # a mount's: its export lets us in
    if host is None:
        try:
            info, mount_dir = find_mount(a.path or os.getcwd())
            attach = mount_attach(mount_dir)
            host, port = info["host"], port or info["port"]
            dns_server = dns_server or info.get("dns_server")
            subfolder, bind = info.get("subfolder") or "/", info.get("bind")
        except ToolError:
            if a.path:
                print(f"mfscli: {a.path}: not inside an ElkFS mount", file=sys.stderr)
                return 1
            host = "mfsmaster"
    port = port or 9421
    if a.command is not None:
        cmd, _, target = a.command.partition("/")
        cmd = cmd.upper()
        if cmd == "SD":
            return _step_down(host, port, dns_server, target)
        if cmd == "FV":
            return _force_voters(host, port, dns_server, target, a.yes)
        names = {"M1": "maintenance-on", "M0": "maintenance-off", "RC": "remove-chunkserver"}
        if cmd not in names or not target:
            print(f"mfscli: unknown command {a.command} (known: SD, SD/ADDRESS, FV, FV/ADDRESS, "
                  "M1/HOST:PORT, M0/HOST:PORT, RC/HOST:PORT)", file=sys.stderr)
            return 2
        return _chunkserver_command(host, port, dns_server, names[cmd], target)

    async def fetch() -> tuple[dict, list[dict]]:
        from ..client.masters import cluster_status

        client = await Client.connect(host, port, info="mfscli", retry_s=10.0,
                                      dns_server=dns_server, subfolder=subfolder, bind=bind,
                                      attach=attach)
        try:
            info = json.loads((await client.op(m.ClusterInfo())).text)
        finally:
            await client.close()
        return info, await cluster_status(host, port, dns_server)

    try:
        info, masters = asyncio.run(fetch())
    except (FsError, OSError) as e:
        if isinstance(e, FsError) and e.status == errno.EACCES and "password" in e.detail \
                and attach is None:
            print(f"mfscli: {NEEDS_ROOT}", file=sys.stderr)
        else:
            print(f"mfscli: master {host}:{port}: {e}", file=sys.stderr)
        return 1
    if a.json:
        doc = {}
        for s in sections:
            if s in ("IN", "IG"):
                doc["info"] = {k: v for k, v in info.items() if k not in ("chunkservers", "masters")}
            if s in ("IN", "CS"):
                doc["chunkservers"] = info["chunkservers"]
            if s in ("IN", "IM", "MS"):
                doc["masters"] = masters
        _emit_json(doc)
        return 0
    first = True
    for s in sections:
        if not first:
            print()
        first = False
        if s in ("IN", "IG"):
            _print_general(info)
        if s == "IN":
            print()
        if s in ("IN", "CS"):
            _print_chunkservers(info)
        if s == "IN":
            print()
        if s in ("IN", "IM", "MS"):
            _print_masters(masters)
    return 0
