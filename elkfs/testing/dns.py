"""A real DNS server on a loopback address, for the tests and the demo.

The masters are found through DNS (one A record per master, see `elkfs.discovery`), so a
local cluster needs a DNS server whose records a test can change while everything runs.
`LocalDNS` runs Debian's dnsmasq (package dnsmasq-base) in the foreground as a child
process, bound to one 127.x address and answering only from a hosts file it writes:

- nothing from the host leaks in or out: no /etc/dnsmasq.conf, /etc/hosts or
  /etc/resolv.conf, no upstream servers, no DHCP, and it refuses to bind outside
  127.0.0.0/8; names it does not hold get NXDOMAIN (`--local=/#/`), not REFUSED;
- `--local-ttl=0`: nobody caches an answer, so a change is seen on the next query;
- a change rewrites the hosts file atomically and sends SIGHUP, on which dnsmasq clears
  its cache and re-reads `--addn-hosts` (an earlier experiment found that `--hostsdir`
  does not reliably drop removed entries).  The reload is asynchronous: `wait_until` polls until
  the server answers what it was told;
- dnsmasq runs as the calling user (`--user`): as root it would otherwise switch to an
  unprivileged user that cannot read a hosts file under a private (0700) test directory;
- it dies on a SIGHUP that arrives before it has installed its handlers, so `start()`
  only returns once the server answers a probe record of its own (which also proves the
  answer came from this dnsmasq, not from another server already on the address).

The hosts file in `directory` is the state: another `LocalDNS` on the same directory (the
demo's `stop` runs in a new process) sees the same records and finds the process through
the pid file.
"""

from __future__ import annotations

import asyncio
import grp
import ipaddress
import os
import pwd
import secrets
import signal
import subprocess
import time

import dns.exception
import dns.message
import dns.query
import dns.rcode

from ..discovery import DiscoveryError, resolve, sort_addresses

DNSMASQ = "/usr/sbin/dnsmasq"
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
PROBE_DOMAIN = ".localdns.invalid"  # start()'s readiness probe; never a real name


