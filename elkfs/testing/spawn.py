"""Starting daemons from a process that holds no file of a mount.

A test process that has a file open on an ElkFS mount must not fork and exec daemons
itself: the child closes its inherited copy of that file (close_fds, or close-on-exec in
execve), and every close of a FUSE file sends FLUSH, which waits for the file's pending
writes. If those writes wait for the very chunkserver being started, the start waits for
the writes to give up (mfsioretries later). So the launcher asks a `Spawner`, a small
process started before any mount exists, to start and signal daemons; `SpawnedProcess`
gives the test the part of `subprocess.Popen` it uses (pid, poll, wait, send_signal,
kill).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

_SERVER = r"""
import json, os, signal, subprocess, sys
procs = {}
for line in sys.stdin:
    req = json.loads(line)
    if "spawn" in req:
        with open(req["stderr"], "ab") as err:
            p = subprocess.Popen(req["spawn"], stdout=subprocess.DEVNULL, stderr=err,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        procs[p.pid] = p
        out = {"pid": p.pid}
    elif "poll" in req:
        p = procs.get(req["poll"])
        out = {"returncode": p.poll() if p else -1}
    elif "signal" in req:
        p = procs.get(req["signal"])
        if p is not None and p.poll() is None:
            p.send_signal(req["sig"])
        out = {}
    else:
        out = {"error": "unknown request"}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""


class Spawner:
    """One helper process per launcher; requests are serialized by a lock."""

    def __init__(self):
        self._proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, bufsize=1)
        self._lock = threading.Lock()

    def _ask(self, req: dict) -> dict:
        with self._lock:
            self._proc.stdin.write(json.dumps(req) + "\n")
            self._proc.stdin.flush()
            return json.loads(self._proc.stdout.readline())

    def spawn(self, argv: list[str], stderr_path: str) -> "SpawnedProcess":
        return SpawnedProcess(self, self._ask({"spawn": argv, "stderr": stderr_path})["pid"])

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait(10)


class SpawnedProcess:
    def __init__(self, spawner: Spawner, pid: int):
        self.spawner = spawner
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.spawner._ask({"poll": self.pid})["returncode"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.spawner._ask({"signal": self.pid, "sig": int(sig)})

    def kill(self) -> None:
        import signal

        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        import signal

        self.send_signal(signal.SIGTERM)
