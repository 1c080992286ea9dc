"""Finding the masters: one DNS name, one A record per master.

Every process (masters, chunkservers, mounts, tools) is configured with a single master
name instead of a list of addresses, as in MooseFS; adding or removing a master is a DNS
change, not a config change on every machine.  This module turns the name into addresses:

- `resolve` answers once.  With a `dns_server` it asks that server directly (dnspython,
  no search domains, no /etc/resolv.conf), so a test or the demo can point every process
  at its own loopback dnsmasq; without one it uses the system resolver, so /etc/hosts
  works.  Answers are sorted numerically and deduplicated: the same records in any order
  give the same list, and "127.0.1.9" sorts before "127.0.1.10".
- `MasterDirectory` keeps the last good answer and refreshes it in the background.  A DNS
  outage must never take a running master or chunkserver down with it, so a failed
  refresh is logged (once per distinct error) and the last good set stays in use.
- `own_address` tells a master which of the records is itself.

Only IPv4: the cluster runs on 127.0.0.0/8 aliases and plain IPv4 networks.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import ipaddress
import logging
import socket
import struct
import time
from typing import Awaitable, Callable, Iterable

import dns.asyncresolver
import dns.exception
import dns.resolver

log = logging.getLogger("elkfs.discovery")

DEFAULT_DNS_PORT = 53
SYSTEM_RESOLVER = ("", "system")
WILDCARD_HOSTS = ("", "*", "0.0.0.0")


class DiscoveryError(Exception):
    """The name gave no usable addresses; `reason` says why in words that stay the same
    while the cause does (the directory logs each distinct reason once)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, reason)
        self.name = name
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot resolve {self.name!r}: {self.reason}"


# ---------------------------------------------------------------- one-shot resolution


def sort_addresses(addresses: Iterable[str]) -> list[str]:
    """Deduplicated and in numeric order, so equal sets always compare equal."""
    return [str(a) for a in sorted({ipaddress.IPv4Address(a) for a in addresses})]


def parse_dns_server(text: str) -> tuple[str, int] | None:
    """`"IP"` or `"IP:PORT"` -> (ip, port); `""` or `"system"` -> None (system resolver).

    A host name is refused: the server that resolves names cannot itself need one.
    Raises ValueError with a message fit for a config error."""
    text = text.strip()
    if text.lower() in SYSTEM_RESOLVER:
        return None
    host, sep, port_text = text.partition(":")
    if ":" in port_text:
        raise ValueError(f"DNS server must be IPv4 'IP' or 'IP:PORT', got {text!r}")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"DNS server must be an IPv4 address, got {host!r}") from None
    if not sep:
        return host, DEFAULT_DNS_PORT
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"DNS server port must be 1-65535, got {port_text!r}")
    return host, int(port_text)


async def resolve(name: str, dns_server: str | None = None, timeout: float = 2.0) -> list[str]:
    """The IPv4 addresses of `name`, sorted and deduplicated (never empty).

    An IPv4 literal is returned as is.  `dns_server` is "IP" or "IP:PORT" (see
    `parse_dns_server`); None, "" or "system" use the system resolver.  Raises
    DiscoveryError on NXDOMAIN, no A records, timeout or an unreachable server."""
    try:
        return [str(ipaddress.IPv4Address(name))]
    except ValueError:
        pass
    if not name or ":" in name:
        raise DiscoveryError(name, "not a host name or IPv4 address")
    server = parse_dns_server(dns_server) if dns_server is not None else None
    if server is None:
        addresses = await _resolve_system(name, timeout)
    else:
        addresses = await _resolve_dns(name, server, timeout)
    return sort_addresses(addresses)


async def _resolve_system(name: str, timeout: float) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(name, None, family=socket.AF_INET, type=socket.SOCK_STREAM),
            timeout)
    except asyncio.TimeoutError:
        raise DiscoveryError(name, f"system resolver gave no answer within {timeout}s") from None
    except OSError as e:  # socket.gaierror: "Name or service not known", ...
        raise DiscoveryError(name, f"system resolver: {e.strerror or e}") from None
    if not infos:
        raise DiscoveryError(name, "system resolver: no IPv4 addresses")
    return [info[4][0] for info in infos]


