"""elkfs.discovery without a DNS server: literals, ordering, config parsing, which record
is the master itself, and MasterDirectory driven by a scripted resolver and a fake clock
(no real waits; time moves only when a test says so)."""

import asyncio
import logging
import socket

import pytest

from elkfs.discovery import (DiscoveryError, MasterDirectory, local_addresses, own_address,
                             parse_dns_server, parse_fib_trie, resolve, sort_addresses)

NAME = "mfsmaster.test"

# ---------------------------------------------------------------- resolve / parsing


async def test_ipv4_literal_is_its_own_answer():
    # A server that does not exist would time out if it were asked.
    assert await resolve("127.0.1.10", dns_server="127.0.71.1:9", timeout=0.01) == ["127.0.1.10"]


@pytest.mark.parametrize("name", ["", "::1", "fe80::1"])
async def test_not_a_name_is_a_discovery_error(name):
    with pytest.raises(DiscoveryError) as e:
        await resolve(name, dns_server="127.0.71.1:9", timeout=0.01)
    assert e.value.name == name
    assert "not a host name" in e.value.reason


def test_addresses_sort_numerically_without_duplicates():
    got = sort_addresses(["127.0.1.10", "127.0.1.9", "10.0.0.1", "127.0.1.10"])
    assert got == ["10.0.0.1", "127.0.1.9", "127.0.1.10"]


def test_discovery_error_names_the_name_and_the_reason():
    e = DiscoveryError("mfsmaster", "no such name")
    assert str(e) == "cannot resolve 'mfsmaster': no such name"
    assert (e.name, e.reason) == ("mfsmaster", "no such name")


@pytest.mark.parametrize("text, expected", [
    ("", None), ("  ", None), ("system", None), ("SYSTEM", None),
    ("127.0.1.53", ("127.0.1.53", 53)),
    (" 127.0.1.53:5353 ", ("127.0.1.53", 5353)),
    ("10.1.2.3:65535", ("10.1.2.3", 65535)),
])
def test_parse_dns_server(text, expected):
    assert parse_dns_server(text) == expected


@pytest.mark.parametrize("text, message", [
    ("dns.example", "must be an IPv4 address, got 'dns.example'"),
    ("127.0.1", "must be an IPv4 address"),
    ("127.0.1.53:", "port must be 1-65535, got ''"),
    ("127.0.1.53:0", "port must be 1-65535, got '0'"),
    ("127.0.1.53:65536", "port must be 1-65535"),
    ("127.0.1.53:dns", "port must be 1-65535, got 'dns'"),
    ("127.0.1.53:-1", "port must be 1-65535"),
    ("127.0.1.53:\u0665\u0663", "port must be 1-65535"),  # digits, but not ASCII ones
    ("::1", "must be IPv4 'IP' or 'IP:PORT'"),
    ("[::1]:53", "must be IPv4 'IP' or 'IP:PORT'"),
])
def test_parse_dns_server_rejects(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_dns_server(text)


async def test_the_system_resolver_answer_is_sorted_and_deduplicated(monkeypatch):
    async def getaddrinfo(host, port, *, family=0, type=0, proto=0, flags=0):
        assert (host, family, type) == (NAME, socket.AF_INET, socket.SOCK_STREAM)
        return [(family, type, 6, "", (addr, 0)) for addr in ["10.0.0.10", "10.0.0.9", "10.0.0.10"]]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    assert await resolve(NAME) == ["10.0.0.9", "10.0.0.10"]
    assert await resolve(NAME, dns_server="system") == ["10.0.0.9", "10.0.0.10"]


async def test_system_resolver_failures_are_discovery_errors(monkeypatch):
    async def unknown(*args, **kw):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def hanging(*args, **kw):
        await asyncio.Event().wait()

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", unknown)
    with pytest.raises(DiscoveryError, match="system resolver: Name or service not known"):
        await resolve(NAME)
    monkeypatch.setattr(loop, "getaddrinfo", hanging)
    with pytest.raises(DiscoveryError, match="no answer within 0.01s"):
        await resolve(NAME, timeout=0.01)


async def test_a_bad_dns_server_is_a_value_error_not_a_discovery_error():
    with pytest.raises(ValueError):
        await resolve(NAME, dns_server="dns.example")


# ---------------------------------------------------------------- own address

RECORDS = ["127.0.1.10", "127.0.1.11", "127.0.1.12"]


@pytest.mark.parametrize("listen_hosts, expected", [
    (["127.0.1.11"], "127.0.1.11"),
    (["127.0.1.11", "127.0.1.11"], "127.0.1.11"),
    (["127.0.1.11", "*"], "127.0.1.11"),       # the specific one wins
    (["127.0.1.99"], None),                     # listening where DNS does not point
    (["127.0.1.10", "127.0.1.11"], None),       # two of the records: ambiguous
])
def test_own_address_with_a_specific_listen_host(listen_hosts, expected):
    # `local` says every record is local: the listen host must still decide.
    assert own_address(RECORDS, listen_hosts, local=set(RECORDS)) == expected


@pytest.mark.parametrize("wildcard", ["*", "0.0.0.0", ""])
def test_own_address_with_a_wildcard_matches_local_addresses(wildcard):
    records = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert own_address(records, [wildcard], local={"10.0.0.2", "192.0.2.2"}) == "10.0.0.2"
    assert own_address(records, [wildcard], local={"192.0.2.2"}) is None
    assert own_address(records, [wildcard], local={"10.0.0.1", "10.0.0.3"}) is None


def test_own_address_wildcard_with_several_loopback_records_is_ambiguous():
    # Every 127.x is local on Linux even if no interface lists it.
    assert own_address(RECORDS, ["*"], local={"127.0.0.1"}) is None
    assert own_address(["127.0.1.10", "10.0.0.1"], ["*"], local=set()) == "127.0.1.10"


def test_local_addresses_of_this_host():
    found = local_addresses()
    assert "127.0.0.1" in found
    assert all(a.count(".") == 3 for a in found)


FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     |-- 10.0.0.0
        /24 link UNICAST
     |-- 10.0.0.7
        /32 host LOCAL
     |-- 10.0.0.8
        /32 host LOCAL
Local:
     |-- 10.0.0.7
        /32 host LOCAL
"""


def test_fib_trie_lists_host_local_entries_only():
    assert parse_fib_trie(FIB_TRIE) == {"127.0.0.1", "10.0.0.7", "10.0.0.8"}


# ---------------------------------------------------------------- MasterDirectory


class FakeTime:
    """A clock that moves only in `advance`; `sleep` waits for it."""

    def __init__(self):
        self.now = 0.0
        self.sleepers: list[tuple[float, asyncio.Future]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        entry = (self.now + seconds, asyncio.get_running_loop().create_future())
        self.sleepers.append(entry)
        try:
            await entry[1]
        finally:  # woken, or cancelled by stop()
            if entry in self.sleepers:
                self.sleepers.remove(entry)

    async def advance(self, seconds: float) -> None:
        await settle()  # time moves only once every task is waiting
        self.now += seconds
        due = [(t, f) for t, f in self.sleepers if t <= self.now]
        for entry in due:
            self.sleepers.remove(entry)
            entry[1].set_result(None)
        await settle()


async def settle() -> None:
    """Let woken tasks run until they sleep again (the fakes never really wait)."""
    for _ in range(20):
        await asyncio.sleep(0)


class ScriptedResolver:
    """Answers from a script: a list of addresses, or an exception to raise."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = 0

    def then(self, *answers):
        self.answers.extend(answers)

    async def __call__(self, name: str) -> list[str]:
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return list(answer)


def failure(reason: str) -> DiscoveryError:
    return DiscoveryError(NAME, reason)


def make_directory(resolver, time, **kw) -> MasterDirectory:
    return MasterDirectory(NAME, refresh_s=5.0, resolver=resolver, sleep=time.sleep,
                           clock=time.clock, **kw)


def warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "elkfs.discovery" and r.levelno == logging.WARNING]


