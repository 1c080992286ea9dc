"""The cluster authentication handshake on a connection (the exchange is in `auth.py`).

`authenticate` is the initiator's side (a chunkserver's or a master's link to a master):
it proves the code and checks the master's proof, so a chunkserver obeys no master that
cannot prove it. `Acceptor.admit` is the master's side: called with every message of a
connection not yet authenticated, it runs the exchange and refuses (with a log line that
says why, and closing the connection) anything else.

With an empty AUTH_CODE both sides skip it (the connection counts as authenticated); a
side with a code and a side without refuse each other with a clear error.
"""

from __future__ import annotations

import errno
import logging
import os

from . import messages as m
from . import rpc
from .auth import NONCE_SIZE, ClusterKey
from .errors import FsError


class AuthError(Exception):
    """The other side did not prove the cluster's AUTH_CODE."""


async def authenticate(conn: rpc.Connection, key: ClusterKey, role: str,
                       timeout: float) -> None:
    """Prove AUTH_CODE to the master at the other end and check its proof. Raises
    AuthError (or FsError: the master refused ours) on failure."""
    if not key.enabled:
        conn.authenticated = True
        return
    mine = os.urandom(NONCE_SIZE)
    try:
        reply, _ = await conn.call(m.AuthHello, nonce=mine, role=role, timeout=timeout)
    except FsError as e:
        raise AuthError(f"the master refused authentication: {e.detail or e}") from None
    if not isinstance(reply, m.AuthChallenge) or len(reply.nonce) != NONCE_SIZE:
        raise AuthError(f"unexpected answer {type(reply).__name__} to AuthHello")
    master_proven = key.acceptor_proven(mine, reply.nonce, reply.proof)
    # Our proof goes even when the master's failed: it is good for this pair of nonces
    # only, and a real master with another code then logs the mismatch too.
    try:
        await conn.call(m.AuthProof, proof=key.initiator_proof(mine, reply.nonce),
                        timeout=timeout)
    except FsError as e:
        raise AuthError(f"the master refused our proof: {e.detail or e} (is AUTH_CODE "
                        f"the same on both?)") from None
    if not master_proven:
        raise AuthError("the master failed to prove AUTH_CODE (not a master of this "
                        "cluster)")
    conn.authenticated = True


class Acceptor:
    """The master's side of the handshake for one port."""

    def __init__(self, key: ClusterKey, log: logging.Logger):
        self.key = key
        self.log = log
        self.refused = 0  # connections refused (for tests and the web page)

    def admit(self, conn: rpc.Connection, msg: m.Msg) -> bool:
        """Whether `msg` may be handled: the peer is authenticated (or no code is set).
        Handshake messages are taken here (False)."""
        if conn.authenticated:
            return True
        t = type(msg)
        if t is m.AuthHello:
            if not self.key.enabled:
                self._refuse(conn, msg, "it authenticates but this master has no AUTH_CODE")
                return False
            if len(msg.nonce) != NONCE_SIZE:
                self._refuse(conn, msg, "malformed AuthHello")
                return False
            theirs, mine = msg.nonce, os.urandom(NONCE_SIZE)
            conn.auth_nonces = (theirs, mine)
            conn.send(m.AuthChallenge(msg.req, mine, self.key.acceptor_proof(theirs, mine)))
            return False
        if t is m.AuthProof:
            nonces, conn.auth_nonces = conn.auth_nonces, None  # one try per connection
            if nonces is None:
                self._refuse(conn, msg, "AuthProof without AuthHello")
            elif self.key.initiator_proven(nonces[0], nonces[1], msg.proof):
                conn.authenticated = True
                conn.send(m.Ok(msg.req))
            else:
                self._refuse(conn, msg, "wrong AUTH_CODE (its proof does not match)")
            return False
        if not self.key.enabled:
            conn.authenticated = True
            return True
        self._refuse(conn, msg, f"{t.__name__} before authenticating (is AUTH_CODE set "
                                f"there?)")
        return False

    def _refuse(self, conn: rpc.Connection, msg: m.Msg, why: str) -> None:
        self.refused += 1
        self.log.warning("refusing connection from %s: %s", _peer(conn), why)
        req = getattr(msg, "req", None)
        if req is not None and conn.is_open:
            conn.send(m.Error(req, errno.EPERM, f"authentication: {why}"))
        conn.close()


def _peer(conn: rpc.Connection) -> str:
    return f"{conn.peer[0]}:{conn.peer[1]}" if conn.peer else "?"
