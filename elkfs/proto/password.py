"""Passwords of exports (mfsexports.cfg `password=` / `md5pass=`), proven by challenge and
response so that neither the password nor its MD5 ever crosses the wire: the master sends a
random challenge, the client answers HMAC-SHA256(key = MD5(password), challenge)."""

from __future__ import annotations

import hashlib
import hmac


def password_digest(password: bytes) -> bytes:
    """What the master keeps of a password (MooseFS's md5pass)."""
    return hashlib.md5(password).digest()


def password_proof(digest: bytes, challenge: bytes) -> bytes:
    """The client's answer to the master's challenge: proves it knows the password."""
    return hmac.new(digest, challenge, hashlib.sha256).digest()
