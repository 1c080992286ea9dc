"""The JSON API and /metrics of every master of a running three-master cluster."""

from __future__ import annotations

import json
import re

from .conftest import PASSWORD, get_json, http, wait_until


def urls(mc):
    c = mc.cluster
    return {d.host: c.web_url(d) for d in c.masters}


def test_api_masters_on_every_master(ha_web):
    """Leader or follower, each master lists all three with the fields the issue names;
    they agree on one leader, whose lease counts down from at most the lease duration."""
    c = ha_web.cluster
    leader = c.wait_leader(30)
    for host, url in urls(ha_web).items():
        rows = wait_until(lambda: _all_reachable(get_json(url + "api/masters")), 20,
                          f"{host} sees every master")
        assert [r["address"] for r in rows] == [d.host for d in c.masters]
        for r in rows:
            for key in ("address", "state", "term", "metadata_version", "in_sync",
                        "lease_expires_in", "reachable"):
                assert key in r, (host, key, r)
            assert r["self"] == (r["address"] == host)
        leaders = [r for r in rows if r["state"] == "LEADER"]
        assert [r["address"] for r in leaders] == [leader.host]
        assert 0 < leaders[0]["lease_expires_in"] <= 2.0
        assert leaders[0]["lease_voters"] == 3 and 2 <= leaders[0]["lease_acks"] <= 3
        assert leaders[0]["lease_renewed_ago_s"] < 2.0
        for r in rows:
            if r["state"] != "LEADER":
                assert r["lease_expires_in"] is None
                assert r["state"].startswith("FOLLOWER")


def _all_reachable(rows):
    return rows if all(r["reachable"] for r in rows) and \
        sum(r["state"] == "LEADER" for r in rows) == 1 else None


def test_api_views(ha_web):
    """Chunkservers (with the leader they vote for), totals, mounts, operations, lease
    history: each view as JSON, from the leader."""
    c = ha_web.cluster
    leader = c.wait_leader(30)
    url = c.web_url(leader)
    cs = wait_until(lambda: _voting(get_json(url + "api/chunkservers")), 20,
                    "every chunkserver acknowledging the lease")
    assert [s["address"].split(":")[0] for s in cs["chunkservers"]] == \
        [d.host for d in c.chunkservers]
    for s in cs["chunkservers"]:
        assert s["connected"] and s["version"] and s["total_bytes"] > 0
        assert s["votes_for"] == leader.host and s["vote_acked_ago_s"] < 2.0
        assert s["errors"] == 0
        (disk,) = s["disks"]
        assert disk["path"].endswith("hdd1") and disk["total_bytes"] > 0
        assert not disk["failed"] and not disk["marked_for_removal"]
    info = get_json(url + "api/info")
    assert info["files"] >= 4 and info["dirs"] >= 2 and info["chunks"] >= 4
    assert info["leading"] is True and info["missing_chunks"] == 0
    mounts = get_json(url + "api/mounts")
    assert any(s["connected"] and "mfsmount" in s["info"] for s in mounts["sessions"]), mounts
    leases = get_json(url + "api/leases")
    assert leases["tenures"] and leases["tenures"][-1]["master"] == leader.host
    assert leases["tenures"][-1]["end"] is None
    assert any(ev["event"] == "lease-acquired" for ev in
               get_json(url + "api/lease-log")["events"])
    ops = get_json(url + "api/operations")
    assert ops["totals"], "the mount's operations are counted"


def _voting(cs):
    return cs if all(s["votes_for"] for s in cs["chunkservers"]) else None


METRIC_LINE = re.compile(r'^[a-z_][a-z0-9_]*(\{([a-z_]+="([^"\\]|\\.)*",?)*\})? -?[0-9.e+-]+$')


def parse_metrics(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert line.startswith(("# HELP ", "# TYPE ")) or not line, line
            continue
        assert METRIC_LINE.match(line), f"not Prometheus text format: {line!r}"
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    return values


def test_metrics(ha_web):
    """/metrics of the leader and a follower: Prometheus text with the lease state, term,
    elections, metadata version, operations by type, chunk health (leader only) and
    chunkservers."""
    c = ha_web.cluster
    leader = c.wait_leader(30)
    follower = next(d for d in c.masters if d is not leader)
    status, headers, body = http(c.web_url(leader, "/metrics"))
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    m = parse_metrics(body.decode())
    assert m["elkfs_master_leader"] == 1
    assert m['elkfs_master_state{state="LEADER"}'] == 1
    assert m["elkfs_master_term"] >= 1
    assert 0 < m["elkfs_master_lease_remaining_seconds"] <= 2
    assert m["elkfs_master_metadata_version"] > 0
    assert "elkfs_master_elections_total" in m
    assert any(k.startswith("elkfs_master_ops_total{op=") for k in m)
    assert m['elkfs_chunks_health{health="missing"}'] == 0
    assert m['elkfs_chunkservers{state="connected"}'] == 3
    assert sum(v for k, v in m.items() if k.startswith("elkfs_master_peer_connected")) == 2
    fm = parse_metrics(http(c.web_url(follower, "/metrics"))[2].decode())
    assert fm["elkfs_master_leader"] == 0
    assert fm["elkfs_master_lease_remaining_seconds"] == 0
    assert not any(k.startswith("elkfs_chunks_health") for k in fm), \
        "a follower exports no chunk health of its own"


def test_security_headers_and_assets(ha_web):
    """Pages come with a policy that allows nothing from elsewhere and no framing; the
    assets they need are served by the master itself."""
    c = ha_web.cluster
    url = c.web_url(c.masters[0])
    status, headers, body = http(url + "masters")
    assert status == 200
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Frame-Options"] == "DENY"
    html = body.decode()
    for ref in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert not ref.startswith(("http:", "https:", "//")) or ref.startswith(
            tuple(f"http://{d.host}:" for d in c.masters)), f"external reference {ref}"
        if ref.startswith("/static/"):
            assert http(url.rstrip("/") + ref)[0] == 200


def test_step_down_refused_without_token_or_password(ha_web):
    """A POST without the page's token, from another origin, or with the wrong password
    changes nothing."""
    c = ha_web.cluster
    leader = c.wait_leader(30)
    url = c.web_url(leader, "/api/step-down")
    page = http(c.web_url(leader, "/masters"))[2].decode()
    token = re.search(r'name="elkfs-token" content="([^"]+)"', page).group(1)
    good = json.dumps({"password": PASSWORD}).encode()
    json_type = {"Content-Type": "application/json"}
    status, _, body = http(url, "POST", good, json_type)
    assert status == 403 and b"token" in body
    status, _, body = http(url, "POST", good, {**json_type, "X-ElkFS-Token": "1.deadbeef"})
    assert status == 403 and b"token" in body
    status, _, body = http(url, "POST", good, {**json_type, "X-ElkFS-Token": token,
                                               "Origin": "http://evil.example"})
    assert status == 403 and b"cross-site" in body
    status, _, _ = http(url, "POST", b"password=" + PASSWORD.encode(),
                        {"Content-Type": "application/x-www-form-urlencoded",
                         "X-ElkFS-Token": token})
    assert status == 415
    status, _, body = http(url, "POST", json.dumps({"password": "wrong"}).encode(),
                           {**json_type, "X-ElkFS-Token": token})
    assert status == 403 and json.loads(body)["error"] == "wrong password"
    assert c.leader() is leader
