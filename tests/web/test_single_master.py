"""The web interface of a single master (HA_ENABLED = 0, no admin password), on its own
loopback net: the same views, one master that always leads, no Step Down."""

from __future__ import annotations

import json
import re
import shutil
import tempfile

import pytest
from playwright.sync_api import expect

from elkfs.testing.cluster import Cluster

from .conftest import get_json, http

NET = "127.0.85"


@pytest.fixture(scope="module")
def single():
    base = tempfile.mkdtemp(prefix="elkfs-web-single-")
    c = Cluster(base, net=NET, masters=1, chunkservers=1)
    c.start()
    try:
        yield c
    finally:
        c.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_single_master_api(single):
    url = single.web_url(single.masters[0])
    rows = get_json(url + "api/masters")
    assert len(rows) == 1
    (row,) = rows
    assert row["state"] == "LEADER" and row["reachable"] and row["in_sync"] is True
    assert row["lease_expires_in"] is None and row["self"]
    assert row["address"] == single.masters[0].host
    cs = get_json(url + "api/chunkservers")
    assert [s["votes_for"] for s in cs["chunkservers"]] == [""]
    metrics = http(url + "metrics")[2].decode()
    assert re.search(r"^elkfs_master_leader 1$", metrics, re.M)
    assert 'ha="0"' in metrics and "elkfs_master_term" not in metrics


def test_single_master_page(single, page, shoot):
    url = single.web_url(single.masters[0])
    page.goto(url + "masters")
    expect(page.locator("#masters-table tbody tr")).to_have_count(1)
    expect(page.locator("#masters-table .state")).to_have_text("LEADER")
    expect(page.locator(".summary")).to_contain_text("HA_ENABLED = 0")
    expect(page.locator("#stepdown-open")).to_have_count(0)
    shoot(page, "20-single-master")
    for view in ("leases", "chunkservers", "info", "mounts", "operations"):
        page.goto(url + view)
        expect(page.locator("main#view")).to_be_visible()


def test_single_master_refuses_step_down(single):
    """No ADMIN_PASSWORD: the endpoint says how to enable it, whatever the password."""
    url = single.web_url(single.masters[0])
    html = http(url + "masters")[2].decode()
    token = re.search(r'name="elkfs-token" content="([^"]+)"', html).group(1)
    status, _, body = http(url + "api/step-down", "POST", json.dumps({"password": ""}).encode(),
                           {"Content-Type": "application/json", "X-ElkFS-Token": token})
    assert status == 403 and "ADMIN_PASSWORD" in json.loads(body)["error"]
