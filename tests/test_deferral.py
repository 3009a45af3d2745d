"""Work found due during an HTTP request (a cache's refresh-ahead reload) starts once the response is sent."""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Message

from graphql_api.after_response import AfterResponse
from tests.test_cache import Clock, Store, settle
from webhooks import deferral
from webhooks.cache import TTLCache, read_through


async def test_outside_a_request_the_work_starts_at_once() -> None:
    ran: list[str] = []

    async def job() -> None:
        ran.append("job")

    deferral.later(job)
    await settle()
    assert ran == ["job"]


async def test_inside_a_request_the_work_waits_for_its_end_and_what_comes_later_starts_at_once() -> None:
    ran: list[str] = []

    def job(name: str) -> deferral.Job:
        async def run() -> None:
            ran.append(name)

        return run

    outliving: asyncio.Task[None] | None = None
    release = asyncio.Event()

    async def outlives_the_request() -> None:
        await release.wait()
        deferral.later(job("late"))

    # given a request scope in which work is found due
    with deferral.deferring():
        deferral.later(job("reload"))
        outliving = asyncio.create_task(outlives_the_request())
        await settle()
        # then nothing has started while the request runs
        assert ran == []
    # when the request ends, then the work starts
    await settle()
    assert ran == ["reload"]
    # and work added by a task that outlived the request starts at once
    release.set()
    await outliving
    await settle()
    assert ran == ["reload", "late"]


async def test_a_reload_found_due_in_a_request_reads_the_store_after_the_response_was_sent() -> None:
    # given the API's middleware around a route that reads an entry late in its lifetime
    clock, store = Clock(), Store(key=1)
    cache: TTLCache[str, int] = TTLCache(ttl=1.0, clock=clock)
    await read_through(cache, ["key"], store.load)
    clock.now = 0.9
    log: list[str] = []

    async def load(keys: list[str]) -> dict[str, int]:
        log.append("store read")
        return await store.load(keys)

    async def endpoint(request: Request) -> PlainTextResponse:
        found = await read_through(cache, ["key"], load)
        await settle()  # the request goes on with its own work
        return PlainTextResponse(str(found["key"]))

    app = AfterResponse(Starlette(routes=[Route("/", endpoint)]))
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        log.append(message["type"])

    # when a request is served
    await app(scope, receive, send)
    await settle()
    # then the entry was served from the cache, and reloaded only once the response was out
    assert log == ["http.response.start", "http.response.body", "store read"]
    assert len(store.loads) == 2
