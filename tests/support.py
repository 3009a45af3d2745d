"""Test helpers: a GraphQL client over real HTTP, and servers run in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp

from webhooks_cli.embedded import free_port, stop, wait_for_port


def missing_tool(message: str) -> None:
    """A test cannot run without an external tool: skip it locally, but fail it when CI is set."""
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must provide it (.ci/run installs it)", pytrace=False)
    pytest.skip(message)


def require_tool(*names: str, hint: str) -> str:
    """The path of the first of ``names`` on PATH; else skipped locally, failed in CI (``missing_tool``)."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    missing_tool(f"{names[0]} is not installed ({hint})")
    raise AssertionError("unreachable")


class GraphQLClient:
    def __init__(self, http: httpx.AsyncClient, api_key: str | None) -> None:
        self.http = http
        self.api_key = api_key

    async def raw(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        response = await self.http.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def execute(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run an operation that must not fail at the GraphQL level; return ``data``."""
        body = await self.raw(query, variables)
        assert not body.get("errors"), body["errors"]
        data: dict[str, Any] = body["data"]
        return data


@dataclass
class Account:
    id: str
    api_key: str
    gql: GraphQLClient


@contextlib.asynccontextmanager
async def serve_asgi(app: ASGIApp, port: int | None = None) -> AsyncIterator[str]:
    """Run ``app`` with uvicorn on a loopback port inside the current event loop; yield its base URL."""
    port = port or free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="on",
        ws="websockets-sansio",
        # a client reusing a keep-alive connection just as the server times it out gets a ReadError; on a
        # loaded machine a test's poll can be that late, so tests keep idle connections open far longer
        timeout_keep_alive=120,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class Stack:
    """A running API (real HTTP) and an in-process arq worker, sharing one settings object."""

    settings: Any
    core: Any
    http: httpx.AsyncClient

    async def account(self, scopes: Any = None) -> Account:
        from webhooks.models import Scope

        account_id = await self.core.accounts.create("acct")
        key = await self.core.api_keys.issue(account_id, scopes or frozenset(Scope))
        return Account(id=str(account_id), api_key=key, gql=GraphQLClient(self.http, key))


@contextlib.asynccontextmanager
async def run_worker(settings: Any, *, sweeper: bool = True) -> AsyncIterator[Any]:
    from workers.worker import build_worker

    worker = build_worker(settings, sweeper=sweeper, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        # Without signal handlers, arq's close() cancels the jobs it is running (a sweep, at that moment)
        # and then gathers them, which raises their CancelledError out of close() and skips the shutdown
        # hook. So cancel them first, the same way, let them end, and leave close() nothing cancelled.
        worker.handle_sig(signal.SIGUSR1)
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        worker.tasks.clear()
        await worker.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def run_stack(settings: Any, *, worker: bool = True) -> AsyncIterator[Stack]:
    from graphql_api.app import create_app
    from webhooks.core import open_core

    async with contextlib.AsyncExitStack() as stack:
        core = await stack.enter_async_context(open_core(settings))
        url = await stack.enter_async_context(serve_asgi(create_app(settings)))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30))
        if worker:
            await stack.enter_async_context(run_worker(settings))
        yield Stack(settings=settings, core=core, http=http)


def service_env(settings: Any, **extra: str) -> dict[str, str]:
    """Environment for a `webhooks serve` or `webhooks worker` subprocess sharing ``settings``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("WEBHOOKS_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        {
            "WEBHOOKS_MONGODB_URL": str(settings.mongodb_url),
            "WEBHOOKS_MONGODB_DATABASE": settings.mongodb_database,
            "WEBHOOKS_REDIS_URL": str(settings.redis_url),
            "WEBHOOKS_SECRET_KEYS": ",".join(settings.secret_keys),
            "WEBHOOKS_QUEUE_NAME": settings.queue_name,
            "WEBHOOKS_ALLOW_HTTP": "true",
            "WEBHOOKS_ALLOW_PRIVATE_DESTINATIONS": "true",
            "WEBHOOKS_DATA_DIR": str(settings.data_dir),
            "WEBHOOKS_RETENTION_SWEEP": str(settings.retention_sweep).lower(),
            **extra,
        }
    )
    return env


@dataclass(frozen=True)
class Served:
    """A `webhooks serve` process started by ``served_api``."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def served_api(env: dict[str, str], log_path: Path | None = None) -> AsyncIterator[Served]:
    """`webhooks serve` as deployed, in a process of its own with ``env`` (``service_env``), once it answers;
    its output goes to ``log_path``, else nowhere. Stopped on exit."""
    port = free_port()
    proc = await asyncio.to_thread(_start_serve, env, port, log_path)
    try:
        await asyncio.to_thread(wait_for_port, port, proc, "webhooks serve")
        yield Served(port)
    finally:
        await asyncio.to_thread(stop, proc)


def _start_serve(env: dict[str, str], port: int, log_path: Path | None) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "webhooks_cli", "serve", "--port", str(port)]
    with open(log_path, "wb") if log_path else open(os.devnull, "wb") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL)


async def read_http_message(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 request or response with a Content-Length, read whole from ``reader``; its head."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return head
