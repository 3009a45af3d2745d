"""API keys are answered from a short in-process cache, and a revocation still reaches every API process at
once: two real `webhooks serve` processes, a cache TTL far longer than the test, and a revocation made by a
third process (this one). Only the Redis pub/sub invalidation can make the keys stop working."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.conftest import make_settings
from tests.support import served_api, service_env
from webhooks.core import open_core
from webhooks.models import Scope

QUERY = {"query": "{ webhooks { edges { cursor } } }"}
CACHE_TTL = "600"  # seconds: longer than the test, so only an invalidation message can end a cached key


async def answers(client: httpx.AsyncClient, key: str) -> str:
    """``ok``, or the error code of the answer."""
    body = (await client.post("/graphql", json=QUERY, headers={"Authorization": f"Bearer {key}"})).json()
    if body.get("errors"):
        return str(body["errors"][0]["extensions"]["code"])
    return "ok"


async def test_a_revoked_key_stops_working_in_every_api_process_at_once(
    mongodb_url: str, tmp_path: Path
) -> None:
    settings = make_settings(mongodb_url, tmp_path, auth_cache_ttl=600)
    env = service_env(settings, WEBHOOKS_AUTH_CACHE_TTL=CACHE_TTL)
    async with (
        served_api(env, tmp_path / "serve-0.log") as first,
        served_api(env, tmp_path / "serve-1.log") as second,
        open_core(settings) as core,
    ):
        # given a key that both API processes have accepted (and cached)
        account_id = await core.accounts.create("acct")
        key = await core.api_keys.issue(account_id, frozenset(Scope))
        principal = await core.api_keys.authenticate(key)
        assert principal is not None
        async with (
            httpx.AsyncClient(base_url=first.url, timeout=30) as one,
            httpx.AsyncClient(base_url=second.url, timeout=30) as other,
        ):
            clients = [one, other]
            assert [await answers(c, key) for c in clients] == ["ok", "ok"]
            # when it is revoked (from another process)
            assert await core.api_keys.revoke(account_id, principal.key_id)
            # then both API processes refuse it, long before their cache entries would expire
            async with asyncio.timeout(10):
                while [await answers(c, key) for c in clients] != ["UNAUTHENTICATED"] * 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