class LocalDNS:
    """dnsmasq serving A records from `directory`/hosts on `address`:`port`."""

    def __init__(self, directory: str, address: str = "127.0.1.53", port: int = 53,
                 binary: str = DNSMASQ) -> None:
        try:
            loopback = ipaddress.IPv4Address(address) in LOOPBACK
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"LocalDNS binds only to 127.0.0.0/8 addresses, not {address!r}")
        if not 0 < port < 65536:
            raise ValueError(f"port must be 1-65535, got {port}")
        self.directory = os.path.abspath(directory)
        self.address, self.port, self.binary = address, port, binary
        self.hosts_path = os.path.join(self.directory, "hosts")
        self.log_path = os.path.join(self.directory, "dnsmasq.log")
        self.stderr_path = os.path.join(self.directory, "dnsmasq.stderr")
        self.pid_path = os.path.join(self.directory, "dnsmasq.pid")
        self._probe = secrets.token_hex(6) + PROBE_DOMAIN
        self._proc: subprocess.Popen | None = None

    @property
    def server(self) -> str:
        """"IP:PORT", as `elkfs.discovery.resolve` and the DNS config key take it."""
        return f"{self.address}:{self.port}"

    # ------------------------------------------------------------ records

    def records(self) -> dict[str, tuple[str, ...]]:
        """Name -> sorted addresses, as the hosts file holds them now."""
        by_name: dict[str, set[str]] = {}
        try:
            with open(self.hosts_path, encoding="ascii") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return {}
        for line in lines:
            fields = line.split("#", 1)[0].split()
            for name in fields[1:]:
                if not name.endswith(PROBE_DOMAIN):
                    by_name.setdefault(name, set()).add(fields[0])
        return {name: tuple(sort_addresses(addrs)) for name, addrs in by_name.items()}

    def set_records(self, name: str, addresses: list[str] | tuple[str, ...]) -> None:
        """Make `name` answer exactly `addresses` (none: NXDOMAIN).  Returns before
        dnsmasq has reloaded; `wait_until` waits for that."""
        if not name or any(c.isspace() or c == "#" for c in name):
            raise ValueError(f"not a DNS name: {name!r}")
        records = self.records()
        records[name] = tuple(sort_addresses(addresses))  # ValueError if not IPv4
        if not records[name]:
            del records[name]
        self._write(records)
        self._signal(signal.SIGHUP)

    def add_record(self, name: str, address: str) -> None:
        self.set_records(name, self.records().get(name, ()) + (address,))

    def remove_record(self, name: str, address: str) -> None:
        self.set_records(name, [a for a in self.records().get(name, ()) if a != address])

    def _write(self, records: dict[str, tuple[str, ...]]) -> None:
        lines = ["# written by elkfs.testing.dns; reloaded by dnsmasq on SIGHUP",
                 f"127.0.0.1 {self._probe}"]
        lines += [f"{addr} {name}" for name in sorted(records) for addr in records[name]]
        os.makedirs(self.directory, exist_ok=True)
        tmp = self.hosts_path + ".tmp"
        with open(tmp, "w", encoding="ascii") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, self.hosts_path)  # dnsmasq never reads half a file

    # ------------------------------------------------------------ process

    def start(self, timeout: float = 10.0) -> None:
        """Start dnsmasq and wait until it answers."""
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError(f"LocalDNS on {self.server} is already running")
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(f"{self.binary} not found: install dnsmasq-base (make setup)")
        self._write(self.records())
        with open(self.stderr_path, "wb") as err:
            self._proc = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=err,
                                          start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._answers_probe():
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"dnsmasq for {self.server} exited: {self._stderr()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"dnsmasq for {self.server} not answering after {timeout}s")
            time.sleep(0.02)

    def _command(self) -> list[str]:
        return [
            self.binary, "--keep-in-foreground", "--conf-file=/dev/null",
            "--no-resolv", "--no-hosts", "--local=/#/",
            "--bind-interfaces", f"--listen-address={self.address}", f"--port={self.port}",
            "--local-ttl=0", f"--addn-hosts={self.hosts_path}",
            f"--log-facility={self.log_path}", f"--pid-file={self.pid_path}",
            f"--user={pwd.getpwuid(os.getuid()).pw_name}",
            f"--group={grp.getgrgid(os.getgid()).gr_name}",
        ]

    def _answers_probe(self) -> bool:
        query = dns.message.make_query(self._probe, "A")
        try:
            reply = dns.query.udp(query, self.address, timeout=0.1, port=self.port)
        except (dns.exception.DNSException, OSError):
            return False
        return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)

    def _stderr(self) -> str:
        try:
            with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
                return f.read().strip() or "no message"
        except OSError:
            return "no message"

    def pid(self) -> int | None:
        """The running dnsmasq's pid: our child, or the one the pid file names if it
        serves this directory's hosts file (so a pid reused by another process is never
        signalled)."""
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        try:
            with open(self.pid_path) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if f"--addn-hosts={self.hosts_path}".encode() in args else None

    def _signal(self, sig: int) -> None:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate dnsmasq and wait until it is gone.  Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        else:  # started by another LocalDNS, perhaps in another process
            pid = self.pid()
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while self.pid() is not None:
                    if time.monotonic() > deadline:
                        os.kill(pid, signal.SIGKILL)
                        deadline = float("inf")
                    time.sleep(0.02)
        try:
            os.unlink(self.pid_path)  # dnsmasq removes it itself, except after SIGKILL
        except FileNotFoundError:
            pass

    def __enter__(self) -> LocalDNS:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ waiting

    async def wait_until(self, name: str, addresses: list[str] | tuple[str, ...],
                         timeout: float = 10.0) -> None:
        """Poll the server until `name` answers exactly `addresses` (none: NXDOMAIN)."""
        want = sort_addresses(addresses)
        deadline = time.monotonic() + timeout
        while True:
            try:
                got: list[str] | str = await resolve(name, self.server, timeout=1.0)
            except DiscoveryError as e:
                got = e.reason
                if not want and "NXDOMAIN" in e.reason:
                    return
            if got == want:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} on {self.server}: wanted {want or 'NXDOMAIN'}, "
                                   f"last answer {got}")
            await asyncio.sleep(0.02)
