"""SSRF guard: address classification, IP-literal parsing, URL checks and the aiohttp resolver."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from webhooks.errors import ErrorCode, UserErrors
from webhooks.outcomes import OutcomeClass
from webhooks.settings import Settings
from webhooks.ssrf import (
    BlockedDestination,
    IPAddress,
    check_url_destination,
    forbidden_reason,
    parse_host_ip,
    resolve_checked,
)
from workers.resolver import GuardedResolver
from workers.sender import Sender


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


class FakeResolver:
    """A real ``Resolver``: answers from a fixed table, like DNS would; unknown names do not resolve."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append((host, port))
        if host not in self.table:
            raise OSError(f"unknown host {host}")
        return [ip(a) for a in self.table[host]]


# --- forbidden_reason ---------------------------------------------------------------------------

BLOCKED_RANGES = [
    ("0.0.0.0/8", "unspecified"),
    ("127.0.0.0/8", "loopback"),
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("169.254.0.0/16", "link-local"),
    ("169.254.169.254/32", "cloud metadata"),
    ("100.100.100.200/32", "cloud metadata"),
    ("100.64.0.0/10", "CGNAT"),
    ("198.18.0.0/15", "benchmarking"),
    ("192.0.2.0/24", "documentation"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("192.0.0.0/24", "IETF protocol assignment"),
    ("240.0.0.0/4", "reserved"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("::1/128", "loopback"),
    ("::/128", "unspecified"),
    ("fd00:ec2::254/128", "cloud metadata"),
    ("2001:db8::/32", "documentation"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("2002::/16", "6to4"),
    ("2001::/32", "Teredo"),
    ("2001:10::/28", "ORCHID"),
    ("2001:20::/28", "ORCHIDv2"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
    ("100::/64", "discard"),
]


def _first_and_last() -> list[tuple[str, str]]:
    # 255.255.255.255 ends 240/4 but is reported by its more specific reason
    more_specific = {"255.255.255.255": "broadcast"}
    cases = []
    for cidr, reason in BLOCKED_RANGES:
        network = ipaddress.ip_network(cidr)
        for address in (str(network[0]), str(network[-1])):
            cases.append((address, more_specific.get(address, reason)))
    return cases


@pytest.mark.parametrize(("address", "reason"), _first_and_last())
def test_first_and_last_address_of_every_blocked_range_is_refused_with_its_reason(
    address: str, reason: str
) -> None:
    assert reason in (forbidden_reason(ip(address)) or "")


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("::ffff:127.0.0.1", "IPv4-mapped loopback address"),
        ("::ffff:10.0.0.1", "IPv4-mapped private address"),
        ("::ffff:169.254.169.254", "IPv4-mapped cloud metadata address"),
        ("::127.0.0.1", "IPv4-compatible loopback address"),
        ("64:ff9b::127.0.0.1", "NAT64 loopback address"),
        ("64:ff9b::169.254.169.254", "NAT64 cloud metadata address"),
        ("64:ff9b::10.1.2.3", "NAT64 private address"),
    ],
)
def test_ipv6_embedding_a_forbidden_ipv4_is_refused(address: str, reason: str) -> None:
    assert forbidden_reason(ip(address)) == reason


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::8.8.8.8", "::ffff:8.8.8.8", "93.184.215.14"],
)
def test_public_unicast_addresses_are_allowed(address: str) -> None:
    assert forbidden_reason(ip(address)) is None


def test_addresses_that_is_global_calls_global_are_still_refused() -> None:
    # given addresses that ipaddress.is_global says are global
    anycast = ip("192.0.0.9")
    nat64_loopback = ip("64:ff9b::7f00:1")
    assert anycast.is_global
    # then the explicit table refuses them anyway
    assert forbidden_reason(anycast) is not None
    assert forbidden_reason(nat64_loopback) is not None


def test_ipv6_zone_id_is_refused_even_on_a_public_address() -> None:
    assert forbidden_reason(ip("2606:4700:4700::1111%eth0")) == "IPv6 address with zone id"


# --- parse_host_ip ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1.1", "10.1.0.1"),
        ("0", "0.0.0.0"),
        ("127.0.0.1.", "127.0.0.1"),
        ("１２７.０.０.１", "127.0.0.1"),
        ("１２７．０．０．１", "127.0.0.1"),
        ("127。0。0。1", "127.0.0.1"),
        ("127%2e0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
        ("[2606:4700:4700::1111]", "2606:4700:4700::1111"),
    ],
)
def test_ip_literals_in_any_form_are_recognised(host: str, expected: str) -> None:
    assert parse_host_ip(host) == ip(expected)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "2130706433",
        "0x7f000001",
        "0x7f.1",
        "017700000001",
        "0177.0.0.1",
        "127.1",
        "10.1.1",
        "１２７.０.０.１",
        "[::ffff:127.0.0.1]",
    ],
)
def test_every_literal_spelling_of_an_internal_address_is_forbidden(host: str) -> None:
    parsed = parse_host_ip(host)
    assert parsed is not None
    assert forbidden_reason(parsed) is not None


