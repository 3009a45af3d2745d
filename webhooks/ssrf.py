"""SSRF guard: refuse webhook destinations that are not public unicast addresses.

Three layers use the same classifier, :func:`forbidden_reason`:

* :func:`check_url_destination` runs when a webhook URL is saved and reports refusals to the
  client as ``UserErrors``.
* :func:`resolve_checked` resolves a host once and raises :class:`BlockedDestination` if any
  address is forbidden.
* ``workers.resolver.GuardedResolver`` plugs :func:`resolve_checked` into the HTTP client of the
  delivery worker, so it connects only to addresses that were checked (no DNS-rebinding window).

This module is pure address classification and resolution: it knows no HTTP client.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import re
import socket
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol
from urllib.parse import unquote, urlsplit

from webhooks.errors import ErrorCode, UserErrors

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# Order matters: the first matching network gives the reason, so specific entries come first.
_IPV4_FORBIDDEN: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_V4("169.254.169.254/32"), "cloud metadata address"),
    (_V4("100.100.100.200/32"), "cloud metadata address"),
    (_V4("0.0.0.0/8"), "unspecified (this-network) address"),
    (_V4("127.0.0.0/8"), "loopback address"),
    (_V4("10.0.0.0/8"), "private address"),
    (_V4("172.16.0.0/12"), "private address"),
    (_V4("192.168.0.0/16"), "private address"),
    (_V4("169.254.0.0/16"), "link-local address"),
    (_V4("100.64.0.0/10"), "shared (CGNAT) address"),
    (_V4("192.0.0.0/24"), "IETF protocol assignment address"),
    (_V4("192.0.2.0/24"), "documentation address"),
    (_V4("198.51.100.0/24"), "documentation address"),
    (_V4("203.0.113.0/24"), "documentation address"),
    (_V4("198.18.0.0/15"), "benchmarking address"),
    (_V4("192.88.99.0/24"), "6to4 relay anycast address"),
    (_V4("224.0.0.0/4"), "multicast address"),
    (_V4("255.255.255.255/32"), "broadcast address"),
    (_V4("240.0.0.0/4"), "reserved address"),
)

_IPV6_METADATA = ipaddress.IPv6Address("fd00:ec2::254")
_IPV6_MAPPED = _V6("::ffff:0:0/96")
_IPV6_COMPATIBLE = _V6("::/96")
_IPV6_NAT64 = _V6("64:ff9b::/96")
_IPV6_GLOBAL_UNICAST = _V6("2000::/3")

_IPV6_FORBIDDEN: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_V6("64:ff9b:1::/48"), "local-use NAT64 address"),
    (_V6("::ffff:0:0:0/96"), "IPv4-translated address"),
    (_V6("100::/64"), "discard-only address"),
    (_V6("2001::/32"), "Teredo address"),
    (_V6("2001:2::/48"), "benchmarking address"),
    (_V6("2001:10::/28"), "ORCHID address"),
    (_V6("2001:20::/28"), "ORCHIDv2 address"),
    (_V6("2001:db8::/32"), "documentation address"),
    (_V6("3fff::/20"), "documentation address"),
    (_V6("2002::/16"), "6to4 address"),
    (_V6("fc00::/7"), "unique local (private) address"),
    (_V6("fe80::/10"), "link-local address"),
    (_V6("fec0::/10"), "site-local address"),
    (_V6("ff00::/8"), "multicast address"),
)


def forbidden_reason(ip: IPAddress) -> str | None:
    """Return why ``ip`` may not be a webhook destination, or None if it is public unicast.

    The decision comes from the explicit tables above; ``ipaddress``'s ``is_global`` is only a
    final safety net, because it calls some refused ranges (e.g. 192.0.0.9, NAT64) global.

    IPv6 addresses that embed an IPv4 address are judged by the embedded address:

    * IPv4-mapped ``::ffff:0:0/96`` and IPv4-compatible ``::/96`` (except ``::`` and ``::1``);
    * NAT64 ``64:ff9b::/96``: a NAT64 gateway forwards to the embedded IPv4 address, so the
      address is allowed exactly when that IPv4 address is public (``64:ff9b::808:808`` is
      8.8.8.8 and allowed; ``64:ff9b::7f00:1`` is 127.0.0.1 and refused).

    Addresses with an IPv6 zone id (``fe80::1%eth0``) are always refused.
    """
    if isinstance(ip, ipaddress.IPv4Address):
        return _ipv4_reason(ip)
    if ip.scope_id is not None:
        return "IPv6 address with zone id"
    if ip == _IPV6_METADATA:
        return "cloud metadata address"
    if ip == ipaddress.IPv6Address("::"):
        return "unspecified address"
    if ip == ipaddress.IPv6Address("::1"):
        return "loopback address"
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        kind, v4 = embedded
        inner = _ipv4_reason(v4)
        return None if inner is None else f"{kind} {inner}"
    for network, reason in _IPV6_FORBIDDEN:
        if ip in network:
            return reason
    if ip not in _IPV6_GLOBAL_UNICAST:
        return "reserved address"
    if not ip.is_global:
        return "non-public address"
    return None


def _ipv4_reason(ip: ipaddress.IPv4Address) -> str | None:
    for network, reason in _IPV4_FORBIDDEN:
        if ip in network:
            return reason
    if not ip.is_global:
        return "non-public address"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _IPV6_MAPPED:
        return "IPv4-mapped", low32
    if ip in _IPV6_COMPATIBLE:
        return "IPv4-compatible", low32
    if ip in _IPV6_NAT64:
        return "NAT64", low32
    return None


# --- host literals ------------------------------------------------------------------------------

_DEC = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_HEX = re.compile(r"0x[0-9a-f]*", re.ASCII)
_OCT = re.compile(r"0[0-7]+", re.ASCII)
# Label separators that IDNA (UTS #46) maps to "." but NFKC alone does not.
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def _inet_aton_part(part: str) -> int | None:
    if _HEX.fullmatch(part):
        return int(part[2:] or "0", 16)
    if _OCT.fullmatch(part):
        return int(part, 8)
    if _DEC.fullmatch(part):
        return int(part, 10)
    return None


def _parse_ipv4_loose(host: str) -> ipaddress.IPv4Address | None:
    """Parse IPv4 the way ``inet_aton`` does: 1 to 4 parts, each decimal, 0x-hex or 0-octal.

    The last part fills all remaining bytes (``127.1`` is 127.0.0.1, ``2130706433`` is 127.0.0.1).
    """
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = [_inet_aton_part(p) for p in parts]
    if any(v is None for v in values):
        return None
    nums = [v for v in values if v is not None]
    *head, last = nums
    if any(v > 0xFF for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    value = 0
    for v in head:
        value = value << 8 | v
    value = value << (8 * (4 - len(head))) | last
    return ipaddress.IPv4Address(value)


def _parse_ipv6(host: str) -> ipaddress.IPv6Address | None:
    # In URLs a zone id is written "%25eth0"; resolvers take "%eth0".
    address, sep, zone = host.partition("%")
    if sep and zone.startswith("25") and len(zone) > 2:
        zone = zone[2:]
    try:
        return ipaddress.IPv6Address(f"{address}%{zone}" if sep else address)
    except ValueError:
        return None


def parse_host_ip(host: str) -> IPAddress | None:
    """Return the IP address ``host`` denotes if it is an IP literal in any form, else None.

    Recognised: dotted decimal, a single 32-bit integer (``2130706433``), hex (``0x7f000001``,
    ``0x7f.1``), octal (``017700000001``, ``0177.0.0.1``), short forms (``127.1``, ``10.1.1``),
    IPv6 with or without brackets, including a zone id (``[fe80::1%25eth0]``; the result keeps
    the zone in ``scope_id`` and :func:`forbidden_reason` refuses it), a trailing root dot,
    percent-encoding, and Unicode digits/dots that NFKC or IDNA map to ASCII (``１２７.０.０.１``).
    Normal DNS names give None.
    """
    text = unicodedata.normalize("NFKC", host.strip()).translate(_DOTS).lower()
    if text.startswith("[") and text.endswith("]"):
        return _parse_ipv6(text[1:-1])
    if ":" in text:
        return _parse_ipv6(text)
    text = unquote(text) if "%" in text else text
    text = unicodedata.normalize("NFKC", text).translate(_DOTS)
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1]
    if not text.isascii():
        return None
    return _parse_ipv4_loose(text)


# --- resolution ---------------------------------------------------------------------------------


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[IPAddress]: ...


DNS_THREADS = 64  # lookups at once; a slow name holds a thread until the OS resolver gives up (~10 s)


class SystemResolver:
    """Resolve with the operating system's resolver (``getaddrinfo``), without blocking the loop.

    ``getaddrinfo`` blocks a thread until it answers, and a cancelled caller cannot free it. Lookups
    therefore run in a pool of their own (asyncio's default pool had 6 threads on 2 cores, shared with
    everything else), and concurrent lookups of one name share one thread: a tenant whose name server has
    gone silent holds one thread per name, not one per attempt, and other names keep resolving."""

    _pool: ThreadPoolExecutor | None = None
    _pending: dict[tuple[str, int], asyncio.Future[list[IPAddress]]]

    def __init__(self) -> None:
        self._pending = {}

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        key = (host, port)
        shared = self._pending.get(key)
        if shared is None:
            if SystemResolver._pool is None:
                SystemResolver._pool = ThreadPoolExecutor(DNS_THREADS, thread_name_prefix="dns")
            loop = asyncio.get_running_loop()
            shared = asyncio.ensure_future(loop.run_in_executor(SystemResolver._pool, _lookup, host, port))
            self._pending[key] = shared
            shared.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(shared)  # a caller that gives up leaves the lookup to the others


def _lookup(host: str, port: int) -> list[IPAddress]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    result: list[IPAddress] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = ipaddress.ip_address(sockaddr[0])
        if ip not in result:
            result.append(ip)
    return result


class BlockedDestination(OSError):
    """A connection target is not a public unicast address.

    Subclasses ``OSError`` so that aiohttp's connector wraps it in ``ClientConnectorDNSError``
    (with this exception as ``__cause__``) like any other resolution failure.
    """

    def __init__(self, host: str, address: IPAddress, reason: str, *, resolved: bool) -> None:
        if resolved:  # which address is not said: customers must not learn what internal names resolve to
            message = f"host {host} resolves to a forbidden webhook destination: {reason}"
        elif host.strip("[]") == str(address):
            message = f"host {host} is a forbidden webhook destination: {reason}"
        else:
            message = f"host {host} (= {address}) is a forbidden webhook destination: {reason}"
        super().__init__(errno.EACCES, message)
        self.host = host
        self.address = address
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message


class Unresolvable(OSError):
    """A host name that does not resolve (or to no address at all)."""


def _first_forbidden(addresses: Sequence[IPAddress]) -> tuple[IPAddress, str] | None:
    for address in addresses:
        reason = forbidden_reason(address)
        if reason is not None:
            return address, reason
    return None


async def resolve_addresses(host: str, port: int, resolver: Resolver) -> tuple[list[IPAddress], bool]:
    """Return ``(addresses, resolved)``; ``resolved`` is False when ``host`` is an IP literal."""
    literal = parse_host_ip(host)
    if literal is not None:
        return [literal], False
    try:
        addresses = await resolver.resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise Unresolvable(errno.ENOENT, f"host {host} does not resolve") from exc
    if not addresses:
        raise Unresolvable(errno.ENOENT, f"host {host} does not resolve")
    return addresses, True


async def resolve_checked(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    """Resolve ``host`` once (IP literals are not looked up) and return its addresses.

    Raises :class:`BlockedDestination` if ANY address is forbidden, and an ``OSError`` if the
    host does not resolve. Used at connect time by the delivery worker.
    """
    addresses, resolved = await resolve_addresses(host, port, resolver)
    refused = _first_forbidden(addresses)
    if refused is not None:
        raise BlockedDestination(host, *refused, resolved=resolved)
    return addresses


async def check_url_destination(url: str, *, allow_private: bool, resolver: Resolver) -> None:
    """Raise ``UserErrors`` (field ``url``) if the URL's host is, or resolves to, a forbidden address.

    With ``allow_private`` nothing is checked. A host that does not resolve is ``INVALID_URL``.
    """
    if allow_private:
        return
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port or (80 if parts.scheme.lower() == "http" else 443)
    except ValueError as exc:
        raise UserErrors.one("url", ErrorCode.INVALID_URL, f"url is not a valid URL: {exc}") from exc
    if not host:
        raise UserErrors.one("url", ErrorCode.INVALID_URL, "url must have a host")
    try:
        await resolve_checked(host, port, resolver)
    except BlockedDestination as exc:
        raise UserErrors.one("url", ErrorCode.FORBIDDEN_DESTINATION, exc.message) from exc
    except Unresolvable as exc:
        raise UserErrors.one("url", ErrorCode.INVALID_URL, f"host {host} does not resolve") from exc
