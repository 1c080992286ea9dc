"""`/metrics` in the Prometheus text format (version 0.0.4), written out by hand.

Every master exports its own state only (a scraper asks each master): lease state, term,
elections, metadata version, peers, operations by type, chunkservers. Chunk health is
counted by the leader's replication passes, so only the leader exports it; a follower's
numbers would be old or zero, and an absent series is honest where a zero would not be.
"""

from __future__ import annotations

import time

from .. import __version__

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

STATES = ("LEADER", "LEADER (starting)", "LEADER (lease lost)", "CANDIDATE", "FOLLOWER",
          "FOLLOWER (catching up)")


def _label_value(v) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Exposition:
    def __init__(self):
        self.lines: list[str] = []
        self._declared: set[str] = set()

    def add(self, name: str, kind: str, help_text: str, value, /, **labels) -> None:
        if name not in self._declared:
            self._declared.add(name)
            self.lines.append(f"# HELP {name} {help_text}")
            self.lines.append(f"# TYPE {name} {kind}")
        if labels:
            inner = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
            name = f"{name}{{{inner}}}"
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, float):
            text = repr(value) if value == value else "NaN"
        else:
            text = str(value)
        self.lines.append(f"{name} {text}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(master, lease_counts: dict[str, int], address: str, ports=()) -> str:
    """`ports`: the `rpc.Listener` of each port (client, chunkserver, web)."""
    out = Exposition()
    ha = master.ha
    status = master.clients.master_status()
    state = status.get("state", "LEADER")
    out.add("elkfs_master_info", "gauge", "This master: address, ElkFS version, HA on or off.",
            1, address=address, version=__version__, ha="1" if ha is not None else "0")
    out.add("elkfs_master_uptime_seconds", "gauge", "Seconds since this master started.",
            round(time.time() - master.started_at, 3))
    out.add("elkfs_master_leader", "gauge", "1 while this master serves as the leader.",
            master.leading)
    for s in STATES:
        out.add("elkfs_master_state", "gauge", "1 for this master's current state.",
                s == state, state=s)
    out.add("elkfs_master_metadata_version", "gauge", "Metadata version applied here.",
            master.ns.version)
    if ha is not None:
        core = ha.core
        out.add("elkfs_master_term", "gauge", "The highest term this master knows.", core.term)
        out.add("elkfs_master_accepted_term", "gauge", "The term this master accepted "
                "(voted in or followed).", core.accepted_term)
        last_term, last_version = status.get("log", [0, 0])
        out.add("elkfs_master_log_term", "gauge", "Term of the last journal entry (the "
                "version vector is (log term, log version)).", last_term)
        out.add("elkfs_master_log_version", "gauge", "Version of the last journal entry.",
                last_version)
        out.add("elkfs_master_commit_version", "gauge", "Commit point known here.",
                status.get("commit", 0))
        me = next((x for x in status.get("masters", []) if x.get("self")), {})
        out.add("elkfs_master_in_sync", "gauge", "1 while this master is a member of the "
                "in-sync record it knows.", bool(me.get("in_sync")))
        lease = status.get("lease") or {}
        out.add("elkfs_master_lease_remaining_seconds", "gauge", "Seconds left of this "
                "master's lease (0 unless it leads).", float(lease.get("expires_in", 0.0)))
        out.add("elkfs_master_lease_acks", "gauge", "Voters that acknowledged the newest "
                "acknowledged renewal round (leader only).", lease.get("renewal_acks", 0))
        out.add("elkfs_master_lease_voters", "gauge", "Voters of the in-sync record (leader "
                "only).", lease.get("voter_count", 0))
        out.add("elkfs_master_elections_total", "counter", "Elections this master started "
                "since its web interface started.", lease_counts.get("election-start", 0))
        for event, n in sorted(lease_counts.items()):
            out.add("elkfs_master_lease_events_total", "counter", "lease.log events written "
                    "since the web interface started, by event.", n, event=event)
        for peer in status.get("masters", []):
            if not peer.get("self"):
                out.add("elkfs_master_peer_connected", "gauge", "1 while the links to that "
                        "master are up (both directions).", bool(peer.get("reachable")),
                        peer=peer.get("address", ""))
    for name, kind, help_text, value in (
            ("elkfs_master_connections", "gauge", "Open connections, by port.",
             lambda p: len(p.conns)),
            ("elkfs_master_connections_refused_total", "counter", "Connections closed at "
             "once, by port: their address had the most allowed open.", lambda p: p.refused),
            ("elkfs_master_connections_timed_out_total", "counter", "Connections closed, "
             "by port: idle too long, or a request not whole in time.",
             lambda p: p.timed_out)):
        for port in ports:
            out.add(name, kind, help_text, value(port), port=port.name)
    for op, n in sorted(master.clients.op_counts.items()):
        out.add("elkfs_master_ops_total", "counter", "Metadata operations handled, by type.",
                n, op=op)
    info = master.clients.cluster_info()
    out.add("elkfs_space_total_bytes", "gauge", "Space of the connected chunkservers.",
            info["total_bytes"])
    out.add("elkfs_space_used_bytes", "gauge", "Used space of the connected chunkservers.",
            info["used_bytes"])
    out.add("elkfs_inodes", "gauge", "Inodes (files, directories, ...) in the metadata.",
            info["inodes"])
    out.add("elkfs_sessions", "gauge", "Client sessions in the metadata.", info["sessions"])
    out.add("elkfs_chunks", "gauge", "Chunks in the metadata.", info["chunks"])
    out.add("elkfs_trash_files", "gauge", "Files in the trash.", info["trash_files"])
    servers = info["chunkservers"]
    connected = sum(1 for s in servers if s["connected"])
    out.add("elkfs_chunkservers", "gauge", "Chunkservers known to this master, by state.",
            connected, state="connected")
    out.add("elkfs_chunkservers", "gauge", "Chunkservers known to this master, by state.",
            len(servers) - connected, state="disconnected")
    for s in sorted(servers, key=lambda s: s["address"]):
        labels = {"address": s["address"], "id": s["id"]}
        out.add("elkfs_chunkserver_connected", "gauge", "1 while the chunkserver is "
                "connected to this master.", bool(s["connected"]), **labels)
        out.add("elkfs_chunkserver_chunks", "gauge", "Chunks on the chunkserver.",
                s["chunks"], **labels)
        out.add("elkfs_chunkserver_used_bytes", "gauge", "Used space on the chunkserver.",
                s["used_bytes"], **labels)
        out.add("elkfs_chunkserver_total_bytes", "gauge", "Space of the chunkserver.",
                s["total_bytes"], **labels)
        out.add("elkfs_chunkserver_errors_total", "counter", "Damaged or lost copies the "
                "chunkserver reported since this master started.", s.get("errors", 0), **labels)
    if master.leading:
        health = {"missing": info["missing_chunks"], "endangered": info["endangered_chunks"],
                  "undergoal": info["undergoal_chunks"], "overgoal": info["overgoal_chunks"]}
        for kind, n in health.items():
            out.add("elkfs_chunks_health", "gauge", "Chunks by health, from the leader's last "
                    "replication pass (leader only).", n, health=kind)
        out.add("elkfs_chunk_copies_bad", "gauge", "Copies to delete, by kind (leader only).",
                info["stale_copies"], kind="stale")
        out.add("elkfs_chunk_copies_bad", "gauge", "Copies to delete, by kind (leader only).",
                info["damaged_copies"], kind="damaged")
        for copies, n in info["chunks_by_copies"].items():
            out.add("elkfs_chunks_by_copies", "gauge", "Chunks by number of valid copies "
                    "(leader only).", n, copies=copies)
        out.add("elkfs_replications_total", "counter", "Chunk replications finished by this "
                "master.", info["replications_done"], outcome="done")
        out.add("elkfs_replications_total", "counter", "Chunk replications finished by this "
                "master.", info["replications_failed"], outcome="failed")
    return out.text()
