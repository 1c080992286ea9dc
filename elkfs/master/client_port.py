"""The client port (MooseFS's `matoclserv`): sessions, metadata requests, queries.

Changes are applied through the store and answered once durable (committed, with HA);
a change that touches a directory another session keeps a listing of is answered only
after that listing was recalled.

Who may do what comes from mfsexports.cfg: a session registers under the rule its address,
directory and password choose (`exports`), and every request passes `sessionaccess.admit`
(root, read-only, ranges, mapped owners) before anything else looks at it.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import logging
import secrets
import stat
import time
from collections import Counter

import msgspec

from .. import access, ratelog
from ..proto import messages as m
from ..proto import rpc
from ..proto.auth import READ
from ..proto.errors import BAD_SESSION, NOT_LEADER, FsError
from ..proto.password import password_proof, tool_token
from . import authority, exports
from . import replication as rep
from .filelocks import F_WRLCK, LockWaiters
from .listings import ListingLeases, touched_dirs
from .part import MasterPart
from .records import CloseSession, ForgetChunkserver, OpenSession, SessionGone, SetMaintenance
from .sessionaccess import TRASH_OPS, SessionAccess, admit, learn, resolve_root

log = logging.getLogger("mfsmaster")
limit_log = ratelog.RateLimitedLog(log)

# Changes to a file that other sessions holding it open must not miss: their cached
# attributes and pages are recalled (`InvalidateInodes`) before the change is answered.
CHANGES_FILE = (m.SetAttr, m.Truncate, m.SetXattr, m.RemoveXattr, m.WriteChunkEnd,
                m.AppendReserve)
# A session holding a file open trusts what it caches of it (a mount answers stats of a
# file it holds from its cached attributes): these changes of the file's names change its
# attributes too (ctime, nlink), so they recall it as well.
NAME_CHANGES = (m.Link, m.Unlink, m.Rename)
RECALL_TIMEOUT_S = 2.0
CHECK_AGAIN_S = 60.0  # a copy clients report bad is checked at most this often
# Requests that may touch a whole tree: over a budget they run in steps (longops.py).
LONG_OPS = (m.Snapshot, m.SetGoal, m.SetTrashTime, m.DirStats)
ACL_NAMES = (b"system.posix_acl_access", b"system.posix_acl_default")


def changes_permissions(op: m.Op) -> bool:
    if isinstance(op, m.SetAttr):
        return bool(op.valid & (m.SET_MODE | m.SET_UID | m.SET_GID))
    return isinstance(op, (m.SetXattr, m.RemoveXattr)) and op.name in ACL_NAMES  # a holder that does not answer delays a change at most this long


def changed_files(op: m.Op, result: m.Result | None) -> list[int]:
    """The files (not directories) whose attributes `op` changed, as far as other
    sessions holding them open must know: the file a CHANGES_FILE op names; the file a
    Link names; for an unlink or rename, the files it touched that still have a name
    (from its answer: a file whose last name went is reached by no lookup)."""
    if isinstance(op, CHANGES_FILE):
        return [op.inode]
    if type(op) is m.Link:
        return [op.inode]
    if type(op) in NAME_CHANGES and type(result) is m.ChangedOut:
        return [a.inode for a in result.attrs if not stat.S_ISDIR(a.mode)]
    return []


class ClientPort(MasterPart):
    def __init__(self, master):
        super().__init__(master)
        self.session_links: dict[bytes, rpc.Connection] = {}
        # When this master began leading (wall clock, ns): the sustain time of a session
        # whose going away no record tells (its client was connected to a master that
        # died) counts from here.
        self.leading_since_ns = time.time_ns()
        self.leases = ListingLeases()
        self.lock_waiters = LockWaiters()  # volatile: clients re-send waits after a failover
        self.op_counts: Counter[str] = Counter()  # metadata operations by type (the web page)
        # mfsexports.cfg: the rules in force, each connected session's standing under
        # them, and the challenge each connection was given (used once).
        self.rules: list[exports.Rule] = exports.parse(exports.DEFAULT_TEXT)
        self.access: dict[bytes, SessionAccess] = {}
        self.challenges: dict[rpc.Connection, bytes] = {}
        self.checks_asked: dict[tuple[int, bytes], float] = {}  # (chunk, cs) -> when (BadCopy)
        # The sessions opened or resumed from each address (volatile: after a restart or
        # a failover a session counts again once its client comes back).
        self.sessions_by_address: dict[str, set[bytes]] = {}

    def on_client(self, conn: rpc.Connection, msg: m.Msg, data) -> None:
        if type(msg) is m.Ping:
            conn.send(m.Ok(msg.req))
        elif isinstance(msg, m.MasterStatus):
            conn.send(m.MetaReply(msg.req, 0, m.JsonOut(json.dumps(self.master_status()))))
        elif isinstance(msg, m.MasterAdmin) and msg.command == "force-voters":
            self.admin(conn, msg)  # given to a follower: there is no leader to go to
        elif isinstance(msg, m.SessionChallenge):
            nonce = self.challenges[conn] = secrets.token_bytes(32)
            conn.send(m.Challenge(msg.req, nonce))
        elif not self.master.leading:
            self.redirect(conn, msg)
        elif isinstance(msg, m.MetaRequest):
            self.handle_op(conn, msg)
        elif isinstance(msg, m.RegisterSession):
            self.register_session(conn, msg)
        elif isinstance(msg, m.MasterAdmin):
            self.admin(conn, msg)
        else:
            conn.protocol_error(ValueError(f"unexpected {type(msg).__name__} on client port"))

    def redirect(self, conn: rpc.Connection, msg: m.Msg) -> None:
        """A master that does not lead answers every request with where the leader is
        ("" while there is none): the client goes there and resends."""
        leader = self.master.ha.leader_hint()
        if isinstance(msg, m.RegisterSession):
            conn.send(m.SessionReply(msg.req, NOT_LEADER, b"", leader))
        elif hasattr(msg, "req"):
            conn.send(m.Error(msg.req, NOT_LEADER, leader))
        else:
            conn.protocol_error(ValueError(f"unexpected {type(msg).__name__} on client port"))

    def drop_all(self) -> None:
        """Close every client's connection (this master stopped leading)."""
        for conn in list(self.session_links.values()):
            conn.close()

    def reply_read(self, conn: rpc.Connection, reply: m.Msg) -> None:
        """Answer a read once the state it was read from is committed (with HA: nobody
        sees a change a failover could still lose)."""
        if self.master.ha is None:
            conn.send(reply)
        else:
            self.store.when_durable(self.store.seen_version, lambda: conn.send_if_open(reply))

    def master_status(self) -> dict:
        if self.master.ha is not None:
            view = self.master.ha.view()
        else:
            me = self._masters_without_ha()[0]
            view = {**me, "masters": [{**me, "self": True}], "wall_time": time.time()}
        view["http_port"] = self.cfg.HTTP_LISTEN_PORT  # where its web page is
        return view

    def admin(self, conn: rpc.Connection, msg: m.MasterAdmin) -> None:
        """Operators' commands (`mfscli -C`): step-down (HA), maintenance-on,
        maintenance-off, remove-chunkserver (target: the chunkserver's "host:port");
        for clients whose export has `admin`."""
        try:
            if not self.may_admin(conn):
                raise FsError(errno.EACCES, "no export with admin for this address")
            if msg.command == "step-down":
                if self.master.ha is None:
                    raise FsError(errno.EINVAL, "HA is not enabled on this master")
                result = self.master.ha.step_down(msg.target)
                conn.send(m.MetaReply(msg.req, 0, m.JsonOut(json.dumps(result))))
                return
            if msg.command == "force-voters":
                if self.master.ha is None:
                    raise FsError(errno.EINVAL, "HA is not enabled on this master")
                result = self.master.ha.force_voters(msg.voters, msg.min_term)
                conn.send(m.MetaReply(msg.req, 0, m.JsonOut(json.dumps(result))))
                return
            if msg.command not in ("maintenance-on", "maintenance-off", "remove-chunkserver"):
                raise FsError(errno.EINVAL, f"unknown command {msg.command!r}")
            cs_id = self._chunkserver_named(msg.target)
            now_ns = time.time_ns()
            if msg.command == "remove-chunkserver":
                server = self.registry.servers.get(cs_id)
                if server is not None and server.connected:
                    raise FsError(errno.EBUSY, f"chunkserver {msg.target} is connected: "
                                               "stop it first")
                op = ForgetChunkserver(cs_id)
                result = {"removed": msg.target}
            else:
                on = msg.command == "maintenance-on"
                until = now_ns + int(self.cfg.MAINTENANCE_MODE_TIMEOUT * 1e9) if on else 0
                op = SetMaintenance(cs_id, until)
                result = {"chunkserver": msg.target, "maintenance": on,
                          "until": until / 1e9 if on else None}
            _, version = self.store.change(op, now_ns)
            if isinstance(op, ForgetChunkserver):
                self.registry.forget(cs_id)
                self.registry.servers.pop(cs_id, None)
            log.info("%s %s", msg.command, msg.target)
            reply = m.MetaReply(msg.req, 0, m.JsonOut(json.dumps(result)))
            self.store.when_durable(version, lambda: conn.send_if_open(reply))
        except FsError as e:
            conn.send(m.Error(msg.req, e.status, e.detail))

    def may_admin(self, conn: rpc.Connection) -> bool:
        access = self.access.get(conn.context) if conn.context is not None else None
        if access is not None:
            return access.rule.admin and not access.revoked
        return exports.admin_allowed(self.rules, _peer_ip(conn))

    def set_rules(self, rules: list[exports.Rule]) -> None:
        """New exports (a reload): every session is checked again; one that lost its
        right gets EACCES from its next request, the others go on as they were."""
        self.rules = rules
        for session_id, access in self.access.items():
            was = access.revoked
            access.recheck(rules)
            if access.revoked and not was:
                log.warning("session %s no longer allowed: %s", session_id.hex(),
                            access.revoked)

    def _chunkserver_named(self, target: str) -> bytes:
        """The id of the chunkserver at "host:port" (or "host/port", or just "host" when
        only one is there)."""
        target = target.replace("/", ":")
        matches = [cs_id for cs_id, k in self.ns.chunkservers.items()
                   if k.addr == target or k.addr.rpartition(":")[0] == target]
        if len(matches) != 1:
            raise FsError(errno.ENOENT if not matches else errno.EINVAL,
                          f"no single chunkserver at {target!r}")
        return matches[0]

    def on_client_close(self, conn: rpc.Connection) -> None:
        self.challenges.pop(conn, None)
        for key in [k for k in self.master.chunks.creating if self.locks.held_by(k) is conn]:
            # The writer is gone mid-creation: the lock stays until its copies are gone.
            self.locks.hand_over(key, self)
            self.spawn(self.master.chunks._unmake_then_release(key, self.master.chunks.creating.pop(key)))
        for key in [k for k in self.master.chunks.writing if self.locks.held_by(k) is conn]:
            del self.master.chunks.writing[key]
        self.locks.release_owner(conn)
        session_id = conn.context
        if session_id is not None and self.session_links.get(session_id) is conn:
            self.leases.forget_session(session_id)  # it drops its listings when it reconnects
            self.lock_waiters.forget_session(session_id)  # it asks again when it reconnects
            del self.session_links[session_id]
            self.access.pop(session_id, None)
            if self.master.leading and session_id in self.ns.sessions:
                self.store.change(SessionGone(session_id, True), time.time_ns())

    def check_export(self, conn: rpc.Connection, msg: m.RegisterSession) -> SessionAccess:
        """The session's standing under the exports, or FsError (refused)."""
        ip = _peer_ip(conn)
        nonce = self.challenges.pop(conn, b"")
        if msg.attach:
            return self.check_attached(conn, msg, ip, nonce)
        try:
            path = None if msg.meta else exports.split_path(msg.path or "/")
        except ValueError as e:
            raise FsError(errno.EINVAL, str(e)) from None
        proven = exports.proven_passwords(self.rules, nonce, msg.proof)
        verdict = exports.choose(self.rules, ip, path, proven, tried_password=bool(msg.proof))
        if verdict.rule is None:
            log.info("session refused to %s (%s): %s", conn.peer, msg.info[:100],
                     verdict.reason)
            raise FsError(errno.EACCES, verdict.reason)
        root = resolve_root(self.ns, path) if path else 1
        access = SessionAccess(verdict.rule, ip, path, proven, root)
        if proven and nonce:
            access.tool_token = tool_token(min(proven), nonce)
        return access

    def check_attached(self, conn: rpc.Connection, msg: m.RegisterSession, ip: int | None,
                       nonce: bytes) -> SessionAccess:
        """A client tool's session riding on a mount's (`msg.attach`): from the mount's
        address, it proved the mount's tool token, and gets the mount's directory and
        proven passwords, checked against the exports (never more than the mount may do)."""
        parent = self.access.get(msg.attach)
        if msg.session == msg.attach:
            raise FsError(errno.EINVAL, "a tool's session is its own, not the mount's")
        if msg.attach not in self.ns.sessions:
            raise FsError(errno.EACCES, "the mount's session has ended")
        if parent is None:
            # Not connected here (yet): after a failover the mount registers again soon.
            raise FsError(errno.EAGAIN, "the mount's session is not connected to the master")
        if parent.parent:
            raise FsError(errno.EACCES, "not a mount's session")
        if parent.revoked:
            raise FsError(errno.EACCES, f"no longer allowed: {parent.revoked}")
        if ip != parent.ip:
            # The tools run beside their mount: a token that got away is worth nothing
            # anywhere else.
            raise FsError(errno.EACCES, "not from the mount's address")
        if parent.tool_token and not (nonce and hmac.compare_digest(
                password_proof(parent.tool_token, nonce), msg.proof)):
            log.info("tool session refused to %s (%s): wrong token for session %s",
                     conn.peer, msg.info[:100], msg.attach.hex())
            raise FsError(errno.EACCES, "wrong tool token (the mount registered again "
                                        "since it was read: retry)")
        verdict = exports.choose(self.rules, ip, parent.path, parent.proven,
                                 tried_password=bool(parent.proven))
        if verdict.rule is None:
            log.info("tool session refused to %s (%s): %s", conn.peer, msg.info[:100],
                     verdict.reason)
            raise FsError(errno.EACCES, verdict.reason)
        access = SessionAccess(verdict.rule, ip, parent.path, parent.proven, parent.root)
        access.parent = msg.attach
        return access

    def check_parent(self, access: SessionAccess) -> None:
        """A tool's session lives no longer than the mount's it rides on, and may do
        nothing the mount may no longer do (FsError EACCES)."""
        if access.parent not in self.ns.sessions:
            raise FsError(errno.EACCES, "no longer allowed: the mount's session has ended")
        parent = self.access.get(access.parent)
        if parent is not None and parent.revoked:
            raise FsError(errno.EACCES, f"no longer allowed: {parent.revoked}")
    def _sessions_from(self, address: str) -> set[bytes]:
        """The sessions of `address` that still exist (at most the cap: cheap)."""
        mine = self.sessions_by_address.setdefault(address, set())
        sessions = self.ns.sessions
        for gone in [s for s in mine if s not in sessions]:
            mine.discard(gone)
        return mine

    def register_session(self, conn: rpc.Connection, msg: m.RegisterSession) -> None:
        try:
            access = self.check_export(conn, msg)
        except FsError as e:
            conn.send(m.SessionReply(msg.req, e.status, b"", detail=e.detail or str(e)))
            return
        session_id = msg.session
        address = conn.peer[0] if conn.peer else ""
        mine = self._sessions_from(address)
        cap = self.cfg.MAX_SESSIONS_PER_ADDRESS
        if cap and len(mine) >= cap and session_id not in mine:
            limit_log.warning(("sessions", address),
                              "refusing a session from %s: it has %d sessions (the limit "
                              "per address, MAX_SESSIONS_PER_ADDRESS)", address, len(mine))
            conn.send(m.SessionReply(msg.req, errno.EUSERS, b""))
            return
        if not session_id:
            session_id = secrets.token_bytes(16)
            _, version = self.store.change(OpenSession(session_id, msg.info[:200]), time.time_ns())
        elif session_id not in self.ns.sessions:
            conn.send(m.SessionReply(msg.req, BAD_SESSION, b""))
            return
        elif self.ns.sessions[session_id].gone_ns:
            _, version = self.store.change(SessionGone(session_id, False), time.time_ns())
        else:
            version = self.ns.version
        old = self.session_links.get(session_id)
        if old is not None and old is not conn:
            old.context = None
        conn.context = session_id
        self.session_links[session_id] = conn
        self.access[session_id] = access
        mine.add(session_id)
        self.leases.set_ttl(session_id, msg.listing_ttl_ms)
        reply = m.SessionReply(msg.req, 0, session_id, root=access.root,
                               readonly=access.rule.readonly)
        self.store.when_durable(version, lambda: conn.send_if_open(reply))

    def identity(self, conn: rpc.Connection, msg: m.MetaRequest) -> access.Who:
        """Who a request is made for: what the client says (a mount: the process that
        made the system call), mapped by its session's export rule (maproot, mapall)."""
        rights = self.access.get(msg.session)
        if rights is None:
            return access.Who(msg.uid, msg.gid, msg.groups)
        return access.Who(*rights.identity(msg.uid, msg.gid, msg.groups))

    def authorize(self, conn: rpc.Connection, msg: m.MetaRequest,
                  tree: bool = True) -> m.Op:
        """The op to carry out for this request, checked against its identity
        (`authority.py`): FsError (EACCES, EPERM) when not allowed. `tree=False`: of an
        op covering a tree, only its top."""
        rights = self.access.get(msg.session)
        if rights is not None and rights.meta and isinstance(msg.op, TRASH_OPS):
            return msg.op  # the export of "." is what grants the trash (the meta mount)
        return authority.check(self.ns, self.identity(conn, msg), msg.op, msg.session,
                               time.time_ns(), tree)

    def handle_op(self, conn: rpc.Connection, msg: m.MetaRequest) -> None:
        op = msg.op
        self.op_counts[type(op).__name__] += 1
        try:
            if msg.session not in self.ns.sessions:
                raise FsError(BAD_SESSION, "unknown session: register first")
            access = self.access.get(msg.session) if conn.context == msg.session else None
            if access is None:
                raise FsError(BAD_SESSION, "session not registered on this connection")
            if access.parent and type(op) is not m.EndSession:
                self.check_parent(access)
            try:
                op = admit(self.ns, access, op)  # exports: rights, root, identity
            except FsError:
                if type(op) is m.WriteChunkEnd:
                    self.abandon_write(conn, op)
                raise
            if op is not msg.op:
                msg = msgspec.structs.replace(msg, op=op)
            if type(op) is m.GetLock:
                self.reply_read(conn, m.MetaReply(msg.req, 0, self.ns.get_lock(msg.session, op)))
                return
            if type(op) in LONG_OPS:
                # the top checked here; the entries of a tree below it (a non-root
                # identity's) by the long op in steps when the tree is big, else in one
                # go below (authority.py, "whole trees")
                checked = self.authorize(conn, msg, tree=False)
                if checked is not op:
                    msg = msgspec.structs.replace(msg, op=checked)
                if self.master.longops.take(conn, msg, self.identity(conn, msg)):
                    return  # a big tree: done in steps, answered when done
                op = msg.op
            if op.READ_ONLY:
                self.authorize(conn, msg)
                if type(op) is m.ReadDir and op.renew and op.offset == 0 and not op.after \
                        and self.leases.renew(op.inode, msg.session, time.monotonic()):
                    self.reply_read(conn, m.MetaReply(msg.req, 0, m.DirOut([], -1, True)))
                    return
                result = self.query(op)
                learn(access, result)
                if (isinstance(result, m.DirOut) and op.offset == 0 and not op.after
                        and result.next_offset == -1):
                    self.leases.grant(op.inode, msg.session, time.monotonic())
                self.reply_read(conn, m.MetaReply(msg.req, 0, result))
                return
            if type(op) is m.EndSession:
                self.end_session(conn, msg)
                return
            if isinstance(op, (m.WriteChunk, m.Truncate, m.WriteChunkEnd)):
                self.authorize(conn, msg)
                if not self.master.chunks.chunk_op_now(conn, msg):
                    self.spawn(self.master.chunks.chunk_op(conn, msg))
                return
            done, result = self.ns.duplicate_result(msg.session, msg.seq)
            holders = None
            if done:
                version = self.ns.version
            else:
                op = self.authorize(conn, msg)
                try:
                    result, version = self.store.change(op, time.time_ns(), msg.session,
                                                        msg.seq)
                except FsError as e:
                    if e.status == errno.EAGAIN and type(op) is m.SetLock and op.wait:
                        self.queue_lock_wait(conn, msg)
                        return
                    raise
                if type(op) is m.ReleaseLocks or (type(op) is m.SetLock
                                                   and op.type != F_WRLCK):
                    # Something may have been given up (an unlock, a downgrade).
                    self.wake_lock_waiters([op.inode], version)
                if self.ns.effects:
                    self.master.chunks.run_effects()
                now = time.monotonic()
                if self.leases.by_dir:
                    holders = self.leases.recall(touched_dirs(op), msg.session, now)
                if isinstance(op, m.Mkdir):
                    self.leases.grant(result.attr.inode, msg.session, now)  # it is empty
            learn(access, result)
            if type(op) is m.Acquire and op.answer:
                self.store.when_durable(version, lambda: self.answer_open(conn, msg.req, op))
                return
            reply = m.MetaReply(msg.req, 0, result)
            openers = self.open_elsewhere(op, msg.session, result)
            if holders or openers:
                self.spawn(self._recall_then_reply(conn, reply, version, holders or {},
                                                   openers, changed_files(op, result)))
            else:
                self.store.when_durable(version, lambda: conn.send_if_open(reply))
        except FsError as e:
            conn.send(m.Error(msg.req, e.status, e.detail))

    def abandon_write(self, conn: rpc.Connection, op: m.WriteChunkEnd) -> None:
        """A write the session may no longer finish (the exports were reloaded under
        it): its chunk is let go as if its client had gone."""
        key = (op.inode, op.index)
        if self.locks.held_by(key) is not conn:
            return
        creating = self.master.chunks.creating
        if key in creating:
            self.locks.hand_over(key, self)
            self.spawn(self.master.chunks._unmake_then_release(key, creating.pop(key)))
        else:
            self.locks.release(key)
    def answer_open(self, conn: rpc.Connection, req: int, op: m.Acquire) -> None:
        """What an open asked for with its `Acquire`, as things are now that the open is
        durable: from here on every change of the file by another session recalls it
        from this one, so nothing in this answer can be missed."""
        if not conn.is_open:
            return
        try:
            node = self.ns.node(op.inode)
            attr = self.ns.attr(node)
            chunk = None
            if op.answer & m.ACQUIRE_CHUNK and stat.S_ISREG(attr.mode):
                chunk = self.read_chunk(op.inode, 0)
        except FsError as e:
            conn.send(m.Error(req, e.status, e.detail))
            return
        self.reply_read(conn, m.MetaReply(req, 0, m.OpenOut(attr, chunk)))

    def queue_lock_wait(self, conn: rpc.Connection, msg: m.MetaRequest) -> None:
        """A blocking lock request that conflicts: answered at once ("queued"), and the
        client is woken (`LockWake`) when a lock on the file goes, so no request waits
        here for as long as a lock is held (nor across a failover: the client asks
        again after reconnecting)."""
        op = msg.op
        self.lock_waiters.add(op.inode, msg.session, op.wait)
        conn.send(m.MetaReply(msg.req, 0, m.LockOut(op.type, op.start, op.end, queued=True)))

    def wake_lock_waiters(self, inodes, version: int) -> None:
        """Wake whoever waits for a lock on `inodes`, once the change that freed them is
        durable (a woken client asks again and must find the lock free)."""
        woken: dict[bytes, list[int]] = {}
        for inode in inodes:
            for session, waits in self.lock_waiters.take(inode).items():
                woken.setdefault(session, []).extend(waits)
        if not woken:
            return

        def wake() -> None:
            for session, waits in woken.items():
                link = self.session_links.get(session)
                if link is not None:
                    link.send_if_open(m.LockWake(waits))

        self.store.when_durable(version, wake)

    def drop_session_locks(self, session: bytes, record) -> None:
        """Journal `record` (a session's end, or its locks' expiry) and wake whoever
        waited for a lock the session held."""
        inodes = self.ns.locks.inodes_of(session)
        _, version = self.store.change(record, time.time_ns())
        if inodes:
            self.wake_lock_waiters(inodes, version)

    def end_session(self, conn: rpc.Connection, msg: m.MetaRequest) -> None:
        """The client's last word: its session closes now (a tool, an unmount)."""
        inodes = self.ns.locks.inodes_of(msg.session)
        _, version = self.store.change(CloseSession(msg.session), time.time_ns())
        if inodes:
            self.wake_lock_waiters(inodes, version)
        self.master.chunks.run_effects()  # files unlinked while open are freed now
        if self.session_links.get(msg.session) is conn:
            del self.session_links[msg.session]
            self.access.pop(msg.session, None)
            self.leases.forget_session(msg.session)
        conn.context = None
        reply = m.MetaReply(msg.req, 0, None)
        self.store.when_durable(version, lambda: conn.send_if_open(reply))

    def open_elsewhere(self, op: m.Op, changer: bytes,
                       result: m.Result | None = None) -> list[rpc.Connection]:
        """The links of the other sessions that hold a file `op` changed open (`result`:
        its answer, which names the files an unlink or rename touched); for a change of
        permissions (mode, owner, ACL), of every other session: permission checks use
        cached attributes, and such changes are rare."""
        inodes = changed_files(op, result)
        if not inodes:
            return []
        if changes_permissions(op):
            return [link for session, link in self.session_links.items()
                    if session != changer and link.is_open]
        links = []
        for session, sess in self.ns.sessions.items():
            if session != changer and any(i in sess.open_files for i in inodes):
                link = self.session_links.get(session)
                if link is not None and link.is_open:
                    links.append(link)
        return links

    async def recall_inode(self, op: m.Op, changer: bytes) -> None:
        """Have every other session holding the changed file open drop what it caches
        of it (attributes, pages) before the change is answered: close-to-open and
        better, a reader that keeps the file open sees a write as soon as it returned."""
        links = self.open_elsewhere(op, changer)
        if links:
            await self._recall_inodes(links, changed_files(op, None))

    async def _recall_inodes(self, links, inodes: list[int]) -> None:
        calls = [link.call(m.InvalidateInodes, inodes=inodes, timeout=RECALL_TIMEOUT_S)
                 for link in links]
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.info("inode recall not answered (%r)", outcome)

    async def _recall_then_reply(self, conn: rpc.Connection, reply: m.MetaReply, version: int,
                                 holders: dict[bytes, tuple[list[int], float]],
                                 openers=(), inodes: list[int] = ()) -> None:
        """Acknowledge a change only once every other holder of a listing it changed has
        dropped that listing (or the listing expired), and every other session holding
        the changed file open dropped its cached attributes and pages."""
        now = time.monotonic()
        calls = []
        for session, (dirs, expires) in holders.items():
            link = self.session_links.get(session)
            if link is not None and link.is_open:
                calls.append(link.call(m.InvalidateListings, dirs=dirs,
                                       timeout=max(0.0, expires - now)))
        if openers:
            calls.append(self._recall_inodes(openers, list(inodes)))
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.info("listing recall not answered (%r): waited for it to expire", outcome)
        try:
            await self.store.wait_durable(version)
        except FsError:
            return  # no longer leading: the client resends to the new leader
        conn.send_if_open(reply)

    def query(self, op: m.Op) -> m.Result | None:
        if isinstance(op, m.ReadChunk):
            return self.read_chunk(op.inode, op.index)
        if isinstance(op, m.FileChunks):
            return self.file_chunks(op.inode)
        if isinstance(op, m.BadCopy):
            return self.bad_copy(op)
        if isinstance(op, m.StatFs):
            total, used = self.registry.totals()
            return m.StatFsOut(total, max(0, total - used), used, len(self.ns.nodes))
        if isinstance(op, m.ClusterInfo):
            return m.JsonOut(json.dumps(self.cluster_info()))
        return self.ns.query(op)

    def read_chunk(self, inode: int, index: int) -> m.ChunkOut:
        node = self.ns.file(inode)
        chunk = self.ns.chunk_of(inode, index)
        if chunk is None:
            return m.ChunkOut(0, 0, node.length, [])
        servers = self.registry.valid_servers(chunk.chunk_id, chunk.version)
        return m.ChunkOut(chunk.chunk_id, chunk.version, node.length, [s.addr for s in servers],
                          token=self.master.token(chunk.chunk_id, chunk.version, READ))

    def bad_copy(self, op: m.BadCopy) -> m.Result:
        """A client saw a block of a copy fail its CRC: that chunkserver checks the copy
        from disk and reports it damaged if it is; the client's word condemns nothing."""
        now = time.monotonic()
        if len(self.checks_asked) > 10000:
            self.checks_asked = {k: t for k, t in self.checks_asked.items()
                                 if now - t < CHECK_AGAIN_S}
        for cs_id, copy in self.registry.holders(op.chunk_id).items():
            server = self.registry.servers.get(cs_id)
            if server is not None and tuple(server.addr) == tuple(op.addr) \
                    and copy.version == op.version:
                key = (op.chunk_id, cs_id)
                if now - self.checks_asked.get(key, -CHECK_AGAIN_S) < CHECK_AGAIN_S:
                    break  # checked a moment ago: a check reads the whole copy
                self.checks_asked[key] = now
                log.warning("a client read a block of chunk %016X v%d on %s failing its "
                            "CRC: the chunkserver checks the copy", op.chunk_id,
                            op.version, server.name)
                self.spawn(self.master.chunks.command(server, m.CheckChunk(op.chunk_id,
                                                                           op.version)))
                break
        return m.JsonOut("{}")

    def file_chunks(self, inode: int) -> m.FileChunksOut:
        node = self.ns.file(inode)
        out = []
        for index, chunk_id in enumerate(node.chunks):
            if not chunk_id:
                continue
            chunk = self.ns.chunks[chunk_id]
            copies = []
            for cs_id, copy in self.registry.holders(chunk_id).items():
                server = self.registry.servers.get(cs_id)
                if server is not None:  # not valid while its server is away
                    copies.append(m.ChunkCopy(server.addr, copy.version,
                                              copy.valid and copy.version == chunk.version
                                              and server.connected))
            out.append(m.ChunkDesc(index, chunk_id, chunk.version, copies))
        return m.FileChunksOut(out)

    def cluster_info(self) -> dict:
        """Counts of chunk health come from the replication planner's last pass
        (`replication_passes` tells a caller when a fresh one ran)."""
        ns = self.ns
        planner = self.planner
        st = planner.stats
        total, used = self.registry.totals()
        now = time.monotonic()
        trash_bytes = sum(ns.nodes[i].size() for i in ns.trash)
        replicating = sum(1 for acts in planner.inflight.values() for a in acts
                          if isinstance(a, rep.Replicate))
        return {
            "metadata_version": ns.version,
            "inodes": len(ns.nodes),
            "chunks": len(ns.chunks),
            "sessions": len(ns.sessions),
            "total_bytes": total,
            "used_bytes": used,
            "missing_chunks": st.missing,
            "endangered_chunks": st.endangered,
            "undergoal_chunks": st.undergoal,
            "overgoal_chunks": st.overgoal,
            "stale_copies": st.stale_copies,
            "damaged_copies": st.damaged_copies,
            "chunks_by_copies": {str(k): v for k, v in sorted(st.by_copies.items())},
            "chunks_by_goal_copies": [[g, c, n] for (g, c), n in sorted(st.by_goal.items())],
            "replications_in_flight": replicating,
            "replications_done": planner.replicated,
            "replications_failed": planner.replication_failures,
            "deletions_done": planner.deleted,
            "replication_passes": planner.passes,
            "replication_active": self.master.registry_complete()
            or now - planner.started_at >= planner.limits.delay_init,
            "trash_files": len(ns.trash),
            "trash_bytes": trash_bytes,
            "last_checkpoint_version": self.store.last_checkpoint_version,
            "chunkservers": [
                {"id": s.cs_id.hex(), "address": s.name, "connected": s.connected,
                 "lost": s.lost,
                 "disconnected_s": 0 if s.connected else round(now - s.disconnected_at, 1),
                 "total_bytes": s.total_bytes, "used_bytes": s.used_bytes,
                 "chunks": s.chunk_count, "version": s.version, "errors": s.errors,
                 "disks": [{"path": d.path, "total_bytes": d.total_bytes,
                            "used_bytes": d.used_bytes, "chunks": d.chunks, "errors": d.errors,
                            "marked_for_removal": d.marked_for_removal, "failed": d.failed}
                           for d in s.disks],
                 "marked_chunks": s.marked_copies,
                 "marked_chunks_needed": st.marked_needed.get(s.cs_id, 0),
                 "removal": planner.removal_state(s, self.registry),
                 "maintenance_s": self._maintenance_left(s.cs_id)}
                for s in self.registry.servers.values()
            ] + [
                # known to the cluster but not registered here (since a restart)
                {"id": cs_id.hex(), "address": k.addr, "connected": False, "lost": False,
                 "disconnected_s": None, "total_bytes": 0, "used_bytes": 0, "chunks": 0,
                 "version": "", "errors": 0, "disks": [], "marked_chunks": 0,
                 "marked_chunks_needed": 0, "removal": "-",
                 "maintenance_s": self._maintenance_left(cs_id)}
                for cs_id, k in ns.chunkservers.items() if cs_id not in self.registry.servers
            ],
            "masters": self.master_status()["masters"],
        }

    def _maintenance_left(self, cs_id: bytes) -> float:
        known = self.ns.chunkservers.get(cs_id)
        if known is None:
            return 0.0
        return round(max(0.0, (known.maintenance_until_ns - time.time_ns()) / 1e9), 1)

    def _masters_without_ha(self) -> list[dict]:
        return [{"address": f"{self.cfg.MATOCL_LISTEN_HOST}:{self.cfg.MATOCL_LISTEN_PORT}",
                 "state": "LEADER", "metadata_version": self.ns.version, "term": 0,
                 "uptime_s": round(time.time() - self.master.started_at)}]


def _peer_ip(conn: rpc.Connection) -> int | None:
    return exports.ip_value(conn.peer[0] if conn.peer else None)
