"""Masters and voters coming and going: a wiped follower, DNS records added and removed,
a chunkserver restarting in the middle of an election."""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import time

from elkfs.testing.cluster import MASTER_NAME
from elkfs.testing.faults import converged, wait_until

NET = "127.0.82"
BIN = os.path.dirname(sys.executable)
DNS_REFRESH_S = 5.0  # the shipped DNS_REFRESH_TIME


def write_files(mnt: str, prefix: str, n: int) -> dict[str, bytes]:
    files = {}
    for i in range(n):
        name = os.path.join(mnt, f"{prefix}-{i}")
        data = f"{prefix} {i}\n".encode() * (i + 1)
        with open(name, "wb") as f:
            f.write(data)
        files[name] = data
    return files


def check_files(files: dict[str, bytes]) -> None:
    for name, data in files.items():
        with open(name, "rb") as f:
            assert f.read() == data, name


def view_of(cluster, d) -> dict:
    return cluster.status(d) or {}


def test_wiped_follower_catches_up_and_can_lead(ha_cluster):
    """A follower restarted with an empty data directory joins as a new member: it gets
    the metadata from the leader, is taken into the in-sync set, and can then lead."""
    c, mnt = ha_cluster.cluster, ha_cluster.mnt
    files = write_files(mnt, "before", 30)
    leader = c.leader()
    wiped = next(d for d in c.masters if d is not leader)
    old_ident = view_of(c, wiped)["ident"]
    c.stop_daemon(wiped)
    shutil.rmtree(wiped.data_dir)
    c.write_configs()
    files.update(write_files(mnt, "while-away", 30))
    c.start_daemon(wiped)
    wait_until(lambda: converged(c), 60, "the wiped master to catch up and be in sync")
    assert view_of(c, wiped)["ident"] != old_ident  # a new identity, not the old member
    out = subprocess.run([os.path.join(BIN, "mfscli"), "-C", f"SD/{wiped.host}", mnt],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert c.wait_leader(10) is wiped
    check_files(files)
    files.update(write_files(mnt, "after", 10))
    check_files(files)


def test_crash_across_machine_restart_rejoins_as_new_incarnation(ha_cluster):
    """A follower killed (no clean-stop mark) that comes back after a machine restart (its
    ha.state names another boot) may have lost journal writes it acknowledged to the OS
    under the default save mode: it rejoins as a new incarnation, catches up, and the
    cluster loses nothing. A kill without a machine restart keeps the incarnation."""
    from elkfs import statefile

    c, mnt = ha_cluster.cluster, ha_cluster.mnt
    files = write_files(mnt, "before", 20)
    follower = next(d for d in c.masters if d is not c.leader())
    uuid, incarnation = view_of(c, follower)["ident"].split(".")
    state_path = os.path.join(follower.data_dir, "ha.state")

    c.kill(follower)  # same boot: the page cache kept everything
    c.start_daemon(follower)
    wait_until(lambda: converged(c), 60, "the restarted master to be in sync")
    assert view_of(c, follower)["ident"] == f"{uuid}.{incarnation}"

    c.kill(follower)
    state = statefile.load(state_path)
    assert state["running"]  # killed: no clean-stop mark
    state["boot_id"] = "a-boot-before-the-machine-restarted"
    statefile.save(state_path, state)
    files.update(write_files(mnt, "while-away", 20))
    c.start_daemon(follower)
    wait_until(lambda: converged(c), 60, "the new incarnation to catch up and be in sync")
    assert view_of(c, follower)["ident"] == f"{uuid}.{int(incarnation) + 1}"
    log = open(os.path.join(follower.data_dir, "stderr.log")).read()
    assert "rejoins as incarnation" in log
    check_files(files)


def test_dns_records_add_and_remove_masters(ha_cluster):
    """An A record added while the cluster runs adds a master (it catches up and joins the
    in-sync set); the record of a dead master removed drops it from every view."""
    c, mnt = ha_cluster.cluster, ha_cluster.mnt
    files = write_files(mnt, "f", 20)
    fourth = c._master(len(c.masters))
    c.masters.append(fourth)
    c.write_configs()
    c.dns.add_record(MASTER_NAME, fourth.host)
    c.start_daemon(fourth)

    def fourth_in_sync() -> bool:
        view = view_of(c, c.leader())
        entry = [m for m in view.get("masters", []) if m["address"] == fourth.host]
        return bool(entry) and entry[0].get("in_sync") and converged(c)

    wait_until(fourth_in_sync, 3 * DNS_REFRESH_S + 30, "the fourth master to join in sync")
    leader = c.leader()
    dead = next(d for d in c.masters if d is not leader and d is not fourth)
    c.kill(dead)
    c.dns.remove_record(MASTER_NAME, dead.host)
    c.masters.remove(dead)

    def dead_gone() -> bool:
        views = [view_of(c, d) for d in c.masters]
        return all(v and dead.host not in [m["address"] for m in v["masters"]] for v in views)

    wait_until(dead_gone, 3 * DNS_REFRESH_S + 10, "every master to forget the removed one")
    wait_until(lambda: converged(c), 30, "the remaining masters in sync")
    check_files(files)


def test_chunkserver_restart_during_election_keeps_its_vote(ha_cluster):
    """A voter restarted while the masters elect keeps the vote it gave (its state file
    is fsynced before it answers): no voter grants two masters in one term."""
    c, mnt = ha_cluster.cluster, ha_cluster.mnt
    files = write_files(mnt, "f", 10)
    for _ in range(2):
        leader = c.leader()
        c.kill(leader)
        time.sleep(1.8)  # the old lease runs out about now: the election is starting
        cs = c.chunkservers[0]
        c.kill(cs)
        c.start_daemon(cs)
        c.wait_leader(30, other_than=leader)
        c.start_daemon(leader)
        wait_until(lambda: converged(c), 60, "all masters in sync")
    check_files(files)
    granted = collections.defaultdict(set)
    pattern = re.compile(r" term=(\d+) vote-granted node=(\S+) candidate=(\S+)")
    for cs in c.chunkservers:
        with open(os.path.join(cs.data_dir, "lease.log")) as f:
            for line in f:
                m = pattern.search(line)
                if m:
                    granted[(m[2], int(m[1]))].add(m[3])
    assert granted, "no votes were logged"
    double = {k: v for k, v in granted.items() if len(v) > 1}
    assert not double, f"voters granted two masters in one term: {double}"


def test_a_session_gone_before_a_failover_keeps_its_time(ha_cluster):
    """A client that went away is remembered with the leader's time in the journal, so
    the next leader counts its sustain time from then, not from the failover."""
    import asyncio
    import json
    import urllib.request

    from elkfs.client.client import Client

    c = ha_cluster.cluster

    async def open_and_vanish() -> str:
        client = await Client.connect(**c.client_args(), info="vanishing client")
        sid = client.link.session.hex()
        client.link.conn.close()  # gone without ending its session
        await asyncio.sleep(0.2)
        return sid

    sid = asyncio.run(open_and_vanish())
    time.sleep(3.0)
    old = c.leader()
    c.kill(old)
    new = c.wait_leader(30, other_than=old)
    with urllib.request.urlopen(c.web_url(new, "/api/mounts"), timeout=10) as r:
        rows = json.load(r)["sessions"]
    row = next(x for x in rows if x["session"] == sid)
    assert not row["connected"] and row["disconnected_s"] >= 3.0, row
