"""The web interface in a real headless Chromium, on a running three-master cluster.

Read-only views first, then what changes the cluster: a refused step-down, the Step Down
hand-over, and a killed master (these run last, in this order). Each view is saved as a
screenshot for a reviewer (test-output/screenshots/).
"""

from __future__ import annotations

import os
import re

from playwright.sync_api import expect

from .conftest import PASSWORD, get_json, wait_until

TIMEOUT_MS = 20_000


def masters_rows(pg):
    return pg.locator("#masters-table tbody tr")


def row_of(pg, host: str):
    return pg.locator(f'#masters-table tbody tr[data-address="{host}"]')


def test_follower_page_shows_the_cluster_and_where_the_leader_is(ha_web, page, shoot):
    c = ha_web.cluster
    leader = c.wait_leader(30)
    follower = next(d for d in c.masters if d is not leader)
    page.goto(c.web_url(follower, "/masters"))
    expect(masters_rows(page)).to_have_count(3)
    expect(row_of(page, leader.host).locator(".state")).to_have_text("LEADER")
    expect(row_of(page, follower.host).locator(".state")).to_have_text(re.compile("FOLLOWER"))
    expect(row_of(page, follower.host)).to_contain_text("this page")
    link = page.locator(".summary a.leader-link")
    expect(link).to_have_text(leader.host)
    assert link.get_attribute("href") == c.web_url(leader)
    expect(page.locator("#stepdown-open")).to_have_count(0)
    expect(page.locator("table.links")).to_contain_text("connected")
    shoot(page, "01-masters-follower")


def test_leader_page_masters_view(ha_web, page, shoot):
    c = ha_web.cluster
    leader = c.wait_leader(30)
    page.goto(c.web_url(leader, "/"))
    assert page.url.endswith("/masters")
    expect(masters_rows(page)).to_have_count(3)
    for d in c.masters:
        row = row_of(page, d.host)
        expect(row).to_be_visible()
        expect(row.locator("td").nth(5)).to_have_text("yes")  # in sync
    expect(page.locator(".summary")).to_contain_text("This master is the LEADER")
    expect(page.locator("#stepdown-open")).to_be_enabled()
    # the lease counts down on the page between refreshes and never runs out
    countdown = row_of(page, leader.host).locator(".countdown")
    first = float(countdown.inner_text().split()[0])
    page.wait_for_timeout(300)
    later = float(countdown.inner_text().split()[0])
    assert later != first and 0 < later <= 2.0
    shoot(page, "02-masters-leader")


def test_page_refreshes_in_place(ha_web, page):
    """The live part is swapped without a reload: scroll position and the page itself stay."""
    c = ha_web.cluster
    leader = c.wait_leader(30)
    page.set_viewport_size({"width": 900, "height": 300})
    page.goto(c.web_url(leader, "/masters"))
    page.evaluate("window.__marker = 42; window.scrollTo(0, 120)")
    before = page.locator("#refreshed").inner_text()
    expect(page.locator("#refreshed")).not_to_have_text(before, timeout=TIMEOUT_MS)
    assert page.evaluate("window.__marker") == 42, "the page was reloaded"
    assert page.evaluate("window.scrollY") == 120


def test_other_views(ha_web, page, shoot):
    c = ha_web.cluster
    leader = c.wait_leader(30)
    url = c.web_url(leader)
    for i in range(50):  # some metadata operations for the chart
        os.listdir(os.path.join(ha_web.mnt, "data"))
        os.stat(os.path.join(ha_web.mnt, "data", f"f{i % 4}"))
    page.goto(url + "leases")
    expect(page.locator("svg.timeline rect.tenure")).not_to_have_count(0)
    expect(page.locator("#lease-events")).to_contain_text("lease-acquired")
    shoot(page, "03-lease-history")
    page.goto(url + "chunkservers")
    rows = page.locator("#chunkservers-table tbody tr")
    expect(rows).to_have_count(3)
    for d in c.chunkservers:
        expect(page.locator(f'#chunkservers-table tr[data-address^="{d.host}:"]')) \
            .to_contain_text(leader.host)
    expect(page.locator("#disks-table tbody tr")).to_have_count(3)
    expect(page.locator("#disks-table")).to_contain_text("hdd1")
    shoot(page, "04-chunkservers")
    page.goto(url + "info")
    expect(page.locator("#totals")).to_contain_text("Files")
    expect(page.locator("#health-missing b")).to_have_text("0")
    expect(page.locator("#goal-matrix")).to_be_visible()
    shoot(page, "05-info")
    page.goto(url + "mounts")
    expect(page.locator("#mounts-table")).to_contain_text("mfsmount")
    shoot(page, "06-mounts")
    wait_until(lambda: any(s["total"] for s in get_json(url + "api/operations")["samples"]),
               10, "operations sampled")
    page.goto(url + "operations")
    expect(page.locator("svg.ops polyline")).to_have_count(1)
    expect(page.locator("#ops-table")).to_contain_text("Lookup")
    shoot(page, "07-operations")


