"""The web interface's tests: a real HA cluster (three masters behind a dnsmasq, three
chunkservers, a real mount) and a real headless Chromium driven by Playwright.

- `ha_web` (one for the package): the cluster on 127.0.84.x with an admin password;
  tests that change it (step-down, killing a master) run last in their module.
- `browser`: Debian's /usr/bin/chromium (Playwright never downloads a browser here).
- `shoot(page, name)`: a full-page screenshot into test-output/screenshots/ at the top
  of the repository, for a reviewer; the folder is printed at the end of the run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from tests.fuse.mounted import MountedCluster

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-quic",
                 "--disable-sync"]
NET = "127.0.84"
PASSWORD = "correct horse battery staple"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCREENSHOTS = os.path.join(REPO, "test-output", "screenshots")

def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http(url: str, method: str = "GET", body: bytes | None = None,
         headers: dict | None = None, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request; HTTP errors are answers too."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get_json(url: str):
    status, _, body = http(url)
    assert status == 200, (url, status, body[:300])
    return json.loads(body)


@pytest.fixture(scope="package")
def ha_web():
    """Three HA masters with ADMIN_PASSWORD, three chunkservers, a mount with a few files."""
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:  # pragma: no cover
        pytest.skip("FUSE is not available")
    base = tempfile.mkdtemp(prefix="elkfs-web-")
    os.chmod(base, 0o755)
    mc = MountedCluster(base, NET, chunkservers=3, masters=3, ha=True,
                        master_options={"ADMIN_PASSWORD": PASSWORD})
    mc.start()
    try:
        mc.cluster.wait_leader(30)
        d = os.path.join(mc.mnt, "data")
        os.mkdir(d)
        for i in range(4):
            with open(os.path.join(d, f"f{i}"), "wb") as f:
                f.write(os.urandom(100_000 + i))
        yield mc
    finally:
        mc.stop()
        if os.environ.get("ELKFS_KEEP_TEST_DIRS"):
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):  # pragma: no cover
        pytest.skip("chromium is not installed (scripts/setup.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(20_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"script errors on the page: {errors}"


_taken: list[str] = []  # screenshots of this run


@pytest.fixture(scope="session")
def shoot():
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    os.makedirs(SCREENSHOTS)

    def take(pg, name: str) -> str:
        path = os.path.join(SCREENSHOTS, f"{name}.png")
        pg.screenshot(path=path, full_page=True)
        _taken.append(path)
        return path

    return take


def pytest_terminal_summary(terminalreporter):
    if _taken:
        terminalreporter.write_line(f"web interface screenshots: {SCREENSHOTS} "
                                    f"({len(_taken)} files)")
