"""Asking masters about themselves, without a session: what `mfsmaster status`, `mfscli`,
the test launcher and the web page use.

`master_status` asks one master for its view (`MasterStatus`: its state, term, log,
lease, the masters it knows); any master answers, leader or not. `cluster_status` asks
every A record of the master name. `master_admin` sends an operator command to the
leader, following one redirect.
"""

from __future__ import annotations

import asyncio
import json

from ..discovery import resolve
from ..proto import messages as m
from ..proto import rpc
from ..proto.errors import NOT_LEADER, FsError

CLIENT_PORT = 9421


async def master_status(host: str, port: int = CLIENT_PORT, timeout: float = 2.0) -> dict:
    """One master's view; raises OSError / asyncio.TimeoutError when it does not answer."""
    conn = await rpc.connect(host, port, name="status", timeout=timeout)
    try:
        reply, _ = await conn.call(m.MasterStatus, timeout=timeout)
        return json.loads(reply.result.text)
    finally:
        conn.close()


async def cluster_status(name: str, port: int = CLIENT_PORT, dns_server: str | None = None,
                         timeout: float = 2.0) -> list[dict]:
    """Every master of `name`: its own view, or {"address", "reachable": False, "error"}."""
    addrs = await resolve(name, dns_server)

    async def one(addr: str) -> dict:
        try:
            view = await master_status(addr, port, timeout)
            view["reachable"] = True
            return view
        except (OSError, asyncio.TimeoutError, rpc.ConnectionClosed, FsError) as e:
            return {"address": addr, "reachable": False, "state": "UNREACHABLE",
                    "error": str(e) or type(e).__name__}

    return list(await asyncio.gather(*(one(a) for a in addrs)))


async def admin_one(host: str, port: int, command: str, timeout: float = 5.0,
                    **fields) -> dict:
    """Send `command` to the master at host:port itself (no redirect followed)."""
    conn = await rpc.connect(host, port, name="admin", timeout=timeout)
    try:
        reply, _ = await conn.call(m.MasterAdmin, command=command, timeout=timeout, **fields)
        return json.loads(reply.result.text)
    finally:
        conn.close()


async def master_admin(name: str, command: str, target: str = "", port: int = CLIENT_PORT,
                       dns_server: str | None = None, timeout: float = 5.0) -> dict:
    """Send `command` to the leader among the masters of `name`."""
    tried: set[tuple[str, int]] = set()
    queue = [(a, port) for a in await resolve(name, dns_server)]
    last: Exception | None = None
    while queue:
        addr = queue.pop(0)
        if addr in tried:
            continue
        tried.add(addr)
        try:
            return await admin_one(*addr, command, timeout, target=target)
        except FsError as e:
            if e.status != NOT_LEADER:
                raise
            last = e
            host, _, p = e.detail.rpartition(":")
            if host and p.isdigit():
                queue.insert(0, (host, int(p)))
        except (asyncio.TimeoutError, rpc.ConnectionClosed, OSError) as e:
            last = e
    raise FsError(NOT_LEADER, f"no master of {name} leads now ({last})")
