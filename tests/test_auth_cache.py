"""API keys are answered from a short in-process cache, and a revocation still reaches every API process at
once: two real `webhooks serve` processes, a cache TTL far longer than the test, and a revocation made by a
third process (this one). Only the Redis pub/sub invalidation can make the keys stop working."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.conftest import make_settings
from tests.support import service_env
from tests.test_bad_input import start_serve
from webhooks.core import open_core
from webhooks.models import Scope
from webhooks_cli.embedded import free_port, stop, wait_for_port

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
    ports = [free_port(), free_port()]
    procs = [start_serve(env, port, tmp_path / f"serve-{i}.log") for i, port in enumerate(ports)]
    try:
        for port, proc in zip(ports, procs, strict=True):
            await asyncio.to_thread(wait_for_port, port, proc, "webhooks serve")
        async with open_core(settings) as core:
            # given a key that both API processes have accepted (and cached)
            account_id = await core.accounts.create("acct")
            key = await core.api_keys.issue(account_id, frozenset(Scope))
            principal = await core.api_keys.authenticate(key)
            assert principal is not None
            clients = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{p}", timeout=30) for p in ports]
            try:
                assert [await answers(c, key) for c in clients] == ["ok", "ok"]
                # when it is revoked (from another process)
                assert await core.api_keys.revoke(account_id, principal.key_id)
                # then both API processes refuse it, long before their cache entries would expire
                async with asyncio.timeout(10):
                    while [await answers(c, key) for c in clients] != ["UNAUTHENTICATED"] * 2:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
            finally:
                for client in clients:
                    await client.aclose()
    finally:
        for proc in procs:
            stop(proc)
