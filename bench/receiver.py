"""The benchmark receiver, run as its own process: ``python -m bench.receiver PORT``.

Paths (``<token>`` is any name; register its secret first with ``POST /_register``):
- ``/ok/<token>``: 200 after reading the body;
- ``/fail/<token>``: 500 after reading the body;
- ``/slow/<seconds>/<token>``: 200 after sleeping;
- ``/hang/<token>``: accepts the request, reads it and never answers (the sender's deadline ends it);
- ``/big/<token>``: 200 with a 1 GiB body, streamed lazily from one 1 MiB buffer (never allocated whole).
Every request's ``X-Webhook-Signature`` is checked (hex HMAC-SHA256 of the raw body, keyed with the
registered secret) and counted valid/invalid; the arrival time (``time.time()`` when the handler starts,
i.e. once the request head is in) is recorded with the ``X-Webhook-Delivery`` id.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import sys
import time
from typing import Any

from aiohttp import web

CHUNK = b"x" * (1 << 20)
BIG_BODY = 1 << 30


class State:
    def __init__(self) -> None:
        self.secrets: dict[str, bytes] = {}
        self.valid = 0
        self.invalid = 0
        self.arrivals: list[list[Any]] = []
        self.big_started = 0
        self.big_aborted = 0
        self.slow_inflight = 0
        self.slow_inflight_max = 0
        self.hang_inflight = 0
        self.hang_inflight_max = 0
        self.by_path: dict[str, int] = {}


def make_app() -> web.Application:
    state = State()

    def norm(path: str) -> str:
        return "/slow/" + path.rsplit("/", 1)[-1] if path.startswith("/slow/") else path

    def secret_for(path: str) -> bytes | None:
        return state.secrets.get(norm(path))

    async def check(request: web.Request) -> None:
        arrived = time.time()
        body = await request.read()
        secret = secret_for(request.path)
        signature = request.headers.get("X-Webhook-Signature", "")
        valid = secret is not None and hmac.compare_digest(
            hmac.new(secret, body, hashlib.sha256).hexdigest(), signature
        )
        if valid:
            state.valid += 1
        else:
            state.invalid += 1
        state.arrivals.append([request.headers.get("X-Webhook-Delivery"), arrived, request.path, valid])
        state.by_path[request.path] = state.by_path.get(request.path, 0) + 1

    async def ok(request: web.Request) -> web.StreamResponse:
        await check(request)
        return web.Response(text="OK")

    async def fail(request: web.Request) -> web.StreamResponse:
        await check(request)
        return web.Response(status=500, text="failing on purpose")

    async def slow(request: web.Request) -> web.StreamResponse:
        await check(request)
        state.slow_inflight += 1
        state.slow_inflight_max = max(state.slow_inflight_max, state.slow_inflight)
        try:
            await asyncio.sleep(float(request.match_info["seconds"]))
        finally:
            state.slow_inflight -= 1
        return web.Response(text="late")

    async def hang(request: web.Request) -> web.StreamResponse:
        await check(request)
        state.hang_inflight += 1
        state.hang_inflight_max = max(state.hang_inflight_max, state.hang_inflight)
        try:  # until the sender gives up and closes the connection (aiohttp does not cancel the handler)
            for _ in range(36_000):
                if request.transport is None or request.transport.is_closing():
                    break
                await asyncio.sleep(0.1)
        finally:
            state.hang_inflight -= 1
        return web.Response(text="never")

    async def big(request: web.Request) -> web.StreamResponse:
        await check(request)
        state.big_started += 1
        response = web.StreamResponse(status=200, headers={"Content-Length": str(BIG_BODY)})
        await response.prepare(request)
        try:
            for _ in range(BIG_BODY // len(CHUNK)):
                await response.write(CHUNK)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            state.big_aborted += 1  # the sender read its 4 KiB and dropped the connection
        return response

    async def register(request: web.Request) -> web.StreamResponse:
        data = await request.json()
        state.secrets[norm(data["path"])] = data["secret"].encode()
        return web.json_response({"ok": True})

    async def stats(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "valid": state.valid,
                "invalid": state.invalid,
                "received": len(state.arrivals),
                "big_started": state.big_started,
                "big_aborted": state.big_aborted,
                "slow_inflight_max": state.slow_inflight_max,
                "hang_inflight": state.hang_inflight,
                "hang_inflight_max": state.hang_inflight_max,
            }
        )

    async def by_path(request: web.Request) -> web.StreamResponse:
        return web.json_response(state.by_path)

    async def arrivals(request: web.Request) -> web.StreamResponse:
        since = int(request.query.get("since", "0"))
        path = request.query.get("path")
        found = state.arrivals[since:]
        return web.json_response(found if path is None else [a for a in found if a[2] == path])

    app = web.Application(client_max_size=4 << 20)
    app.router.add_post("/_register", register)
    app.router.add_get("/_stats", stats)
    app.router.add_get("/_arrivals", arrivals)
    app.router.add_get("/_by_path", by_path)
    app.router.add_post("/hang/{token}", hang)
    app.router.add_post("/ok/{token}", ok)
    app.router.add_post("/fail/{token}", fail)
    app.router.add_post("/slow/{seconds}/{token}", slow)
    app.router.add_post("/big/{token}", big)
    return app


def main() -> None:
    import uvloop

    port = int(sys.argv[1])
    web.run_app(
        make_app(),
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
        backlog=4096,
        shutdown_timeout=0.5,
    )


if __name__ == "__main__":
    main()