@pytest.mark.parametrize("host", ["[fe80::1%25eth0]", "fe80::1%25eth0", "[fe80::1%eth0]"])
def test_bracketed_ipv6_with_zone_id_is_parsed_and_refused(host: str) -> None:
    # when a host carries a zone id
    parsed = parse_host_ip(host)
    # then the address keeps the zone and is refused because of it
    assert isinstance(parsed, ipaddress.IPv6Address)
    assert parsed.scope_id == "eth0"
    assert forbidden_reason(parsed) == "IPv6 address with zone id"


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "hooks.example.com.",
        "1.2.3.4.5",
        "256.1.1.1",
        "08.1",
        "1.2.3.4.example",
        "xn--80ak6aa92e.com",
    ],
)
def test_dns_names_and_invalid_numbers_are_not_ip_literals(host: str) -> None:
    assert parse_host_ip(host) is None


# --- check_url_destination ----------------------------------------------------------------------

DNS = FakeResolver(
    {
        "internal.example": ["10.0.0.5"],
        "mixed.example": ["93.184.215.14", "192.168.1.10"],
        "public.example": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    }
)


async def refusal(url: str) -> UserErrors:
    with pytest.raises(UserErrors) as info:
        await check_url_destination(url, allow_private=False, resolver=DNS)
    return info.value


async def test_name_resolving_to_a_private_address_is_refused() -> None:
    error = (await refusal("https://internal.example/hook")).errors[0]
    assert (error.field, error.code) == ("url", ErrorCode.FORBIDDEN_DESTINATION)
    # (the address is not given: a customer must not be able to map the operator's internal names)
    assert error.message == (
        "host internal.example resolves to a forbidden webhook destination: private address"
    )


async def test_name_resolving_to_public_and_private_addresses_is_refused() -> None:
    error = (await refusal("https://mixed.example/hook")).errors[0]
    assert error.code is ErrorCode.FORBIDDEN_DESTINATION
    assert "mixed.example" in error.message and "private address" in error.message
    assert "192.168.1.10" not in error.message


async def test_name_resolving_only_to_public_addresses_passes() -> None:
    await check_url_destination("https://public.example/hook", allow_private=False, resolver=DNS)
    assert ("public.example", 443) in DNS.calls


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "loopback address"),
        ("http://0x7f.1:8080/", "loopback address"),
        ("https://169.254.169.254/latest/meta-data", "cloud metadata address"),
        ("https://[fe80::1%25eth0]/", "IPv6 address with zone id"),
        ("https://[::ffff:10.0.0.1]/", "IPv4-mapped private address"),
    ],
)
async def test_forbidden_ip_literal_url_is_refused_without_dns(url: str, reason: str) -> None:
    resolver = FakeResolver({})
    with pytest.raises(UserErrors) as info:
        await check_url_destination(url, allow_private=False, resolver=resolver)
    error = info.value.errors[0]
    assert error.code is ErrorCode.FORBIDDEN_DESTINATION
    assert error.message.endswith(reason)
    assert resolver.calls == []


async def test_name_that_does_not_resolve_is_an_invalid_url() -> None:
    error = (await refusal("https://nowhere.example/")).errors[0]
    assert (error.code, error.message) == (ErrorCode.INVALID_URL, "host nowhere.example does not resolve")


async def test_allow_private_skips_every_check() -> None:
    resolver = FakeResolver({})
    await check_url_destination("http://127.0.0.1/", allow_private=True, resolver=resolver)
    await check_url_destination("https://internal.example/", allow_private=True, resolver=resolver)
    assert resolver.calls == []


async def test_resolve_checked_raises_blocked_destination_for_any_forbidden_address() -> None:
    with pytest.raises(BlockedDestination) as info:
        await resolve_checked("mixed.example", 443, DNS)
    assert info.value.reason == "private address"
    assert info.value.address == ip("192.168.1.10")
    assert await resolve_checked("public.example", 443, DNS) == [
        ip("93.184.215.14"),
        ip("2606:2800:21f:cb07:6820:80da:af6b:8b2c"),
    ]