@pytest.fixture
def time():
    return FakeTime()


@pytest.fixture
def caplog_info(caplog):
    caplog.set_level(logging.INFO, logger="elkfs.discovery")
    return caplog


async def test_start_announces_the_first_set(time):
    d = make_directory(ScriptedResolver(["127.0.1.11", "127.0.1.10", "127.0.1.11"]), time)
    changes = []
    d.on_change(lambda *args: changes.append(args))
    assert d.addresses == ()
    await d.start()
    try:
        assert d.addresses == ("127.0.1.10", "127.0.1.11")
        assert changes == [(("127.0.1.10", "127.0.1.11"), (), ("127.0.1.10", "127.0.1.11"))]
    finally:
        d.stop()


async def test_refresh_reports_what_was_added_and_removed(time):
    resolver = ScriptedResolver(["10.0.0.1", "10.0.0.2"])
    d = make_directory(resolver, time)
    await d.start()
    changes = []
    d.on_change(lambda *args: changes.append(args))
    try:
        resolver.answers = [["10.0.0.2", "10.0.0.3"]]
        assert await d.refresh() is True
        assert changes == [(("10.0.0.3",), ("10.0.0.1",), ("10.0.0.2", "10.0.0.3"))]
        resolver.answers = [["10.0.0.3", "10.0.0.2", "10.0.0.2"]]  # same set, other order
        assert await d.refresh() is False
        assert len(changes) == 1
    finally:
        d.stop()


async def test_the_loop_refreshes_every_refresh_period(time):
    resolver = ScriptedResolver(["10.0.0.1"])
    d = make_directory(resolver, time)
    await d.start()
    try:
        assert resolver.calls == 1
        await time.advance(4.9)
        assert resolver.calls == 1
        resolver.answers = [["10.0.0.1", "10.0.0.2"]]
        await time.advance(0.1)
        assert resolver.calls == 2
        assert d.addresses == ("10.0.0.1", "10.0.0.2")
        await time.advance(5.0)
        assert resolver.calls == 3
    finally:
        d.stop()
    await time.advance(50.0)
    assert resolver.calls == 3
    assert time.sleepers == []  # stop() ended the loop


