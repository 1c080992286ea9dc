"""The web interface every master serves on HTTP_LISTEN_HOST:HTTP_LISTEN_PORT (9425).

An aiohttp application in the master's own event loop, reading the master's tables
directly (see `views.py`); leader or follower, each master shows the whole cluster as it
sees it. Pages: masters, lease history, chunkservers, info, mounts, operations; each also
as JSON under `/api/`, and `/metrics` for Prometheus.

The one thing it changes is the leadership: `POST /api/step-down` runs the same hand-over
as `mfscli -C SD` (`HANode.step_down`). It needs
- the admin password (ADMIN_PASSWORD in mfsmaster.cfg, compared in constant time; with
  none set the button is disabled and the endpoint refuses), and
- the page's token: an HMAC, under a secret this process made at start, of the time the
  page was served. Another site's page cannot read it (same-origin policy) and a form on
  it cannot send the custom header that carries it, nor a JSON body without a preflight
  that this server never grants; a request that says it comes from another origin is
  refused outright.
Every response also forbids framing (no clickjacking of the button) and any script,
style or connection not from the master itself (no external fetches, nothing inline).
Every connection is held to the HTTP_* limits (`limits.py`): so many per address,
requests whole in time and small, idle ones closed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import time

from aiohttp import web

from ..proto.errors import NOT_LEADER, FsError
from . import limits, metrics, pages
from .leaselog import LeaseLogTail
from .views import OpsHistory, Views

log = logging.getLogger("mfsmaster.web")

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}
TOKEN_HEADER = "X-ElkFS-Token"
TOKEN_TTL_S = 24 * 3600
WRONG_PASSWORD_DELAY_S = 0.5
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


class WebInterface:
    def __init__(self, master):
        self.master = master
        self.secret = secrets.token_bytes(32)
        self.lease_log = LeaseLogTail(os.path.join(master.cfg.DATA_PATH, "lease.log"))
        self.ops = OpsHistory(master.clients.op_counts)
        self.views = Views(master, self.lease_log, self.ops)
        self.static = self._load_static()
        self.asset_version = hashlib.sha256(
            b"".join(body for body, _ in self.static.values())).hexdigest()[:12]
        self.runner: web.AppRunner | None = None
        self.listener: limits.WebListener | None = None
        self._sampler: asyncio.Task | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self, host: str | None, port: int) -> None:
        """Listen on host:port, each connection held to the HTTP_* limits (limits.py)."""
        listener = limits.WebListener(limits.connection_limits(self.master.cfg))
        app = self.make_app(listener)
        runner = web.AppRunner(app, access_log=None, max_line_size=limits.MAX_LINE,
                               max_field_size=limits.MAX_FIELD,
                               max_headers=limits.MAX_HEADERS)
        await runner.setup()
        try:
            await listener.serve(runner, host, port)
        except OSError:
            await runner.cleanup()
            raise
        self.runner = runner
        self.listener = listener
        self.lease_log.poll()
        self._sampler = asyncio.create_task(self._sample_loop())

    def reload(self, cfg) -> None:
        """New HTTP_* limits apply to the open connections too."""
        self.listener.limits = limits.connection_limits(cfg)

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        await self.views.close()
        if self.listener is not None:
            self.listener.close()
        if self.runner is not None:
            await self.runner.cleanup()

    async def _sample_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.ops.sample(time.time())
                self.lease_log.poll()
            except Exception:  # the page must never take the master down
                log.exception("web: sampling failed")

    def make_app(self, listener: limits.WebListener) -> web.Application:
        app = web.Application(middlewares=[listener.middleware, self._headers],
                              client_max_size=limits.MAX_BODY)
        r = app.router
        r.add_get("/", self.index)
        for name, _ in pages.VIEWS:
            r.add_get(f"/{name}", self.page)
        r.add_get("/api/masters", self.api_masters)
        r.add_get("/api/cluster", self.api_cluster)
        r.add_get("/api/status", self.api_status)
        r.add_get("/api/leases", self.api_leases)
        r.add_get("/api/lease-log", self.api_lease_log)
        r.add_get("/api/chunkservers", self.api_chunkservers)
        r.add_get("/api/info", self.api_info)
        r.add_get("/api/mounts", self.api_mounts)
        r.add_get("/api/operations", self.api_operations)
        r.add_post("/api/step-down", self.api_step_down)
        r.add_get("/metrics", self.metrics)
        r.add_get("/static/{name}", self.static_file)
        return app

    @web.middleware
    async def _headers(self, request: web.Request, handler):
        resp = await handler(request)
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    # ------------------------------------------------------------ token and password

    def issue_token(self) -> str:
        issued = str(int(time.time()))
        return f"{issued}.{self._mac(issued)}"

    def token_ok(self, token: str) -> bool:
        issued, _, mac = token.partition(".")
        if not issued.isdigit() or not hmac.compare_digest(mac, self._mac(issued)):
            return False
        return 0 <= time.time() - int(issued) < TOKEN_TTL_S

    def _mac(self, issued: str) -> str:
        return hmac.new(self.secret, b"elkfs-web-page:" + issued.encode(),
                        hashlib.sha256).hexdigest()

    def admin_enabled(self) -> bool:
        return bool(self.master.cfg.ADMIN_PASSWORD)

    def password_ok(self, password: str) -> bool:
        expected = self.master.cfg.ADMIN_PASSWORD.encode()
        return bool(expected) and hmac.compare_digest(password.encode(), expected)

    @staticmethod
    def cross_site(request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            return True
        return request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin",
                                                                             "none")

    # ------------------------------------------------------------ pages

    async def index(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/masters")

    async def page(self, request: web.Request) -> web.Response:
        view = request.path.strip("/")
        masters = await self.views.masters()
        everything = request.query.get("all") == "1"
        if view == "masters":
            body = pages.masters_view(masters, self.admin_enabled())
        elif view == "leases":
            body = pages.leases_view(await self.views.leases(everything=everything), everything)
        elif view == "chunkservers":
            body = pages.chunkservers_view(await self.views.chunkservers())
        elif view == "info":
            body = pages.info_view(self.views.info())
        elif view == "mounts":
            body = pages.mounts_view(self.views.mounts())
        else:
            body = pages.operations_view(self.views.operations())
        live = pages.live(masters, body)
        if request.query.get("fragment") == "1":
            return web.Response(text=live, content_type="text/html")
        title = dict(pages.VIEWS)[view]
        html = pages.page(view, title, live, self.issue_token(), self.asset_version, masters)
        return web.Response(text=html, content_type="text/html")

    async def static_file(self, request: web.Request) -> web.Response:
        found = self.static.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, ctype = found
        return web.Response(body=body, content_type=ctype, charset="utf-8",
                            headers={"Cache-Control": "public, max-age=86400"})

    def _load_static(self) -> dict[str, tuple[bytes, str]]:
        files = {}
        for name in sorted(os.listdir(STATIC_DIR)):
            ctype = STATIC_TYPES.get(os.path.splitext(name)[1])
            if ctype is not None:
                with open(os.path.join(STATIC_DIR, name), "rb") as f:
                    files[name] = (f.read(), ctype)
        return files

    # ------------------------------------------------------------ API

    async def api_masters(self, request: web.Request) -> web.Response:
        return _json((await self.views.masters())["rows"])

    async def api_cluster(self, request: web.Request) -> web.Response:
        return _json(await self.views.masters())

    async def api_status(self, request: web.Request) -> web.Response:
        return _json(self.views.own_view())

    async def api_leases(self, request: web.Request) -> web.Response:
        limit = _int(request.query.get("limit"), 60, 1, 1000)
        return _json(await self.views.leases(limit, request.query.get("all") == "1"))

    async def api_lease_log(self, request: web.Request) -> web.Response:
        return _json(self.views.lease_log_events(_int(request.query.get("limit"), 200, 1, 1000)))

    async def api_chunkservers(self, request: web.Request) -> web.Response:
        return _json(await self.views.chunkservers())

    async def api_info(self, request: web.Request) -> web.Response:
        return _json(self.views.info())

    async def api_mounts(self, request: web.Request) -> web.Response:
        return _json(self.views.mounts())

    async def api_operations(self, request: web.Request) -> web.Response:
        return _json(self.views.operations())

    async def metrics(self, request: web.Request) -> web.Response:
        self.lease_log.poll()
        text = metrics.render(self.master, dict(self.lease_log.counts),
                              self.views.own_address(), [*self.master.servers, self.listener])
        return web.Response(body=text.encode(), headers={"Content-Type": metrics.CONTENT_TYPE})

    async def api_step_down(self, request: web.Request) -> web.Response:
        """The leader hands over (`mfscli -C SD[/ADDRESS]`): JSON in, JSON out."""
        if self.cross_site(request):
            return _error(403, "cross-site request refused")
        if not self.token_ok(request.headers.get(TOKEN_HEADER, "")):
            return _error(403, "missing or invalid page token: reload the page")
        if request.content_type != "application/json":
            return _error(415, "send JSON")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        password, target = body.get("password", ""), body.get("target", "")
        if not isinstance(password, str) or not isinstance(target, str):
            return _error(400, "password and target must be strings")
        if not self.admin_enabled():
            return _error(403, "Step Down is disabled here: set ADMIN_PASSWORD in "
                               "mfsmaster.cfg and reload the master")
        if not self.password_ok(password):
            log.warning("web: step-down refused (wrong password) from %s", request.remote)
            await asyncio.sleep(WRONG_PASSWORD_DELAY_S)  # slows down guessing
            return _error(403, "wrong password")
        ha = self.master.ha
        if ha is None:
            return _error(409, "HA is not enabled on this master (HA_ENABLED = 0)")
        term = ha.core.accepted_term
        try:
            result = ha.step_down(target.strip())
        except FsError as e:
            if e.status == NOT_LEADER:
                leader = ha.leader_hint().rpartition(":")[0]
                return _error(409, "this master does not lead now"
                              + (f"; the leader is {leader}" if leader else ""))
            return _error(409, e.detail or str(e))
        to = self._address_of(result.get("target"))
        log.warning("web: step-down requested from %s (term %d, handing over to %s)",
                    request.remote, term, to or "the most up-to-date follower")
        return _json({"ok": True, "from": ha.addr, "term": term, "target": to,
                      "requested_at": time.time()})

    def _address_of(self, ident: str | None) -> str:
        if not ident:
            return ""
        for host, hello in self.master.ha.peers.hellos.items():
            if hello.ident == ident:
                return host
        return ident


def _json(data, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, default=str), status=status,
                        content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"ok": False, "error": message}, status)


def _int(text: str | None, default: int, low: int, high: int) -> int:
    try:
        return max(low, min(high, int(text))) if text is not None else default
    except ValueError:
        return default