def test_wrong_password_is_refused(ha_web, page, shoot):
    c = ha_web.cluster
    leader = c.wait_leader(30)
    page.goto(c.web_url(leader, "/masters"))
    page.click("#stepdown-open")
    expect(page.locator("#stepdown-dialog")).to_be_visible()
    page.fill("#stepdown-password", "not the password")
    page.click("#stepdown-confirm")
    expect(page.locator("#stepdown-error")).to_contain_text("wrong password")
    shoot(page, "08-step-down-wrong-password")
    page.click("#stepdown-cancel")
    expect(page.locator("#stepdown-dialog")).to_be_hidden()
    assert c.leader() is leader


def test_post_without_the_page_token_is_refused(ha_web, page, browser):
    """The page's own script without its token, and another site's page posting a form
    (with the right password) to the leader: both refused, nothing changes."""
    c = ha_web.cluster
    leader = c.wait_leader(30)
    page.goto(c.web_url(leader, "/masters"))
    status = page.evaluate("""async (password) => (await fetch("/api/step-down", {
        method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({password})})).status""", PASSWORD)
    assert status == 403
    evil = browser.new_context()
    try:
        attacker = evil.new_page()
        target = c.web_url(leader, "/api/step-down")
        attacker.route("http://evil.test/", lambda route: route.fulfill(
            content_type="text/html",
            body=f'<form method="post" action="{target}"><input name="password" '
                 f'value="{PASSWORD}"></form><script>document.forms[0].submit()</script>'))
        with attacker.expect_navigation(url=target):
            attacker.goto("http://evil.test/")
        assert "cross-site request refused" in attacker.content()
    finally:
        evil.close()
    assert c.leader() is leader


def test_step_down_hands_over_on_the_page(ha_web, page, shoot):
    """Step Down on the leader's page: confirm with the password, watch the hand-over, see
    another master lead (in the dialog, then in the masters table)."""
    c = ha_web.cluster
    old = c.wait_leader(30)
    wait_until(lambda: all(r["in_sync"] for r in
                           get_json(c.web_url(old, "/api/masters"))), 20, "all in sync")
    page.goto(c.web_url(old, "/masters"))
    page.click("#stepdown-open")
    dialog = page.locator("#stepdown-dialog")
    expect(dialog).to_contain_text("Step down the leader?")
    expect(page.locator("#stepdown-target option")).to_have_count(3)  # default + 2 in sync
    page.fill("#stepdown-password", PASSWORD)
    shoot(page, "09-step-down-confirm")
    page.click("#stepdown-confirm")
    done = page.locator("#stepdown-done")
    expect(done).to_contain_text("New leader", timeout=TIMEOUT_MS)
    new_host = re.search(r"New leader (\S+)", done.inner_text()).group(1)
    assert new_host != old.host
    expect(page.locator("#stepdown-steps")).to_contain_text("released its lease")
    link = page.locator("#new-leader-link")
    assert link.get_attribute("href") == c.web_url(next(d for d in c.masters
                                                        if d.host == new_host), "/masters")
    shoot(page, "10-step-down-progress")
    page.click("#stepdown-close")
    expect(row_of(page, new_host).locator(".state")).to_have_text("LEADER", timeout=TIMEOUT_MS)
    expect(row_of(page, old.host).locator(".state")).to_have_text(re.compile("FOLLOWER"))
    expect(page.locator(".summary a.leader-link")).to_have_text(new_host)
    shoot(page, "11-masters-after-step-down")
    assert c.wait_leader(10).host == new_host
    with open(os.path.join(old.data_dir, "lease.log")) as f:
        assert " step-down " in f.read()
    page.goto(c.web_url(old, "/leases"))
    expect(page.locator("#failovers")).to_contain_text("step-down")
    expect(page.locator("svg.timeline line.failover.planned")).not_to_have_count(0)
    shoot(page, "12-lease-history-after-step-down")


def test_killed_master_shows_unreachable(ha_web, page, shoot):
    """kill -9 a follower: the leader's page marks it unreachable and keeps working."""
    c = ha_web.cluster
    leader = c.wait_leader(30)
    victim = next(d for d in c.masters if d is not leader)
    own = page.context.new_page()  # the victim's own page, open when it dies
    own.goto(c.web_url(victim, "/masters"))
    page.goto(c.web_url(leader, "/masters"))
    expect(row_of(page, victim.host).locator(".state")).to_have_text(re.compile("FOLLOWER"))
    c.kill(victim)
    expect(own.locator("#offline")).to_contain_text("has not answered", timeout=TIMEOUT_MS)
    expect(own.locator("#masters-table")).to_be_visible()  # its last answer stays
    shoot(own, "14-page-of-the-killed-master")
    expect(row_of(page, victim.host).locator(".state")).to_have_text("UNREACHABLE",
                                                                      timeout=TIMEOUT_MS)
    expect(row_of(page, victim.host)).to_have_class(re.compile("unreachable"))
    expect(row_of(page, leader.host).locator(".state")).to_have_text("LEADER")
    expect(page.locator("table.links")).to_contain_text("?")
    shoot(page, "13-masters-one-killed")
    rows = get_json(c.web_url(leader, "/api/masters"))
    dead = next(r for r in rows if r["address"] == victim.host)
    assert dead["reachable"] is False and dead["state"] == "UNREACHABLE"
    page.goto(c.web_url(leader, "/leases"))  # still renders with a master missing
    expect(page.locator("svg.timeline")).to_be_visible()
