"""The delivery worker's aiohttp resolver: resolve once, hand aiohttp only checked addresses.

The address rules live in ``webhooks.ssrf``; this adapter plugs them into aiohttp's ``TCPConnector``, so
the worker connects only to addresses that were checked (no DNS-rebinding window), while the ``Host``
header, SNI and certificate checks still use the hostname.

Note: ``TCPConnector`` does not call its resolver for hosts that already look like IP literals (all digits
and dots, or containing ``:``). The sender checks such URLs itself before the request.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult

from webhooks.ssrf import Resolver, SystemResolver, Unresolvable, resolve_addresses, resolve_checked


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that resolves once and hands aiohttp only checked addresses.

    Use as ``TCPConnector(resolver=GuardedResolver())``. aiohttp then connects to the returned
    IP addresses while still sending ``Host``/SNI and verifying the certificate for the hostname.
    Raises :class:`BlockedDestination` (an ``OSError``) if any address is forbidden. With
    ``allow_private=True`` it resolves but checks nothing.
    """

    def __init__(self, inner: Resolver | None = None, *, allow_private: bool = False) -> None:
        self._inner: Resolver = inner if inner is not None else SystemResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._allow_private:
            addresses, _ = await resolve_addresses(host, port, self._inner)
        else:
            addresses = await resolve_checked(host, port, self._inner)
        wanted = {
            socket.AF_INET: (ipaddress.IPv4Address,),
            socket.AF_INET6: (ipaddress.IPv6Address,),
        }.get(family, (ipaddress.IPv4Address, ipaddress.IPv6Address))
        results: list[ResolveResult] = [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET if address.version == 4 else socket.AF_INET6,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for address in addresses
            if isinstance(address, wanted)
        ]
        if not results:
            raise Unresolvable(errno.ENOENT, f"host {host} has no address of the requested family")
        return results

    async def close(self) -> None:
        """Nothing to release: the inner resolver owns no connections."""