async def _resolve_dns(name: str, server: tuple[str, int], timeout: float) -> list[str]:
    host, port = server
    where = f"{host}:{port}"
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = port
    resolver.lifetime = timeout
    resolver.timeout = timeout / 2  # one retry within the lifetime: UDP can be lost
    try:
        answer = await resolver.resolve(name, "A", search=False)
    except dns.resolver.NXDOMAIN:
        raise DiscoveryError(name, f"no such name (NXDOMAIN from {where})") from None
    except dns.resolver.NoAnswer:
        raise DiscoveryError(name, f"no A records (from {where})") from None
    except dns.exception.Timeout:
        # dnspython sends UDP from unconnected sockets, so a server that is down looks
        # exactly like a slow one: no ICMP "connection refused" ever reaches us.
        raise DiscoveryError(name, f"no answer from {where} within {timeout}s") from None
    except dns.resolver.NoNameservers as e:  # REFUSED, SERVFAIL, malformed answers
        errors = e.kwargs.get("errors") or []
        detail = errors[-1][3] if errors else "no usable answer"
        raise DiscoveryError(name, f"{where} answered {detail}") from None
    except dns.exception.DNSException as e:
        raise DiscoveryError(name, f"{where}: {e}") from None
    except OSError as e:
        raise DiscoveryError(name, f"{where} unreachable: {e.strerror or e}") from None
    return [record.address for record in answer]


# ---------------------------------------------------------------- which record is me


def local_addresses() -> set[str]:
    """This host's IPv4 interface addresses (in this network namespace).

    Read from the kernel's local routing table, which lists every address, secondary
    ones too; the per-interface ioctl only reports each interface's first address and is
    the fallback where /proc is not available."""
    try:
        with open("/proc/net/fib_trie", encoding="ascii") as f:
            found = parse_fib_trie(f.read())
        if found:
            return found
    except OSError:
        pass
    return _ioctl_addresses()


def parse_fib_trie(text: str) -> set[str]:
    """The `/32 host LOCAL` entries of /proc/net/fib_trie: one per local address.

    Each leaf prints as an address line (`|-- 127.0.0.1`) followed by its routes
    (`/32 host LOCAL`)."""
    found: set[str] = set()
    address = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("|--"):
            address = line[3:].strip()
        elif address is not None and line.split() == ["/32", "host", "LOCAL"]:
            found.add(address)
    return found


def _ioctl_addresses() -> set[str]:
    siocgifaddr = 0x8915
    found: set[str] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _index, ifname in socket.if_nameindex():
            request = struct.pack("256s", ifname.encode()[:15])
            try:
                reply = fcntl.ioctl(s.fileno(), siocgifaddr, request)
            except OSError:  # interface without an IPv4 address
                continue
            found.add(socket.inet_ntoa(reply[20:24]))
    return found


def own_address(candidates: Iterable[str], listen_hosts: Iterable[str],
                local: set[str] | None = None) -> str | None:
    """The master's own address among `candidates` (the name's A records), or None.

    A specific listen host is the answer if it is among the records: the master is
    reachable there and nowhere else.  With only wildcard listen hosts ("", "*",
    "0.0.0.0"), the answer is the one record that is a local address (`local`, by default
    `local_addresses()`).  Every 127.x address is local on Linux, so several 127.x records
    with a wildcard listen host are ambiguous; None tells the caller to say so."""
    candidates = sort_addresses(candidates)
    specific = {h for h in listen_hosts if h not in WILDCARD_HOSTS}
    if specific:
        matches = [c for c in candidates if c in specific]
    else:
        local = local_addresses() if local is None else local
        matches = [c for c in candidates
                   if c in local or ipaddress.IPv4Address(c).is_loopback]
    return matches[0] if len(matches) == 1 else None


# ---------------------------------------------------------------- the refreshed set

Resolver = Callable[[str], Awaitable[list[str]]]
ChangeCallback = Callable[[tuple[str, ...], tuple[str, ...], tuple[str, ...]], None]