# --- GuardedResolver with a real aiohttp client and server --------------------------------------


@pytest.fixture
async def local_server() -> AsyncIterator[int]:
    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="reached")

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_post("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port: int = runner.addresses[0][1]
    try:
        yield port
    finally:
        await runner.cleanup()


def guarded_session(*, allow_private: bool) -> aiohttp.ClientSession:
    inner = FakeResolver({"example.test": ["127.0.0.1"]})
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(inner, allow_private=allow_private))
    return aiohttp.ClientSession(connector=connector)


async def test_guarded_resolver_blocks_a_name_that_resolves_to_loopback(local_server: int) -> None:
    # given a session whose resolver maps example.test to 127.0.0.1, where a server is listening
    async with guarded_session(allow_private=False) as session:
        # when the delivery worker posts to it
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await session.get(f"http://example.test:{local_server}/")
    # then the connection is refused before connecting, because of the SSRF guard
    cause = info.value.__cause__
    assert isinstance(cause, BlockedDestination)
    assert info.value.os_error is cause
    assert cause.reason == "loopback address"
    assert cause.host == "example.test"


async def test_guarded_resolver_with_allow_private_reaches_the_server(local_server: int) -> None:
    # given the same setup but private destinations allowed
    async with (
        guarded_session(allow_private=True) as session,
        # when the request is made, then it reaches the local server by hostname
        session.get(f"http://example.test:{local_server}/") as response,
    ):
        assert response.status == 200
        assert await response.text() == "reached"


async def test_an_empty_egress_proxy_setting_keeps_the_connect_time_check(
    local_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given WEBHOOKS_EGRESS_PROXY set to nothing (as a deployment template leaves it), and a name that was
    # public when its webhook was saved but now resolves to loopback, where a server listens
    monkeypatch.setenv("WEBHOOKS_EGRESS_PROXY", "")
    proxy = Settings().egress_proxy
    resolver = FakeResolver({"rebound.test": ["127.0.0.1"]})
    sender = Sender(timeout=5, allow_private=False, resolver=resolver, proxy=proxy)
    try:
        # when a delivery goes to it
        result = await sender.send(f"http://rebound.test:{local_server}/", b"{}", {})
    finally:
        await sender.close()
    # then no proxy is used, and the address is still checked at connect time: blocked, not sent
    assert proxy is None
    assert result.outcome is OutcomeClass.BLOCKED_DESTINATION


@pytest.mark.parametrize("host", ["\uff3b127.0.0.1\uff3d", "\uff3b127.0.0.1"])
async def test_a_loopback_literal_that_only_the_http_client_reads_as_one_is_blocked(
    local_server: int, host: str
) -> None:
    # given a server listening on 127.0.0.1, and a URL whose host is written with fullwidth brackets: the
    # standard URL parser reads it as a name, while aiohttp's URL parser (yarl) takes "［127.0.0.1］" for the
    # bracketed address 127.0.0.1 and connects to it without asking any resolver
    sender = Sender(timeout=5, allow_private=False)
    try:
        # when a delivery goes to it
        result = await sender.send(f"http://{host}:{local_server}/", b"{}", {})
    finally:
        await sender.close()
    # then the attempt ends without reaching the server: the address aiohttp would connect to was checked
    assert result.status_code is None, result
    assert result.outcome is OutcomeClass.BLOCKED_DESTINATION, result


async def test_names_that_resolve_slowly_do_not_hold_up_other_names(
    local_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an OS resolver that hangs 5 s on *.slow.test (a tenant's silent name server) and answers other
    # names at once, and a sender with a 3 s deadline
    real = socket.getaddrinfo

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        if host.endswith(".slow.test"):
            time.sleep(5)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real("127.0.0.1" if host == "fast.test" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    sender = Sender(timeout=3, allow_private=True)
    try:
        # when many attempts go to slow names (eight names, and forty attempts to one of them) ...
        urls = [f"https://h{i}.slow.test/" for i in range(8)] + ["https://h0.slow.test/"] * 40
        slow = [asyncio.create_task(sender.send(url, b"{}", {})) for url in urls]
        await asyncio.sleep(0.2)
        # ... and then one to a name that resolves at once
        fast = await sender.send(f"http://fast.test:{local_server}/", b"{}", {})
        stuck = await asyncio.gather(*slow)
    finally:
        await sender.close()
    # then that one is delivered, while the slow ones fail on their own deadline
    assert fast.status_code == 200, fast
    assert {r.outcome for r in stuck} <= {OutcomeClass.TIMEOUT, OutcomeClass.CONNECTION_ERROR}