async def test_failures_keep_the_last_good_set_and_log_once_each(time, caplog_info):
    resolver = ScriptedResolver(["10.0.0.1", "10.0.0.2"])
    d = make_directory(resolver, time)
    changes = []
    await d.start()
    d.on_change(lambda *args: changes.append(args))
    try:
        resolver.answers = [failure("no answer from 127.0.1.53:53 within 2.0s")]
        for _ in range(5):
            await time.advance(5.0)
        assert resolver.calls == 6
        assert d.addresses == ("10.0.0.1", "10.0.0.2")
        assert warnings(caplog_info) == [
            "cannot resolve master name mfsmaster.test: no answer from 127.0.1.53:53 "
            "within 2.0s (keeping: 10.0.0.1, 10.0.0.2)"]

        # A different error is news (once); the first one coming back is not.
        resolver.answers = [failure("no such name"), failure("no such name"),
                            failure("no answer from 127.0.1.53:53 within 2.0s"),
                            ["10.0.0.1", "10.0.0.2"]]
        for _ in range(4):
            await time.advance(5.0)
        assert len(warnings(caplog_info)) == 2
        assert "no such name" in warnings(caplog_info)[1]
        recovered = [r.getMessage() for r in caplog_info.records if "again" in r.getMessage()]
        assert recovered == ["master name mfsmaster.test resolves again: 10.0.0.1, 10.0.0.2"]
        assert changes == []  # nothing changed: the outage was invisible to listeners

        # After recovery the same error is worth a line again.
        resolver.answers = [failure("no such name")]
        await time.advance(5.0)
        assert len(warnings(caplog_info)) == 3
    finally:
        d.stop()


async def test_an_empty_answer_is_a_failure_not_an_empty_set(time, caplog_info):
    resolver = ScriptedResolver(["10.0.0.1"])
    d = make_directory(resolver, time)
    await d.start()
    try:
        resolver.answers = [[]]
        assert await d.refresh() is False
        assert d.addresses == ("10.0.0.1",)
        assert "no addresses" in warnings(caplog_info)[0]
    finally:
        d.stop()


async def test_start_retries_until_the_name_resolves(time, caplog_info):
    resolver = ScriptedResolver(failure("no such name"), failure("no such name"), ["10.0.0.1"])
    d = make_directory(resolver, time)
    starting = asyncio.create_task(d.start())
    await settle()
    assert resolver.calls == 1 and not starting.done()
    await time.advance(1.0)
    assert resolver.calls == 2 and not starting.done()
    await time.advance(1.0)
    assert starting.done()
    await starting
    try:
        assert d.addresses == ("10.0.0.1",)
        assert len(warnings(caplog_info)) == 1
    finally:
        d.stop()


async def test_start_gives_up_after_its_timeout(time):
    resolver = ScriptedResolver(failure("no such name"))
    d = make_directory(resolver, time, start_timeout_s=10.0)
    starting = asyncio.create_task(d.start())
    for _ in range(12):
        await time.advance(1.0)
    assert starting.done()
    with pytest.raises(DiscoveryError, match="no such name .still failing after 10.0s"):
        await starting
    assert resolver.calls == 11  # at 0, 1, ... 10 s
    assert time.sleepers == []  # no refresh loop left behind


async def test_a_broken_listener_does_not_stop_the_others(time, caplog_info):
    resolver = ScriptedResolver(["10.0.0.1"])
    d = make_directory(resolver, time)
    seen = []

    def broken(*args):
        raise RuntimeError("listener bug")

    d.on_change(broken)
    d.on_change(lambda *args: seen.append(args[2]))
    await d.start()
    try:
        resolver.answers = [["10.0.0.2"]]
        await time.advance(5.0)
        assert seen == [("10.0.0.1",), ("10.0.0.2",)]
        assert any("listener" in r.getMessage() and r.levelno == logging.ERROR
                   for r in caplog_info.records)
    finally:
        d.stop()


async def test_a_resolver_bug_is_logged_once_and_the_loop_goes_on(time, caplog_info):
    resolver = ScriptedResolver(["10.0.0.1"])
    d = make_directory(resolver, time)
    await d.start()
    try:
        resolver.answers = [TypeError("bug"), TypeError("bug"), ["10.0.0.1", "10.0.0.2"]]
        for _ in range(3):
            await time.advance(5.0)
        assert d.addresses == ("10.0.0.1", "10.0.0.2")
        assert warnings(caplog_info) == [
            "cannot resolve master name mfsmaster.test: TypeError: bug (keeping: 10.0.0.1)"]
    finally:
        d.stop()


async def test_context_manager_starts_and_stops(time):
    resolver = ScriptedResolver(["10.0.0.1"])
    async with make_directory(resolver, time) as d:
        assert d.addresses == ("10.0.0.1",)
    await time.advance(50.0)
    assert resolver.calls == 1


def test_refresh_period_must_be_positive():
    with pytest.raises(ValueError, match="refresh_s"):
        MasterDirectory(NAME, refresh_s=0)


def test_a_bad_dns_server_fails_at_construction():
    with pytest.raises(ValueError, match="IPv4"):
        MasterDirectory(NAME, dns_server="dns.example")