class MasterDirectory:
    """The current master addresses for one name, refreshed every `refresh_s` seconds.

    `start()` waits for a first good answer (a process that has never found a master
    cannot do anything useful) for up to `start_timeout_s` (None: forever).  After that
    nothing is fatal: a failed refresh keeps the last good set, because masters do not
    move when DNS has a hiccup, and losing them would be worse than a stale list.  Each
    distinct failure is logged once, and recovery once, so a long outage is two lines,
    not one per refresh.

    `resolver`, `sleep` and `clock` are injectable so tests need neither DNS nor waits.
    """

    def __init__(self, name: str, dns_server: str | None = None, refresh_s: float = 5.0, *,
                 start_timeout_s: float | None = 30.0, query_timeout_s: float = 2.0,
                 resolver: Resolver | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if refresh_s <= 0:
            raise ValueError(f"refresh_s must be positive, got {refresh_s}")
        if dns_server is not None:
            parse_dns_server(dns_server)  # a bad value fails here, not in the task
        self.name = name
        self.refresh_s = refresh_s
        self.start_timeout_s = start_timeout_s
        self._resolve = resolver or functools.partial(resolve, dns_server=dns_server,
                                                      timeout=query_timeout_s)
        self._sleep = sleep
        self._clock = clock
        self._addresses: tuple[str, ...] = ()
        self._callbacks: list[ChangeCallback] = []
        self._reported: set[str] = set()  # failures logged since the last good answer
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    @property
    def addresses(self) -> tuple[str, ...]:
        """The last good set, sorted; empty only before `start()` has succeeded."""
        return self._addresses

    def on_change(self, callback: ChangeCallback) -> None:
        """Call `callback(added, removed, all)` whenever the set changes, including the
        first set found by `start()` (register before it to hear that one)."""
        self._callbacks.append(callback)

    async def start(self) -> None:
        """Resolve until a first answer (retrying every second, or every `refresh_s` if
        shorter), then refresh in the background.

        Raises the last DiscoveryError if no answer came within `start_timeout_s`."""
        if self._task is not None:
            raise RuntimeError("MasterDirectory already started")
        deadline = None if self.start_timeout_s is None else self._clock() + self.start_timeout_s
        retry_s = min(1.0, self.refresh_s)
        while True:
            try:
                await self.refresh(raise_errors=True)
                break
            except DiscoveryError as e:
                if deadline is not None and self._clock() >= deadline:
                    raise DiscoveryError(self.name, f"{e.reason} (still failing after "
                                                    f"{self.start_timeout_s}s)") from None
            await self._sleep(retry_s)
        self._task = asyncio.create_task(self._refresh_loop(), name=f"dns {self.name}")

    def stop(self) -> None:
        """Stop refreshing (the last set stays readable).  Safe to call twice."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def __aenter__(self) -> MasterDirectory:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    async def refresh(self, raise_errors: bool = False) -> bool:
        """Resolve once now; True if the set changed.  A failure is logged and keeps the
        last good set (and is raised too if `raise_errors`)."""
        async with self._lock:
            try:
                found = await self._resolve(self.name)
                if not found:
                    raise DiscoveryError(self.name, "no addresses")
            except DiscoveryError as e:
                self._note_failure(e.reason)
                if raise_errors:
                    raise
                return False
            new = tuple(sort_addresses(found))
            if self._reported:
                log.info("master name %s resolves again: %s", self.name, ", ".join(new))
                self._reported.clear()
            return self._update(new)

    async def _refresh_loop(self) -> None:
        while True:
            await self._sleep(self.refresh_s)
            try:
                await self.refresh()
            except Exception as e:  # a bug in a resolver: say so, but keep the masters
                self._note_failure(f"{type(e).__name__}: {e}", exc_info=True)

    def _note_failure(self, reason: str, exc_info: bool = False) -> None:
        if reason in self._reported:
            return
        self._reported.add(reason)
        kept = ", ".join(self._addresses) or "none yet"
        log.warning("cannot resolve master name %s: %s (keeping: %s)", self.name, reason,
                    kept, exc_info=exc_info)

    def _update(self, new: tuple[str, ...]) -> bool:
        old = self._addresses
        if new == old:
            return False
        self._addresses = new
        added = tuple(a for a in new if a not in old)
        removed = tuple(a for a in old if a not in new)
        log.info("master name %s: %s (added %s, removed %s)", self.name, ", ".join(new),
                 ", ".join(added) or "none", ", ".join(removed) or "none")
        for callback in list(self._callbacks):
            try:
                callback(added, removed, new)
            except Exception:  # one broken listener must not starve the others
                log.exception("master directory listener %r failed", callback)
        return True
