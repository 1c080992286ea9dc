"""The web interface's pure parts, without a cluster: lease.log parsing and who led when,
the charts, the metrics format, the page token and cross-site check, and escaping."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections import Counter
from types import SimpleNamespace

from elkfs.consensus.leaselog import LeaseEvent as CoreEvent
from elkfs.consensus.leaselog import format_line
from elkfs.web import charts, pages
from elkfs.web.app import WebInterface
from elkfs.web.leaselog import EventTimes, LeaseEvent, LeaseLogTail, leadership, parse_line
from elkfs.web.metrics import Exposition


def line(wall: str, mono: float, term: int, event: str, node: str = "m1.1",
         detail: str = "") -> str:
    """A lease.log line exactly as the master's shell writes it."""
    return format_line(f"{wall} mono={mono:.3f}", CoreEvent(node, term, event, detail))


def test_parse_line_takes_the_monotonic_time_of_this_boot():
    boot_now, wall_now = 1000.0, time.mktime((2030, 1, 2, 3, 4, 5, 0, 0, -1))
    times = EventTimes(wall_now, boot_now)
    ev = parse_line(line("2030-01-02T03:04:03", 998.25, 7, "lease-acquired", "ab.2",
                         "until=+1.960s"), times)
    assert (ev.term, ev.event, ev.node, ev.detail) == (7, "lease-acquired", "ab.2",
                                                       "until=+1.960s")
    assert abs(ev.time - (wall_now - 1.75)) < 1e-6
    # a reading from an earlier boot (beyond the current clock): the wall time is used
    old = parse_line(line("2029-12-31T00:00:00", 5000.0, 1, "serving"), times)
    assert old.time == time.mktime((2029, 12, 31, 0, 0, 0, 0, 0, -1))
    assert parse_line("garbage", times) is None


def test_tail_counts_only_new_events_and_survives_truncation(tmp_path):
    path = tmp_path / "lease.log"
    path.write_text(line("2030-01-01T00:00:00", 1.0, 1, "election-start") + "\n"
                    + line("2030-01-01T00:00:01", 2.0, 1, "lease-acquired") + "\n")
    tail = LeaseLogTail(str(path))
    tail.poll()
    assert [e.event for e in tail.events] == ["election-start", "lease-acquired"]
    assert not tail.counts, "the backlog is history, not new events"
    with open(path, "a") as f:
        f.write(line("2030-01-01T00:00:09", 9.0, 1, "lease-lost"))  # no newline yet
    tail.poll()
    assert tail.counts == {}
    with open(path, "a") as f:
        f.write("\n" + line("2030-01-01T00:00:10", 10.0, 2, "election-start") + "\n")
    tail.poll()
    assert tail.counts == Counter({"lease-lost": 1, "election-start": 1})
    path.write_text(line("2030-01-01T00:01:00", 60.0, 3, "serving") + "\n")
    tail.poll()
    assert tail.events[-1].event == "serving" and tail.counts["serving"] == 1


def ev(t: float, term: int, event: str, detail: str = "") -> LeaseEvent:
    return LeaseEvent(t, "", term, event, "x", detail)


def test_leadership_marks_planned_and_unplanned_failovers():
    events = [
        ("a", ev(10, 1, "election-start", "reason=prevote last=(0, 0)")),
        ("a", ev(11, 1, "lease-acquired")),
        ("a", ev(20, 1, "step-down")),
        ("a", ev(20.1, 1, "lease-released", "handover to=b.1")),
        ("b", ev(20.2, 2, "election-start", "reason=handover from a.1 last=(1, 9)")),
        ("b", ev(20.3, 2, "lease-acquired")),
        # b is killed: it writes nothing more; c takes over after the lease
        ("c", ev(40, 3, "election-start", "reason=prevote last=(2, 30)")),
        ("c", ev(41, 3, "lease-acquired")),
    ]
    led = leadership(events)
    assert [(t.master, t.term, t.start, t.end, t.end_event) for t in led.tenures] == [
        ("a", 1, 11, 20.1, "lease-released"), ("b", 2, 20.3, 41, ""), ("c", 3, 41, None, "")]
    assert [(f.old, f.new, f.kind, f.reason) for f in led.failovers] == [
        ("a", "b", "step-down", "hand-over (step-down)"),
        ("b", "c", "no end written (crash?)", "no leader heard for a lease")]


def test_timeline_and_ops_chart_are_svg():
    now = 1000.0
    svg = charts.timeline(["127.0.0.1", "127.0.0.2"],
                          [{"master": "127.0.0.1", "term": 1, "start": 900.0, "end": 950.0,
                            "end_event": "lease-lost"},
                           {"master": "127.0.0.2", "term": 2, "start": 952.0, "end": None,
                            "end_event": ""}],
                          [{"time": 952.0, "from": "127.0.0.1", "to": "127.0.0.2", "term": 2,
                            "kind": "lease lost", "reason": "<none>"}], now)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    rects = [r for r in root.iter() if r.tag in ("rect", ns + "rect")
             and "tenure" in r.get("class", "")]
    assert len(rects) == 2
    assert "&lt;none&gt;" in svg and "<none>" not in svg
    ops = charts.ops_chart([{"time": now - 2, "total": 7, "ops": {}},
                            {"time": now - 1, "total": 3, "ops": {}}], now)
    ET.fromstring(ops)
    assert "polyline" in ops and "style=" not in ops + svg  # the policy forbids inline style


