"""Passwords of exports (mfsexports.cfg `password=` / `md5pass=`), proven by challenge and
response so that neither the password nor its MD5 ever crosses the wire: the master sends a
random challenge, the client answers HMAC-SHA256(key = MD5(password), challenge).

A session registered with a password also shares a secret with the master that never
crosses the wire either: its *tool token*, HMAC-SHA256(key = MD5(password), TOOL_LABEL +
challenge), which both sides compute from what they already have. A mount shows it to root
only (`.mastertoken`); the client tools prove they hold it (`password_proof` with the token
as key, on a challenge of their own) to register a session attached to the mount's, with
its rights (docs/security.md)."""

from __future__ import annotations

import hashlib
import hmac


def password_digest(password: bytes) -> bytes:
    """What the master keeps of a password (MooseFS's md5pass)."""
    return hashlib.md5(password).digest()


def password_proof(digest: bytes, challenge: bytes) -> bytes:
    """The client's answer to the master's challenge: proves it knows the password."""
    return hmac.new(digest, challenge, hashlib.sha256).digest()


TOOL_LABEL = b"elkfs tool token\0"


def tool_token(digest: bytes, challenge: bytes) -> bytes:
    """The secret a session registered with `digest` on `challenge` shares with the master
    (different from the proof: knowing the proof tells nothing of it)."""
    return hmac.new(digest, TOOL_LABEL + challenge, hashlib.sha256).digest()
