"""What the web page shows, gathered as plain data (the HTML pages and the JSON API both
render it): the masters as this master sees them, lease history, chunkservers, totals,
mounts and operation rates.

This master's own state is read from its tables directly (`HANode.view()`,
`ClientPort.cluster_info()`); every other master is asked for its own view
(`MasterStatus`, as `mfscli -S IM` does), all at once and with a short timeout, so a
dead master costs one timeout per refresh and shows as unreachable, nothing more. The
answers are shared for a second between concurrent requests (several open pages must
not multiply the load on the masters).

Everything here runs in the master's event loop: nothing may block, and whatever walks
a big table (files and directories) is cached.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter, deque

import aiohttp

from ..client.masters import master_status
from ..master.nodes import DirNode, FileNode
from ..proto import rpc
from ..proto.errors import FsError
from .leaselog import LeaseEvent, LeaseLogTail, election_reason, leadership

PEER_TIMEOUT_S = 0.8
PEER_CACHE_S = 1.0
OPS_WINDOW_S = 300


class OpsHistory:
    """Metadata operations per second, sampled once a second from the client port's
    counter (`ClientPort.op_counts`), for the last five minutes."""

    def __init__(self, counts: Counter, window_s: int = OPS_WINDOW_S):
        self.counts = counts
        self.samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=window_s)
        self._last: Counter = Counter(counts)

    def sample(self, now: float) -> None:
        current = Counter(self.counts)
        delta = {op: n - self._last.get(op, 0) for op, n in current.items()
                 if n != self._last.get(op, 0)}
        self._last = current
        self.samples.append((now, delta))

    def rates(self, seconds: int) -> dict[str, float]:
        recent = list(self.samples)[-seconds:]
        if not recent:
            return {}
        total: Counter = Counter()
        for _, delta in recent:
            total.update(delta)
        return {op: n / len(recent) for op, n in total.most_common()}

    def as_dict(self) -> dict:
        return {"interval_s": 1.0,
                "samples": [{"time": round(t, 3), "total": sum(d.values()), "ops": d}
                            for t, d in self.samples],
                "rate_10s": self.rates(10), "rate_60s": self.rates(60),
                "totals": dict(self.counts.most_common())}


class Views:
    def __init__(self, master, lease_log: LeaseLogTail, ops: OpsHistory):
        self.master = master
        self.lease_log = lease_log
        self.ops = ops
        self._peers: dict[str, dict] = {}
        self._peers_at = 0.0
        self._peers_fetch: asyncio.Future | None = None
        self._node_counts: tuple[int, float, int, int] = (-1, 0.0, 0, 0)
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    # ------------------------------------------------------------ the masters

    @property
    def ha(self):
        return self.master.ha

    def own_view(self) -> dict:
        return self.master.clients.master_status()

    def own_address(self) -> str:
        if self.ha is not None:
            return self.ha.addr
        for host in (self.master.cfg.HTTP_LISTEN_HOST, self.master.cfg.MATOCL_LISTEN_HOST):
            if host not in ("*", "0.0.0.0", ""):
                return host
        return socket.gethostname()  # listening everywhere: the name others know it by

    def master_addresses(self) -> list[str]:
        if self.ha is None:
            return [self.own_address()]
        from ..master.ha import _ip_key

        return sorted(set(self.ha.directory.addresses) | {self.ha.addr}, key=_ip_key)

    async def peer_views(self) -> dict[str, dict]:
        """address -> {"reachable", "view", "offset_s", "rtt_s"} or {"reachable": False,
        "error"}, for every other master."""
        if time.monotonic() - self._peers_at < PEER_CACHE_S:
            return self._peers
        if self._peers_fetch is None:
            self._peers_fetch = asyncio.ensure_future(self._fetch_peers())
        fut = self._peers_fetch
        try:
            return await asyncio.shield(fut)
        finally:
            if fut.done() and self._peers_fetch is fut:
                self._peers_fetch = None

    async def _fetch_peers(self) -> dict[str, dict]:
        if self.ha is None:
            return {}
        me = self.own_address()
        hosts = [h for h in self.master_addresses() if h != me]

        async def one(host: str) -> tuple[str, dict]:
            t0 = time.time()
            try:
                view = await asyncio.wait_for(
                    master_status(host, self.ha.peers.client_port(host), PEER_TIMEOUT_S),
                    PEER_TIMEOUT_S)
            except (OSError, asyncio.TimeoutError, rpc.ConnectionClosed, FsError,
                    ValueError) as e:
                return host, {"reachable": False,
                              "error": str(e) or type(e).__name__}
            t1 = time.time()
            return host, {"reachable": True, "view": view, "rtt_s": t1 - t0,
                          "offset_s": view.get("wall_time", (t0 + t1) / 2) - (t0 + t1) / 2,
                          "answered_at": time.monotonic()}

        results = dict(await asyncio.gather(*(one(h) for h in hosts)))
        self._peers, self._peers_at = results, time.monotonic()
        return results

    async def masters(self) -> dict:
        """The masters view: one row per master in DNS (the `/api/masters` objects), the
        leader, its lease, and the links between masters as each one reports them."""
        own = self.own_view()
        me = self.own_address()
        peers = await self.peer_views()
        views: dict[str, dict | None] = {me: own}
        extra: dict[str, dict] = {me: {"reachable": True, "offset_s": 0.0, "rtt_s": 0.0}}
        now = time.monotonic()
        for host, p in peers.items():
            views[host] = _aged(p.get("view"), now - p.get("answered_at", now))
            extra[host] = p
        leader = next((h for h, v in views.items() if v and v.get("state") == "LEADER"), "")
        leader_view = views.get(leader) if leader else None
        progress = {}
        if leader_view:
            progress = {e.get("address"): e for e in leader_view.get("masters", [])}
        rows = []
        for host in self.master_addresses():
            rows.append(self._master_row(host, host == me, views.get(host), extra.get(host, {}),
                                         leader_view, progress.get(host)))
        links = {}
        for host, v in views.items():
            if v:
                links[host] = {e["address"]: bool(e.get("reachable"))
                               for e in v.get("masters", []) if not e.get("self")}
        return {
            "ha": self.ha is not None, "self": me, "leader": leader,
            "leader_url": self.master_url(leader, views.get(leader)) if leader else "",
            "believed_leader": own.get("leader", me if self.ha is None else ""),
            "cluster": own.get("cluster", ""),
            "rows": rows, "links": links,
            "lease": (leader_view or {}).get("lease"),
            "last_election": _last_election(leader_view) if leader_view else None,
        }

    def master_url(self, host: str, view: dict | None) -> str:
        port = (view or {}).get("http_port") or self.master.cfg.HTTP_LISTEN_PORT
        return f"http://{host}:{port}/"

    def _master_row(self, host: str, is_self: bool, view: dict | None, extra: dict,
                    leader_view: dict | None, in_leader: dict | None) -> dict:
        row = {"address": host, "self": is_self, "url": self.master_url(host, view),
               "reachable": view is not None, "state": "UNREACHABLE", "term": None,
               "metadata_version": None, "version_vector": None, "commit": None,
               "lag": None, "in_sync": None, "leader": None, "lease_expires_in": None,
               "lease_renewed_ago_s": None, "lease_acks": None, "lease_voters": None,
               "last_election": None, "wall_time": None, "clock_offset_s": None,
               "rtt_s": None, "uptime_s": None, "error": extra.get("error", "")}
        if view is None:
            return row
        mine = next((e for e in view.get("masters", []) if e.get("self")), {})
        row.update({
            "state": view.get("state", "?"), "term": view.get("term"),
            "metadata_version": view.get("metadata_version"),
            "version_vector": view.get("log"), "commit": view.get("commit"),
            "in_sync": mine.get("in_sync", True if self.ha is None else None),
            "leader": view.get("leader") or (host if self.ha is None else ""),
            "last_election": _last_election(view),
            "wall_time": view.get("wall_time"), "uptime_s": view.get("uptime_s"),
            "clock_offset_s": _round(extra.get("offset_s"), 4),
            "rtt_s": _round(extra.get("rtt_s"), 4),
        })
        if self.ha is None:  # one master: its journal is the log, every change committed
            row["version_vector"] = [0, row["metadata_version"]]
            row["commit"] = row["metadata_version"]
        lease = view.get("lease")
        if lease:
            row.update({"lease_expires_in": lease.get("expires_in"),
                        "lease_renewed_ago_s": lease.get("renewed_ago_s"),
                        "lease_acks": lease.get("renewal_acks"),
                        "lease_voters": lease.get("voter_count")})
        if leader_view is not None:
            if in_leader is not None and in_leader is not leader_view and "in_sync" in in_leader:
                row["in_sync"] = in_leader["in_sync"]  # the leader's record decides
            if in_leader is not None and "lag" in in_leader:
                row["lag"] = in_leader["lag"]
            elif view is leader_view:
                row["lag"] = 0
            elif row["metadata_version"] is not None:
                row["lag"] = max(0, leader_view.get("metadata_version", 0)
                                 - row["metadata_version"])
        elif self.ha is None:
            row["lag"] = 0
        return row

    # ------------------------------------------------------------ lease history

    async def leases(self, limit: int = 60, everything: bool = False) -> dict:
        """This master's last lease events (the table), and who led when, from the lease
        events of every master that answers, on this master's clock."""
        self.lease_log.poll()
        own = self.lease_log.recent(limit, notable_only=not everything)
        me = self.own_address()
        peers = await self.peer_views()
        idents = {self.ha.ident: me} if self.ha is not None else {}
        for host, p in peers.items():
            if p.get("view"):
                idents[p["view"].get("ident", "")] = host
        pairs = [(me, e) for e in self.lease_log.recent(1000, notable_only=True)]
        sources = {me: "local"}
        fetched = await asyncio.gather(*(self._peer_lease_log(h, p) for h, p in peers.items()
                                         if p.get("reachable")))
        for host, events in fetched:
            if events is None:
                sources[host] = "unreachable"
                continue
            offset = peers[host].get("offset_s") or 0.0
            sources[host] = "fetched"
            for e in events:
                pairs.append((host, LeaseEvent(e["time"] - offset, e["wall"], e["term"],
                                               e["event"], e["node"], e["detail"])))
        for host, p in peers.items():
            sources.setdefault(host, "unreachable")
        led = leadership(pairs)
        return {"self": me, "events": [e.as_dict() for e in reversed(own)],
                "tenures": [t.as_dict() for t in led.tenures],
                "failovers": [f.as_dict() for f in led.failovers],
                "masters": self.master_addresses(), "sources": sources, "now": time.time(),
                "idents": idents}

    async def _peer_lease_log(self, host: str, peer: dict) -> tuple[str, list | None]:
        url = self.master_url(host, peer.get("view")) + "api/lease-log?limit=1000"
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT_S))
        try:
            async with self._http.get(url) as resp:
                if resp.status != 200:
                    return host, None
                return host, (await resp.json())["events"]
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError):
            return host, None

    def lease_log_events(self, limit: int) -> dict:
        """This master's own events (what the other masters fetch for the timeline)."""
        self.lease_log.poll()
        return {"address": self.own_address(),
                "events": [e.as_dict() for e in self.lease_log.recent(limit)]}

    # ------------------------------------------------------------ chunkservers, info

    async def chunkservers(self) -> dict:
        info = self.master.clients.cluster_info()
        masters = await self.masters()
        lease = masters["lease"] or {}
        acked = lease.get("acked_ago_s") or {}
        voter_of: dict[str, tuple[str, bool]] = {}
        if self.ha is not None:
            for voter, cs_id in self.ha.voter_cs.items():
                conn = self.ha.voters.get(voter)
                connected = conn is not None and conn.is_open
                key = cs_id.hex() if isinstance(cs_id, bytes) else str(cs_id)
                if key not in voter_of or connected:
                    voter_of[key] = (voter, connected)
        rows = []
        for s in sorted(info["chunkservers"], key=lambda s: s["address"]):
            row = dict(s)
            voter, voter_connected = voter_of.get(s["id"], ("", False))
            row["voter"] = voter
            row["voter_connected"] = voter_connected
            if voter and voter in acked and masters["leader"]:
                row["votes_for"] = masters["leader"]
                row["vote_acked_ago_s"] = acked[voter]
            else:
                row["votes_for"] = ""
                row["vote_acked_ago_s"] = None
            rows.append(row)
        return {"self": masters["self"], "leader": masters["leader"], "ha": masters["ha"],
                "chunkservers": rows}

    def info(self) -> dict:
        info = self.master.clients.cluster_info()
        info.pop("chunkservers", None)
        info.pop("masters", None)
        files, dirs = self._count_nodes()
        info["files"], info["dirs"] = files, dirs
        info["free_bytes"] = max(0, info["total_bytes"] - info["used_bytes"])
        info["leading"] = self.master.leading
        info["address"] = self.own_address()
        return info

    def _count_nodes(self) -> tuple[int, int]:
        """Files and directories: a walk over every inode, so at most every 10 s."""
        ns = self.master.ns
        version, at, files, dirs = self._node_counts
        now = time.monotonic()
        if version != ns.version and now - at >= 10.0 or version < 0:
            files = dirs = 0
            for node in ns.nodes.values():
                kind = type(node)
                if kind is FileNode:
                    files += 1
                elif kind is DirNode:
                    dirs += 1
            self._node_counts = (ns.version, now, files, dirs)
        return files, dirs

    # ------------------------------------------------------------ mounts

    def mounts(self) -> dict:
        clients = self.master.clients
        now = time.time()
        sustain = self.master.cfg.SESSION_SUSTAIN_TIME
        rows = []
        for sid, sess in self.master.ns.sessions.items():
            conn = clients.session_links.get(sid)
            connected = conn is not None and conn.is_open
            # when it went away, by the journal (or since this master leads)
            gone_at = None if connected else \
                (sess.gone_ns or clients.leading_since_ns) / 1e9
            rows.append({
                "session": sid.hex(), "info": sess.info,
                "opened": sess.opened_ts / 1e9,
                "open_files": len(sess.open_files),
                "connected": connected,
                "peer": f"{conn.peer[0]}:{conn.peer[1]}" if conn is not None and conn.peer else "",
                "disconnected_s": round(now - gone_at, 1) if gone_at is not None else None,
                "expires_in_s": round(max(0.0, sustain - (now - gone_at)), 1)
                if gone_at is not None else None,
            })
        rows.sort(key=lambda r: (not r["connected"], r["info"]))
        return {"leading": self.master.leading, "address": self.own_address(),
                "sessions": rows}

    # ------------------------------------------------------------ operations

    def operations(self) -> dict:
        out = self.ops.as_dict()
        out["leading"] = self.master.leading
        out["address"] = self.own_address()
        return out


def _aged(view: dict | None, age_s: float) -> dict | None:
    """A master's answer as of now: its lease `age_s` shorter (answers are shared for up
    to a second), its wall clock that much later."""
    if view is None or age_s <= 0:
        return view
    view = dict(view)
    lease = view.get("lease")
    if lease:
        lease = view["lease"] = dict(lease)
        lease["expires_in"] = round(max(0.0, lease.get("expires_in", 0.0) - age_s), 3)
        if lease.get("renewed_ago_s") is not None:
            lease["renewed_ago_s"] = round(lease["renewed_ago_s"] + age_s, 3)
        if lease.get("acked_ago_s"):
            lease["acked_ago_s"] = {v: round(a + age_s, 3) for v, a in lease["acked_ago_s"].items()}
    if view.get("wall_time") is not None:
        view["wall_time"] += age_s
    return view


def _last_election(view: dict | None) -> dict | None:
    """The newest election this master took part in, from its own event list."""
    if not view:
        return None
    events = view.get("elections") or []
    for e in reversed(events):
        text = e.get("event", "")
        if text.startswith("election-start"):
            return {"time": e.get("time"), "reason": election_reason(text),
                    "event": text}
    return None


def _round(value, digits: int):
    return None if value is None else round(value, digits)
