"""One HTTP attempt with aiohttp: a wall-clock deadline, no redirects, the first 4 KiB of the answer."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp
import yarl
from aiohttp.helpers import is_ip_address

from webhooks.outcomes import OutcomeClass, classify_status
from webhooks.ssrf import (
    BlockedDestination,
    Resolver,
    SystemResolver,
    parse_host_ip,
    resolve_checked,
)
from workers.resolver import GuardedResolver

E = TypeVar("E", bound=BaseException)
MAX_RESPONSE_BODY = 4096
MAX_RESPONSE_HEADERS = 50
MAX_HEADER_CHARS = 1024  # of one recorded response header's name, and of its value
MAX_HEADERS_CHARS = 8192  # of every recorded response header's name and value together


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: OutcomeClass
    duration_ms: int
    status_code: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: str | None = None
    error: str | None = None
    # read from the whole answer: the recorded ``response_headers`` may leave it out (too many headers)
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is OutcomeClass.SUCCESS


class Sender:
    """Owns the worker's single aiohttp session (connection pooling, guarded DNS resolution)."""

    def __init__(
        self,
        *,
        timeout: float,
        allow_private: bool,
        max_connections: int = 500,
        resolver: Resolver | None = None,
        proxy: str | None = None,
    ) -> None:
        self._timeout = timeout
        self.max_connections = max_connections
        self._allow_private = allow_private
        self._resolver: Resolver = resolver if resolver is not None else SystemResolver()
        # Credentials in the proxy URL travel as proxy_auth, so that no error message (recorded in the
        # delivery log, which customers read) can ever carry them.
        self._proxy, self._proxy_auth = _split_proxy(proxy)
        # Through a proxy the connector only ever connects to the proxy (an operator-chosen address,
        # often private), so it is not checked; the destination is pre-checked in ``_check_host`` and
        # the proxy itself must enforce the policy for the addresses it resolves.
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            resolver=GuardedResolver(self._resolver, allow_private=allow_private or self._proxy is not None),
            ttl_dns_cache=10,
        )
        # No cookie jar: a cookie set by one endpoint would otherwise go out with every later delivery to
        # its host, other accounts' webhooks on a shared receiver host included.
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout),
            auto_decompress=False,
            trust_env=False,
            skip_auto_headers=("Accept-Encoding",),
        )

    async def close(self) -> None:
        await self._session.close()

    async def _check_host(self, url: str) -> None:
        """aiohttp skips the resolver for hosts that look like IP literals, so check those here (and every
        host when proxied). The host is read as aiohttp reads it (yarl), not with ``urllib``: the two disagree
        on some URLs (``https://［127.0.0.1］/`` is a name to ``urlsplit`` and 127.0.0.1 to yarl)."""
        if self._allow_private:
            return
        target = yarl.URL(url)
        host = target.raw_host or ""
        if self._proxy is not None or is_ip_address(host) or parse_host_ip(host) is not None:
            await resolve_checked(host, target.port or 443, self._resolver)

    async def send(self, url: str, body: bytes, headers: dict[str, str]) -> SendResult:
        started = time.perf_counter()

        def elapsed() -> int:
            return int((time.perf_counter() - started) * 1000)

        try:
            async with asyncio.timeout(self._timeout):
                await self._check_host(url)
                async with self._session.post(
                    url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    proxy=self._proxy,
                    proxy_auth=self._proxy_auth,
                ) as resp:
                    chunk = await _read_prefix(resp.content, MAX_RESPONSE_BODY)
                    return SendResult(
                        outcome=classify_status(resp.status),
                        duration_ms=elapsed(),
                        status_code=resp.status,
                        response_headers=_printable_headers(resp.headers),
                        response_body=chunk.decode("utf-8", errors="replace"),
                        error=None if 200 <= resp.status < 300 else _status_error(resp.status),
                        retry_after=resp.headers.get("Retry-After"),
                    )
        except TimeoutError:
            return SendResult(
                OutcomeClass.TIMEOUT, elapsed(), error=f"no complete answer within {self._timeout:g} s"
            )
        except Exception as exc:  # every transport failure is an outcome, recorded, never raised
            return _failure(exc, elapsed())


def _split_proxy(proxy: str | None) -> tuple[str | None, aiohttp.BasicAuth | None]:
    if not proxy:
        return None, None
    url = yarl.URL(proxy)
    auth = aiohttp.BasicAuth(url.user or "", url.password or "") if url.user is not None else None
    return str(url.with_user(None)), auth


def _clean(text: str) -> str:
    """A receiver's header may hold bytes that are not UTF-8 (aiohttp keeps them as lone surrogates, which
    MongoDB cannot store): replace them, so one odd receiver cannot stop a batch from being recorded."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _printable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The response headers as recorded: at most ``MAX_RESPONSE_HEADERS``, each name and value cut to
    ``MAX_HEADER_CHARS``, and no more than ``MAX_HEADERS_CHARS`` in all (the rest is left out). A receiver
    may send 50 values of 8 KiB each: recorded whole, every attempt added 400 KB to its delivery document,
    which then outgrew MongoDB's 16 MB after a few dozen attempts."""
    recorded: dict[str, str] = {}
    total = 0
    for name, value in list(headers.items())[:MAX_RESPONSE_HEADERS]:
        shown, text = _clean(str(name))[:MAX_HEADER_CHARS], _clean(value)[:MAX_HEADER_CHARS]
        total += len(shown) + len(text)
        if total > MAX_HEADERS_CHARS:
            break
        recorded[shown] = text
    return recorded


def _status_error(status: int) -> str:
    if 300 <= status < 400:
        return f"HTTP {status}: redirects are not followed"
    return f"HTTP {status}"


def _failure(exc: BaseException, duration_ms: int) -> SendResult:
    blocked = _find_cause(exc, BlockedDestination)
    if blocked is not None:
        return SendResult(
            OutcomeClass.BLOCKED_DESTINATION, duration_ms, error=f"blocked destination: {blocked}"
        )
    if _find_cause(exc, ssl.SSLError) is not None or isinstance(exc, aiohttp.ClientSSLError):
        return SendResult(OutcomeClass.TLS_ERROR, duration_ms, error=f"TLS error: {exc}")
    return SendResult(OutcomeClass.CONNECTION_ERROR, duration_ms, error=f"{type(exc).__name__}: {exc}"[:500])


def _find_cause(exc: BaseException, kind: type[E]) -> E | None:
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, kind):
            return seen
        os_error = getattr(seen, "os_error", None)
        if isinstance(os_error, kind):
            return os_error
        seen = seen.__cause__ or seen.__context__
    return None


async def _read_prefix(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """Up to ``limit`` bytes of the body; the rest is never read (the connection is dropped instead).

    The status decides the outcome, so a body cut short (the receiver closed the connection before the
    length it announced, or before the last chunk) gives what arrived: the receiver has answered, and a
    2xx must not be sent again, exactly as one cut after ``limit`` bytes (which is never read) is not."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        try:
            chunk = await stream.read(limit - size)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
            break
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)
