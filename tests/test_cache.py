"""The in-process caches' read-through: a record read while it changed is not kept."""

from __future__ import annotations

import asyncio

from webhooks.cache import TTLCache, read_through


async def test_a_record_loaded_across_an_invalidation_is_returned_but_not_kept() -> None:
    # given an empty cache and a load that is still reading when the record changes
    cache: TTLCache[str, int] = TTLCache(ttl=60)
    reading, changed = asyncio.Event(), asyncio.Event()

    async def load(keys: list[str]) -> dict[str, int]:
        reading.set()
        await changed.wait()
        return dict.fromkeys(keys, 1)  # read before the change

    lookup = asyncio.create_task(read_through(cache, ["hook"], load))
    await reading.wait()
    # when the change drops the record meanwhile
    cache.drop("hook")
    changed.set()
    # then the caller gets what was read, and the next lookup reads again
    assert await lookup == {"hook": 1}
    assert cache.get("hook") is None


async def test_a_record_loaded_with_no_change_meanwhile_is_kept() -> None:
    cache: TTLCache[str, int] = TTLCache(ttl=60)

    async def load(keys: list[str]) -> dict[str, int]:
        return dict.fromkeys(keys, 2)

    assert await read_through(cache, ["hook"], load) == {"hook": 2}
    assert cache.get("hook") == 2
