"""A real webhook receiver on loopback (aiohttp), scriptable per path, that records what it got."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from webhooks_cli.embedded import free_port

Behaviour = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time()

    def json(self) -> dict[str, object]:
        value: dict[str, object] = json.loads(self.body)
        return value

    def spec_signature_valid(self, secret: str) -> bool:
        """The spec's check: HMAC-SHA256 hex of the body, keyed with the secret string."""
        expected = hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.headers.get("X-Webhook-Signature", ""))


async def ok(request: web.Request, n: int) -> web.StreamResponse:
    return web.Response(text="OK")


def status(code: int, headers: dict[str, str] | None = None) -> Behaviour:
    async def answer(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=code, text=f"status {code}", headers=headers)

    return answer


def sequence(*behaviours: Behaviour) -> Behaviour:
    """The n-th request gets the n-th behaviour (the last one repeats)."""

    async def answer(request: web.Request, n: int) -> web.StreamResponse:
        return await behaviours[min(n, len(behaviours) - 1)](request, n)

    return answer


def sleep(seconds: float) -> Behaviour:
    async def answer(request: web.Request, n: int) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(text="late")

    return answer


def trickle(interval: float, chunks: int) -> Behaviour:
    """Answer 200 at once, then send the body one byte every ``interval`` seconds."""

    async def answer(request: web.Request, n: int) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        for _ in range(chunks):
            await response.write(b".")
            await asyncio.sleep(interval)
        await response.write_eof()
        return response

    return answer


@dataclass
class Receiver:
    base_url: str
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    received: dict[str, list[Received]] = field(default_factory=lambda: defaultdict(list))
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    def url(self, path: str, behaviour: Behaviour = ok) -> str:
        self.behaviours[path] = behaviour
        return self.base_url + path

    async def wait_for(self, path: str, count: int, timeout: float = 15.0) -> list[Received]:
        async with asyncio.timeout(timeout), self.arrived:
            await self.arrived.wait_for(lambda: len(self.received[path]) >= count)
        return self.received[path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path = request.path
        n = len(self.received[path])
        self.received[path].append(Received(path, dict(request.headers), body, time.time()))
        async with self.arrived:
            self.arrived.notify_all()
        return await self.behaviours.get(path, ok)(request, n)


@asynccontextmanager
async def run_receiver() -> AsyncIterator[Receiver]:
    app = web.Application()
    port = free_port()
    receiver = Receiver(base_url=f"http://127.0.0.1:{port}")
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield receiver
    finally:
        await runner.cleanup()