def test_metrics_exposition_format():
    out = Exposition()
    out.add("elkfs_x", "gauge", "An x.", 1.5, peer='a"b\\c\nd')
    out.add("elkfs_x", "gauge", "An x.", True, peer="e")
    text = out.text()
    assert text == ('# HELP elkfs_x An x.\n# TYPE elkfs_x gauge\n'
                    'elkfs_x{peer="a\\"b\\\\c\\nd"} 1.5\nelkfs_x{peer="e"} 1\n')


def fake_master(tmp_path, password=""):
    cfg = SimpleNamespace(DATA_PATH=str(tmp_path), ADMIN_PASSWORD=password)
    return SimpleNamespace(cfg=cfg, clients=SimpleNamespace(op_counts=Counter()), ha=None)


def test_token_and_password(tmp_path):
    web = WebInterface(fake_master(tmp_path, "s3cret"))
    token = web.issue_token()
    assert web.token_ok(token)
    issued, mac = token.split(".")
    assert not web.token_ok(f"{issued}.{'0' * len(mac)}")
    assert not web.token_ok(f"{int(issued) + 1}.{mac}")
    assert not web.token_ok("")
    old = str(int(time.time()) - 2 * 24 * 3600)
    assert not web.token_ok(f"{old}.{web._mac(old)}"), "expired"
    other = WebInterface(fake_master(tmp_path, "s3cret"))
    assert not other.token_ok(token), "each master process has its own secret"
    assert web.password_ok("s3cret") and not web.password_ok("s3cre") \
        and not web.password_ok("")
    assert not WebInterface(fake_master(tmp_path, "")).password_ok("")


def test_cross_site_requests_are_told_apart():
    def req(**headers):
        return SimpleNamespace(headers=headers, scheme="http", host="127.0.0.1:9425")

    assert not WebInterface.cross_site(req())
    assert not WebInterface.cross_site(req(Origin="http://127.0.0.1:9425"))
    assert WebInterface.cross_site(req(Origin="http://evil.example"))
    assert WebInterface.cross_site(req(**{"Sec-Fetch-Site": "cross-site"}))
    assert not WebInterface.cross_site(req(**{"Sec-Fetch-Site": "same-origin"}))


def masters_data(leader_self: bool) -> dict:
    row = {"address": "10.0.0.1", "self": True, "url": "http://10.0.0.1:9425/",
           "reachable": True, "state": "LEADER" if leader_self else "FOLLOWER", "term": 3,
           "metadata_version": 5, "version_vector": [3, 5], "commit": 5, "lag": 0,
           "in_sync": True, "leader": "10.0.0.1", "lease_expires_in": 1.5,
           "lease_renewed_ago_s": 0.2, "lease_acks": 3, "lease_voters": 3,
           "last_election": None, "wall_time": 0.0, "clock_offset_s": 0.0, "rtt_s": 0.0,
           "uptime_s": 1, "error": ""}
    bad = dict(row, address="<img src=x>", self=False, reachable=False,
               state="UNREACHABLE", error="<b>refused</b>")
    return {"ha": True, "self": "10.0.0.1", "leader": "10.0.0.1" if leader_self else "",
            "leader_url": "", "believed_leader": "", "cluster": "c", "rows": [row, bad],
            "links": {"10.0.0.1": {"<img src=x>": False}}, "lease": {"expires_in": 1.5},
            "last_election": None}


def test_step_down_button_disabled_without_a_password():
    html = pages.masters_view(masters_data(True), admin_enabled=False)
    assert 'id="stepdown-open" class="danger" disabled' in html
    assert "ADMIN_PASSWORD" in html
    enabled = pages.masters_view(masters_data(True), admin_enabled=True)
    assert 'id="stepdown-open" class="danger">' in enabled
    follower = pages.masters_view(masters_data(False), admin_enabled=True)
    assert "stepdown-open" not in follower


def test_everything_shown_is_escaped():
    html = pages.masters_view(masters_data(True), admin_enabled=True)
    assert "<img" not in html and "<b>refused" not in html
    assert "&lt;img src=x&gt;" in html
    mounts = pages.mounts_view({"leading": True, "sessions": [{
        "session": "ab" * 16, "info": "<script>alert(1)</script>", "opened": 0.0,
        "open_files": 0, "connected": True, "peer": "1.2.3.4:5", "disconnected_s": None,
        "expires_in_s": None}]})
    assert "<script>" not in mounts and "&lt;script&gt;" in mounts
