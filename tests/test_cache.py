"""The in-process caches' read-through: a record read while it changed is not kept."""

from __future__ import annotations

import asyncio

from webhooks.cache import SizedLRU, TTLCache, read_through


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


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Store:
    """A load that counts its calls and answers the current values (absent keys are deleted records)."""

    def __init__(self, **values: int) -> None:
        self.values = values
        self.loads: list[list[str]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def load(self, keys: list[str]) -> dict[str, int]:
        self.loads.append(keys)
        await self.release.wait()
        return {k: self.values[k] for k in keys if k in self.values}


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_an_entry_read_late_in_its_lifetime_is_served_and_reloaded_in_the_background() -> None:
    # given a record cached with a 1 s lifetime, which then changes in the store
    clock, store = Clock(), Store(hook=1)
    cache: TTLCache[str, int] = TTLCache(ttl=1.0, clock=clock)
    assert await read_through(cache, ["hook"], store.load) == {"hook": 1}
    store.values["hook"] = 2
    # when it is read early in its lifetime, then it is served with no load
    clock.now = 0.5
    assert await read_through(cache, ["hook"], store.load) == {"hook": 1}
    assert len(store.loads) == 1
    # when it is read late in its lifetime, then it is served at once and reloaded behind the caller
    clock.now = 0.8
    assert await read_through(cache, ["hook"], store.load) == {"hook": 1}
    await settle()
    assert store.loads == [["hook"], ["hook"]]
    # and past the first lifetime, the reloaded record is served without another load
    clock.now = 1.5
    assert await read_through(cache, ["hook"], store.load) == {"hook": 2}
    assert len(store.loads) == 2


async def test_a_background_reload_that_spans_an_invalidation_is_not_kept() -> None:
    # given a record due for a refresh whose reload is still reading when the record changes
    clock, store = Clock(), Store(hook=1)
    cache: TTLCache[str, int] = TTLCache(ttl=1.0, clock=clock)
    await read_through(cache, ["hook"], store.load)
    clock.now = 0.9
    store.release.clear()
    await read_through(cache, ["hook"], store.load)
    await settle()
    # when the change drops the record meanwhile, and the reload then ends
    cache.drop("hook")
    store.release.set()
    await settle()
    # then the next read loads again
    assert cache.get("hook") is None


async def test_a_record_gone_on_reload_leaves_the_cache_and_one_reload_runs_at_a_time() -> None:
    # given a record due for a refresh, deleted from the store, and a slow reload
    clock, store = Clock(), Store(hook=1)
    cache: TTLCache[str, int] = TTLCache(ttl=1.0, clock=clock)
    await read_through(cache, ["hook"], store.load)
    del store.values["hook"]
    clock.now = 0.9
    store.release.clear()
    # when it is read three times while its reload is under way
    for _ in range(3):
        assert await read_through(cache, ["hook"], store.load) == {"hook": 1}
    await settle()
    # then one reload ran, and once it ends the deleted record is no longer served
    assert len(store.loads) == 2
    store.release.set()
    await settle()
    assert cache.get("hook") is None


def test_a_sized_cache_keeps_at_most_its_entry_budget_and_drops_the_least_recently_used() -> None:
    # given a cache with room for many bytes but only three entries
    cache: SizedLRU[str, bytes] = SizedLRU(1 << 20, len, max_entries=3)
    for key in ("a", "b", "c"):
        cache.put(key, b"x")
    assert cache.get("a") == b"x"  # "a" is now the most recently used
    # when a fourth entry comes
    cache.put("d", b"x")
    # then the least recently used one ("b") has left, and the others stay
    assert [k for k in "abcd" if cache.get(k) is not None] == ["a", "c", "d"]


def test_a_sized_cache_still_drops_by_bytes() -> None:
    cache: SizedLRU[str, bytes] = SizedLRU(10, len, max_entries=100)
    cache.put("a", b"123456")
    cache.put("b", b"123456")
    assert (cache.get("a"), cache.get("b")) == (None, b"123456")
