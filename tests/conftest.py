"""Shared fixtures: a real SecantusDB server, the real Redis, the API over real HTTP."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from cryptography.fernet import Fernet

from graphql_api.app import create_app
from tests.receiver import Receiver, run_receiver
from tests.support import Account, GraphQLClient, serve_asgi
from webhooks.core import Core, open_core
from webhooks.embedded import free_port, spawn, stop, wait_for_port
from webhooks.models import Scope
from webhooks.settings import Settings

REDIS_URL = os.environ.get("WEBHOOKS_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


@pytest.fixture(scope="session")
def mongodb_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real SecantusDB server (MongoDB wire protocol) in its own process for the whole run."""
    import sys

    data = tmp_path_factory.mktemp("secantus")
    port = free_port()
    proc = spawn(
        [
            sys.executable,
            "-m",
            "secantus",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            str(data),
            "--log-level",
            "WARNING",
        ],
        quiet=True,
    )
    try:
        wait_for_port(port, proc, "SecantusDB")
        yield f"mongodb://127.0.0.1:{port}/?directConnection=true&retryWrites=false"
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def settings(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(mongodb_url, tmp_path_factory.mktemp("data"))


def make_settings(mongodb_url: str, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "mongodb_url": mongodb_url,
        "mongodb_database": f"test_{uuid.uuid4().hex[:8]}",
        "queue_name": f"test:{uuid.uuid4().hex[:8]}",  # jobs of concurrent test runs never mix
        "redis_url": REDIS_URL,
        "secret_keys": (Fernet.generate_key().decode(),),
        "allow_http": True,
        "allow_private_destinations": True,
        "data_dir": data_dir,
        **overrides,
    }
    return Settings.model_validate(values)


@pytest.fixture(scope="session")
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
async def core(settings: Settings) -> AsyncIterator[Core]:
    async with open_core(settings) as opened:
        yield opened


@pytest.fixture(scope="session")
async def api_url(settings: Settings, redis_client: aioredis.Redis) -> AsyncIterator[str]:
    async with serve_asgi(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="session")
async def http(api_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
        yield client


async def new_account(
    core: Core, http: httpx.AsyncClient, scopes: frozenset[Scope] = frozenset(Scope)
) -> Account:
    account_id = await core.accounts.create(f"acct-{uuid.uuid4().hex[:6]}")
    key = await core.api_keys.issue(account_id, scopes)
    return Account(id=str(account_id), api_key=key, gql=GraphQLClient(http, key))


@pytest.fixture
async def account(core: Core, http: httpx.AsyncClient) -> Account:
    return await new_account(core, http)


@pytest.fixture
async def other_account(core: Core, http: httpx.AsyncClient) -> Account:
    return await new_account(core, http)


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    """A real webhook receiver on loopback, shared by a module's tests (each uses its own paths)."""
    async with run_receiver() as running:
        yield running
