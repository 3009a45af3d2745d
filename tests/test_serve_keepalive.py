"""`webhooks serve` keeps idle HTTP connections longer than its clients do (``http_keep_alive_seconds``).

A server that closes an idle keep-alive connection first races with a client that reuses it at that moment:
the client's request meets a closed socket (aiohttp: ``ServerDisconnectedError``). uvicorn's own default is
5 s, shorter than aiohttp's 15 s and a load balancer's 60 s.
"""

from __future__ import annotations

import asyncio

from tests.support import read_http_message, served_api, service_env
from webhooks.settings import Settings

UVICORN_DEFAULT_KEEP_ALIVE = 5.0
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: api\r\n\r\n"


async def get_healthz(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One request on an open connection; the response's status line."""
    writer.write(REQUEST)
    await writer.drain()
    async with asyncio.timeout(10):
        head = await read_http_message(reader)
    return head.split(b"\r\n", 1)[0]


async def test_a_connection_idle_longer_than_uvicorns_default_is_still_served(settings: Settings) -> None:
    # given the API as deployed, and a client connection that made one request
    async with served_api(service_env(settings)) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        try:
            assert await get_healthz(reader, writer) == b"HTTP/1.1 200 OK"
            # when the client reuses it after more idle time than uvicorn's default keep-alive
            await asyncio.sleep(UVICORN_DEFAULT_KEEP_ALIVE + 1)
            # then the server has kept it open and answers on it
            assert await get_healthz(reader, writer) == b"HTTP/1.1 200 OK"
        finally:
            writer.close()


async def test_the_keep_alive_is_a_setting(settings: Settings) -> None:
    # given the API with a one-second keep-alive
    async with served_api(service_env(settings, WEBHOOKS_HTTP_KEEP_ALIVE_SECONDS="1")) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        try:
            assert await get_healthz(reader, writer) == b"HTTP/1.1 200 OK"
            # when the connection stays idle, then the server closes it (end of stream, nothing more sent)
            async with asyncio.timeout(10):
                assert await reader.read() == b""
        finally:
            writer.close()
