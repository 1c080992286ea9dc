"""The pure parts of cluster security: the handshake's proofs, chunk tokens, the block
checksums a client checks, and the table of copies' own write reports."""

import ast
import os
import zlib

import pytest

from elkfs.master.writereports import WriteReports
from elkfs.proto.auth import EXPIRED, READ, TOKEN_SIZE, WRITE, ClusterKey
from elkfs.proto.checksum import first_bad_block
from elkfs.proto.layout import BLOCK_SIZE


def test_proofs_need_the_code_and_both_nonces():
    key, other = ClusterKey("s3cret"), ClusterKey("guess")
    ni, na = os.urandom(16), os.urandom(16)
    assert key.initiator_proven(ni, na, key.initiator_proof(ni, na))
    assert key.acceptor_proven(ni, na, key.acceptor_proof(ni, na))
    assert not key.initiator_proven(ni, na, other.initiator_proof(ni, na))
    # a recorded proof is no good with another nonce of either side
    assert not key.initiator_proven(ni, os.urandom(16), key.initiator_proof(ni, na))
    assert not key.acceptor_proven(os.urandom(16), na, key.acceptor_proof(ni, na))
    # neither proof passes for the other (no reflection)
    assert not key.initiator_proven(ni, na, key.acceptor_proof(ni, na))
    assert not key.acceptor_proven(ni, na, key.initiator_proof(ni, na))


def test_tokens_allow_exactly_their_chunk_version_mode_and_time():
    key = ClusterKey("s3cret")
    token = key.token(7, 3, READ, expiry=1000)
    assert len(token) == TOKEN_SIZE
    assert key.token_problem(token, 7, 3, READ, now=999.5) is None
    assert key.token_problem(token, 7, 3, READ, now=1001) == EXPIRED
    for args in [(8, 3, READ), (7, 4, READ), (7, 3, WRITE)]:
        assert "not valid" in key.token_problem(token, *args, now=0)
    assert "not valid" in ClusterKey("other").token_problem(token, 7, 3, READ, now=0)
    assert key.token_problem(b"", 7, 3, READ, now=0) == "no chunk token"
    assert "malformed" in key.token_problem(token[:-1], 7, 3, READ, now=0)
    # the expiry is covered by the MAC: pushing it later breaks the token
    later = (2000).to_bytes(8, "big") + token[8:]
    assert "not valid" in key.token_problem(later, 7, 3, READ, now=0)


def test_the_membership_key_and_the_token_key_differ():
    key = ClusterKey("s3cret")
    assert key.token(1, 1, READ, 5)[8:] not in key.initiator_proof(b"a" * 16, b"b" * 16)
    assert not ClusterKey("").enabled and key.enabled


def test_first_bad_block_is_zlibs_crc32_per_block():
    data = os.urandom(3 * BLOCK_SIZE)
    crcs = b"".join(zlib.crc32(data[i:i + BLOCK_SIZE]).to_bytes(4, "big")
                    for i in range(0, len(data), BLOCK_SIZE))
    assert first_bad_block(data, crcs) is None
    bad = bytearray(data)
    bad[2 * BLOCK_SIZE + 5] ^= 1
    assert first_bad_block(bad, crcs) == 2
    assert first_bad_block(data, crcs[:8]) == 0  # CRCs missing: not accepted


def test_write_reports_are_kept_for_a_while_then_forgotten():
    reports = WriteReports(keep_s=10)
    reports.add(0.0, 5, 2, b"a")
    reports.add(1.0, 5, 2, b"b")
    reports.add(1.0, 6, 1, b"a")
    assert reports.reporters(5, 2) == {b"a", b"b"} and reports.reporters(5, 3) == set()
    reports.forget(6, 1)
    assert reports.reporters(6, 1) == set()
    reports.add(20.0, 9, 1, b"c")  # older than keep_s: gone
    assert reports.reporters(5, 2) == set() and reports.reporters(9, 1) == {b"c"}
    assert len(reports.done) == 1


@pytest.mark.parametrize("module", ["elkfs/proto/auth.py", "elkfs/proto/checksum.py",
                                    "elkfs/master/writereports.py"])
def test_pure_cores_import_no_io(module):
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    tree = ast.parse(open(os.path.join(root, module)).read())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and not n.level}
    assert not imported & {"asyncio", "time", "random", "socket", "os"}
