"""Faults and waits for tests and benchmarks on a local cluster: iptables cuts between
loopback addresses, waiting for a condition, and "the masters have converged"."""

from __future__ import annotations

import subprocess
import time


class Firewall:
    """Drops traffic between loopback addresses with iptables (INPUT chain), and removes
    every rule it added, even after a failed test. The rules of one cut go in together
    (`iptables-restore --noflush`, one transaction): rules added one by one would make a
    partition that grows over a few hundred milliseconds, a different fault."""

    added: list[tuple[str, str]] = []

    @classmethod
    def cut(cls, pairs: list[tuple[str, str]]) -> None:
        """Drop packets from `src` to `dst` for each (src, dst) pair, all at once."""
        lines = ["*filter"]
        for src, dst in pairs:
            assert src.startswith("127.") and dst.startswith("127.")
            lines.append(f"-I INPUT -s {src} -d {dst} -j DROP")
        lines.append("COMMIT")
        subprocess.run(["iptables-restore", "-w", "--noflush"], input="\n".join(lines) + "\n",
                       text=True, check=True)
        cls.added.extend(pairs)

    @classmethod
    def isolate(cls, host: str, others: list[str], both_ways: bool = True) -> None:
        """Cut `host` off from `others` (only what it receives with `both_ways=False`)."""
        pairs = [(other, host) for other in others]
        if both_ways:
            pairs += [(host, other) for other in others]
        cls.cut(pairs)

    @classmethod
    def heal_all(cls) -> None:
        while cls.added:
            src, dst = cls.added.pop()
            subprocess.run(["iptables", "-w", "-D", "INPUT", "-s", src, "-d", dst, "-j",
                            "DROP"], check=False)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def converged(cluster, quiet: bool = True) -> bool:
    """Every running master answers, one leads, the others follow in sync (members of
    the in-sync record, not catching up), and, when nothing is writing (`quiet`), all
    hold the same metadata version."""
    views = [cluster.status(d) for d in cluster.masters if d.pid() is not None]
    if not views or any(v is None for v in views):
        return False
    if any(v["state"] not in ("LEADER", "FOLLOWER") for v in views):
        return False
    leaders = [v for v in views if v["state"] == "LEADER"]
    if not quiet:
        in_sync = [m for m in leaders[0]["masters"] if m["in_sync"]] if leaders else []
        return len(leaders) == 1 and len(in_sync) == len(views)
    versions = {v["commit"] for v in views}
    return len(leaders) == 1 and len(versions) == 1 and \
        all(v["metadata_version"] == v["commit"] for v in views)
