"""mfsgettrashtime / mfssettrashtime / mfsmakesnapshot on paths inside a real mount."""

import json
import os
import subprocess
import sys

NET = "127.0.35"
CHUNKSERVERS = 2
BIN = os.path.dirname(sys.executable)


def tool(*args, check=True):
    out = subprocess.run([os.path.join(BIN, args[0]), *args[1:]], capture_output=True,
                         text=True, timeout=60)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def test_trashtime_set_get_recursive(d):
    os.makedirs(os.path.join(d, "sub"))
    with open(os.path.join(d, "sub", "f"), "w") as f:
        f.write("x")
    assert tool("mfssettrashtime", "-r", "3600", d).stdout.strip() == f"{d}: 3600"
    assert tool("mfsgettrashtime", os.path.join(d, "sub", "f")).stdout.strip() == \
        f"{os.path.join(d, 'sub', 'f')}: 3600"
    summary = json.loads(tool("mfsgettrashtime", "-r", "--json", d).stdout)
    assert summary[0]["files"] == {"3600": 1} and summary[0]["directories"] == {"3600": 2}
    # New entries inherit the directory's trash time.
    with open(os.path.join(d, "sub", "g"), "w"):
        pass
    assert tool("mfsgettrashtime", os.path.join(d, "sub", "g")).stdout.strip().endswith(": 3600")
    assert tool("mfssettrashtime", "-5", d, check=False).returncode != 0


def test_makesnapshot_file_and_tree_copy_on_write(d):
    src = os.path.join(d, "tree")
    os.makedirs(os.path.join(src, "inner"))
    blobs = {}
    for i in range(5):
        path = os.path.join(src, "inner" if i % 2 else "", f"f{i}")
        blobs[path] = os.urandom(100_000 + i)
        with open(path, "wb") as f:
            f.write(blobs[path])
    tool("mfsmakesnapshot", src, os.path.join(d, "copy"))
    tool("mfsmakesnapshot", os.path.join(src, "f0"), os.path.join(d, "f0-copy"))
    for path, blob in blobs.items():
        copy = path.replace(src, os.path.join(d, "copy"), 1)
        with open(copy, "rb") as f:
            assert f.read() == blob
    # Writing the copy leaves the original as it was.
    with open(os.path.join(d, "f0-copy"), "r+b") as f:
        f.write(b"changed")
    with open(os.path.join(src, "f0"), "rb") as f:
        assert f.read() == blobs[os.path.join(src, "f0")]
    with open(os.path.join(d, "f0-copy"), "rb") as f:
        assert f.read(7) == b"changed"
    bad = tool("mfsmakesnapshot", os.path.join(d, "missing"), os.path.join(d, "x"), check=False)
    assert bad.returncode == 1 and "missing" in bad.stderr
