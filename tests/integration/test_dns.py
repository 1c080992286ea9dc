"""elkfs.discovery against a real dnsmasq (elkfs.testing.dns.LocalDNS) on 127.0.71.x, a
loopback net no other test uses.

Deadlines are generous (a busy 2-core machine must not fail these); what is asserted is
the order of events and what was logged, never how fast it happened.
"""

import asyncio
import logging
import os
import socket
import time

import pytest

from elkfs.discovery import DiscoveryError, MasterDirectory, resolve
from elkfs.testing.dns import LocalDNS

SERVER = "127.0.71.53"
NAME = "mfsmaster.test"
M1, M2, M3, M4 = "127.0.71.10", "127.0.71.11", "127.0.71.12", "127.0.71.13"


@pytest.fixture
def local_dns(tmp_path):
    server = LocalDNS(str(tmp_path / "dns"), SERVER)
    server.set_records(NAME, [M2, M1])
    server.start()
    yield server
    server.stop()


async def wait_for(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting for {what} after {timeout}s")
        await asyncio.sleep(0.02)


def messages(caplog, level):
    return [r.getMessage() for r in caplog.records
            if r.name == "elkfs.discovery" and r.levelno == level]


# ---------------------------------------------------------------- resolve


async def test_resolves_every_record_in_numeric_order(local_dns):
    assert await resolve(NAME, SERVER) == [M1, M2]
    local_dns.set_records(NAME, ["127.0.71.100", "127.0.71.9", M1])
    await local_dns.wait_until(NAME, ["127.0.71.9", M1, "127.0.71.100"])
    assert await resolve(NAME, f"{SERVER}:53") == ["127.0.71.9", M1, "127.0.71.100"]


async def test_an_unknown_name_is_nxdomain(local_dns):
    with pytest.raises(DiscoveryError, match="NXDOMAIN") as e:
        await resolve("nobody.test", SERVER)
    assert e.value.name == "nobody.test"
    local_dns.set_records(NAME, [])
    await local_dns.wait_until(NAME, [])
    with pytest.raises(DiscoveryError, match="NXDOMAIN"):
        await resolve(NAME, SERVER)


async def test_a_server_on_another_port(tmp_path):
    with LocalDNS(str(tmp_path / "dns"), "127.0.71.54", port=5353) as server:
        server.set_records(NAME, [M3])
        await server.wait_until(NAME, [M3])
        assert await resolve(NAME, "127.0.71.54:5353") == [M3]


async def test_a_server_that_is_not_there_is_a_timeout():
    started = time.monotonic()
    with pytest.raises(DiscoveryError, match=r"no answer from 127.0.71.55:53 within 0.3s"):
        await resolve(NAME, "127.0.71.55", timeout=0.3)
    assert time.monotonic() - started < 5.0


async def test_the_system_resolver_reads_etc_hosts():
    assert await resolve("localhost") == ["127.0.0.1"]
    with pytest.raises(DiscoveryError, match="system resolver"):
        await resolve("no-such-host.invalid")


# ---------------------------------------------------------------- MasterDirectory


class CountingResolver:
    """The real `resolve`, with a record of each outcome."""

    def __init__(self, server: str):
        self.server = server
        self.outcomes: list[str] = []

    def count(self, outcome: str) -> int:
        return self.outcomes.count(outcome)

    async def __call__(self, name: str) -> list[str]:
        try:
            found = await resolve(name, self.server, timeout=1.0)
        except DiscoveryError:
            self.outcomes.append("failed")
            raise
        self.outcomes.append("ok")
        return found


async def test_the_directory_follows_the_records_and_survives_an_outage(local_dns, caplog):
    caplog.set_level(logging.INFO, logger="elkfs.discovery")
    resolver = CountingResolver(local_dns.server)
    directory = MasterDirectory(NAME, refresh_s=0.2, resolver=resolver)
    changes: asyncio.Queue = asyncio.Queue()
    directory.on_change(lambda *change: changes.put_nowait(change))

    async def next_change():
        return await asyncio.wait_for(changes.get(), 20.0)

    async with directory:
        assert directory.addresses == (M1, M2)
        assert await next_change() == ((M1, M2), (), (M1, M2))

        local_dns.add_record(NAME, M3)
        assert await next_change() == ((M3,), (), (M1, M2, M3))
        local_dns.remove_record(NAME, M1)
        assert await next_change() == ((), (M1,), (M2, M3))

        # The server goes away: the set stays, and one line says so.
        caplog.clear()
        local_dns.stop()
        failed_before = resolver.count("failed")
        await wait_for(lambda: resolver.count("failed") >= failed_before + 3,
                       "three failed refreshes")
        assert directory.addresses == (M2, M3)
        assert messages(caplog, logging.WARNING) == [
            f"cannot resolve master name {NAME}: no answer from {SERVER}:53 within 1.0s "
            f"(keeping: {M2}, {M3})"]

        # It comes back: one line for that too, and the records are followed again.
        local_dns.start()
        ok_before = resolver.count("ok")
        await wait_for(lambda: resolver.count("ok") > ok_before, "a good refresh")
        assert messages(caplog, logging.WARNING)[1:] == []
        assert [m for m in messages(caplog, logging.INFO) if "again" in m] == [
            f"master name {NAME} resolves again: {M2}, {M3}"]
        assert changes.empty()  # the outage was invisible to listeners

        local_dns.add_record(NAME, M4)
        assert await next_change() == ((M4,), (), (M2, M3, M4))


async def test_start_waits_until_the_name_exists(local_dns):
    local_dns.set_records(NAME, [])
    await local_dns.wait_until(NAME, [])
    resolver = CountingResolver(local_dns.server)
    directory = MasterDirectory(NAME, refresh_s=0.2, resolver=resolver)
    starting = asyncio.create_task(directory.start())
    try:
        await wait_for(lambda: resolver.count("failed") >= 1, "a failed first lookup")
        assert not starting.done()
        local_dns.set_records(NAME, [M1])
        await asyncio.wait_for(starting, 20.0)
        assert directory.addresses == (M1,)
    finally:
        starting.cancel()
        directory.stop()


# ---------------------------------------------------------------- LocalDNS itself


@pytest.mark.parametrize("address", ["10.0.0.1", "0.0.0.0", "192.0.2.2", "::1", "localhost"])
def test_local_dns_binds_only_to_loopback(tmp_path, address):
    with pytest.raises(ValueError, match="127.0.0.0/8"):
        LocalDNS(str(tmp_path), address)
    assert not os.path.exists(tmp_path / "dnsmasq.pid")


def test_stop_leaves_no_process_and_frees_the_address(local_dns):
    pid = local_dns.pid()
    assert pid is not None
    local_dns.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert local_dns.pid() is None
    assert not os.path.exists(local_dns.pid_path)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((SERVER, 53))  # nothing holds the address any more
    local_dns.stop()  # twice is fine


def test_a_second_server_on_the_same_address_fails_clearly(local_dns, tmp_path):
    other = LocalDNS(str(tmp_path / "other"), SERVER)
    with pytest.raises(RuntimeError, match="Address already in use"):
        other.start()
    assert other.pid() is None
    assert local_dns.pid() is not None


async def test_another_instance_on_the_directory_controls_the_same_server(local_dns):
    """What the demo's `stop`, run as a new process, relies on."""
    pid = local_dns.pid()
    other = LocalDNS(local_dns.directory, SERVER)
    assert other.records() == {NAME: (M1, M2)}
    assert other.pid() == pid
    other.add_record(NAME, M3)
    await local_dns.wait_until(NAME, [M1, M2, M3])
    other.stop()
    assert local_dns._proc.wait(10) == 0  # it exited on SIGTERM
