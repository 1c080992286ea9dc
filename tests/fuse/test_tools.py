"""The MooseFS tools on paths inside a mount: text as MooseFS prints it, and --json."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

NET = "127.0.34"
BIN = os.path.dirname(sys.executable)
MiB = 1 << 20


def tool(*args: str, ok: bool = True) -> str:
    r = subprocess.run([os.path.join(BIN, args[0]), *args[1:]], capture_output=True, text=True,
                       timeout=60)
    if ok:
        assert r.returncode == 0, r.stderr
    return r.stdout if ok else r.stderr


def test_goals(d):
    f = os.path.join(d, "f")
    with open(f, "wb") as fh:
        fh.write(b"x" * 1000)
    os.mkdir(os.path.join(d, "sub"))
    with open(os.path.join(d, "sub", "g"), "wb") as fh:
        fh.write(b"y")
    assert tool("mfsgetgoal", f) == f"{f}: 2\n"
    assert tool("mfssetgoal", "3", f) == f"{f}: 3\n"
    assert tool("mfsgetgoal", f) == f"{f}: 3\n"
    out = tool("mfssetgoal", "-r", "1", d)
    assert re.search(r"inodes with goal changed:\s+4\n", out), out
    out = tool("mfsgetgoal", "-r", d)
    assert re.search(r"files with goal\s+1 :\s+2\n", out), out
    assert re.search(r"directories with goal\s+1 :\s+2\n", out), out
    doc = json.loads(tool("mfsgetgoal", "--json", f, os.path.join(d, "sub")))
    assert [x["goal"] for x in doc] == [1, 1]
    assert "not inside an ElkFS mount" in tool("mfsgetgoal", "/tmp", ok=False)


def test_fileinfo_checkfile_dirinfo(mc, d):
    f = os.path.join(d, "data")
    with open(f, "wb") as fh:
        fh.write(os.urandom(MiB + 5))
    tool("mfssetgoal", "2", f)
    out = tool("mfsfileinfo", f)
    assert out.startswith(f"{f}:\n\tchunk 0: ")
    copies = re.findall(r"copy \d: ([0-9.]+):9422 \(status:VALID\)", out)
    assert len(copies) == 2 and all(c.startswith(mc.cluster.net + ".") for c in copies)
    doc = json.loads(tool("mfsfileinfo", "--json", f))[0]
    assert len(doc["chunks"]) == 1 and len(doc["chunks"][0]["copies"]) == 2
    assert tool("mfscheckfile", f) == f"{f}:\n chunks with 2 copies: 1\n"
    assert json.loads(tool("mfscheckfile", "--json", f))[0]["chunks_with_copies"] == {"2": 1}
    empty = os.path.join(d, "empty")
    open(empty, "w").close()
    assert "no chunks" in tool("mfsfileinfo", empty)
    out = tool("mfsdirinfo", d)
    assert re.search(r"inodes:\s+3\n", out) and re.search(r"directories:\s+1\n", out)
    assert re.search(r"files:\s+2\n", out) and re.search(r"chunks:\s+1\n", out)
    assert re.search(rf"length:\s+{MiB + 5}\n", out)
    doc = json.loads(tool("mfsdirinfo", "--json", d))[0]
    assert doc["files"] == 2 and doc["length"] == MiB + 5
    assert doc["realsize"] == 2 * doc["size"] and doc["size"] >= MiB + 5


def test_mfscli(mc, d):
    out = tool("mfscli", d)
    assert "master info:" in out and "chunk servers:" in out and "metadata servers:" in out
    for cs in mc.cluster.chunkservers:
        assert re.search(rf"{re.escape(cs.host)}:9422\s+connected", out), out
    assert f"{mc.cluster.master_host}:9421" in out
    doc = json.loads(tool("mfscli", "--json", "-SCS", "-SIM", d))
    assert len(doc["chunkservers"]) == 3 and all(s["connected"] for s in doc["chunkservers"])
    assert doc["masters"][0]["state"] == "LEADER"
    host, port = mc.cluster.master_addr
    doc = json.loads(tool("mfscli", "-H", host, "-P", str(port), "--json", "-SIG"))
    assert doc["info"]["total_bytes"] > 0 and "chunkservers" not in doc


def test_tools_leave_no_session_behind(mc, d):
    """Each tool run ends its own session when it exits (MooseFS tools leave none)."""
    import asyncio
    import json as _json

    from elkfs.client.client import Client
    from elkfs.proto import messages as msgs

    async def sessions() -> int:
        async with await Client.connect(**mc.cluster.client_args()) as c:
            return _json.loads((await c.op(msgs.ClusterInfo())).text)["sessions"]

    f = os.path.join(d, "f")
    with open(f, "w") as fh:
        fh.write("x")
    before = asyncio.run(sessions())
    for _ in range(3):
        tool("mfsgetgoal", f)
        tool("mfsfileinfo", f)
        tool("mfscli", d)
    assert asyncio.run(sessions()) == before
