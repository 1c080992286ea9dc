"""What the cluster's shared secret (`AUTH_CODE`) proves: membership, and access to chunks.

Pure functions of the secret, no I/O (the handshake shell is `handshake.py`).

Two keys are derived from the code, one per purpose, so a value made for one can never
pass for the other:

- **Membership.** A master or chunkserver connecting to a master's port proves it knows
  the code, and the master proves it back, by HMAC over both sides' fresh nonces:

      initiator -> acceptor   AuthHello(nonce_i)
      acceptor  -> initiator  AuthChallenge(nonce_a, HMAC(k, "accept" | nonce_i | nonce_a))
      initiator -> acceptor   AuthProof(HMAC(k, "connect" | nonce_i | nonce_a))

  Each side's proof covers the other side's nonce, made for this connection only, so a
  recorded exchange replayed on another connection fails; the two labels keep either
  proof from being reflected back as the other.

- **Chunk tokens.** With each chunk location the master hands the client a token: an
  expiry (wall-clock seconds) and HMAC(k', chunk id | version | mode | expiry), which the
  chunkservers check on every read, write and replication read. Every master derives the
  same key from the same code, so a token of any leader is good on every chunkserver.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

NONCE_SIZE = 16
READ, WRITE = 1, 2  # token modes
MODE_NAMES = {READ: "read", WRITE: "write"}

_ACCEPT = b"accept"
_CONNECT = b"connect"
_TOKEN = struct.Struct(">QQBQ")  # chunk id, version, mode, expiry
_EXPIRY = struct.Struct(">Q")
TOKEN_MAC = 16  # bytes of the HMAC kept in a token
TOKEN_SIZE = _EXPIRY.size + TOKEN_MAC


def _derive(code: str, purpose: bytes) -> bytes:
    return hmac.new(code.encode(), b"elkfs " + purpose, hashlib.sha256).digest()


class ClusterKey:
    """The keys derived from one AUTH_CODE; `enabled` is False for an empty code (the
    cluster then runs without authentication and without tokens)."""

    __slots__ = ("enabled", "_member", "_tokens")

    def __init__(self, code: str):
        self.enabled = bool(code)
        self._member = _derive(code, b"cluster membership")
        self._tokens = _derive(code, b"chunk tokens")

    # ------------------------------------------------------------ membership

    def _proof(self, label: bytes, nonce_i: bytes, nonce_a: bytes) -> bytes:
        return hmac.new(self._member, label + nonce_i + nonce_a, hashlib.sha256).digest()

    def acceptor_proof(self, nonce_i: bytes, nonce_a: bytes) -> bytes:
        return self._proof(_ACCEPT, nonce_i, nonce_a)

    def initiator_proof(self, nonce_i: bytes, nonce_a: bytes) -> bytes:
        return self._proof(_CONNECT, nonce_i, nonce_a)

    def acceptor_proven(self, nonce_i: bytes, nonce_a: bytes, proof: bytes) -> bool:
        return hmac.compare_digest(self.acceptor_proof(nonce_i, nonce_a), proof)

    def initiator_proven(self, nonce_i: bytes, nonce_a: bytes, proof: bytes) -> bool:
        return hmac.compare_digest(self.initiator_proof(nonce_i, nonce_a), proof)

    # ------------------------------------------------------------ chunk tokens

    def _mac(self, chunk_id: int, version: int, mode: int, expiry: int) -> bytes:
        body = _TOKEN.pack(chunk_id & (2**64 - 1), version & (2**64 - 1), mode, expiry)
        return hmac.new(self._tokens, body, hashlib.sha256).digest()[:TOKEN_MAC]

    def token(self, chunk_id: int, version: int, mode: int, expiry: int) -> bytes:
        """A token for `mode` access to this version of the chunk until `expiry`."""
        return _EXPIRY.pack(expiry) + self._mac(chunk_id, version, mode, expiry)

    def token_problem(self, token: bytes, chunk_id: int, version: int, mode: int,
                      now: float) -> str | None:
        """Why `token` does not allow `mode` access to the chunk at wall time `now`
        (None: it does). An expired token is told apart (the client asks for a fresh one)."""
        if not token:
            return "no chunk token"
        if len(token) != TOKEN_SIZE:
            return "malformed chunk token"
        expiry = _EXPIRY.unpack_from(token)[0]
        if not hmac.compare_digest(self._mac(chunk_id, version, mode, expiry),
                                   token[_EXPIRY.size:]):
            return (f"chunk token not valid for {MODE_NAMES.get(mode, mode)} of chunk "
                    f"{chunk_id:016X} version {version}")
        if expiry < now:
            return EXPIRED
        return None


EXPIRED = "chunk token expired"
