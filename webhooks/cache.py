"""Small in-process caches that keep store round trips off the hot paths.

``TTLCache`` answers repeated lookups (API keys, webhooks) for at most ``ttl`` seconds; writers also drop
entries at once through ``webhooks.invalidation``, so the TTL is only the backstop. ``SizedLRU`` holds
immutable records (event bodies) up to a byte budget.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Hashable
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    def __init__(
        self, ttl: float, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.generation = 0  # moves on at every drop: a read that spans one may be stale (``read_through``)

    def get(self, key: K) -> V | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, value = found
        if expires <= self._clock():
            del self._entries[key]
            return None
        return value

    def put(self, key: K, value: V) -> None:
        self._entries[key] = (self._clock() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def drop(self, key: K) -> None:
        self.generation += 1
        self._entries.pop(key, None)

    def drop_where(self, predicate: Callable[[K, V], bool]) -> None:
        self.generation += 1
        for key in [k for k, (_, v) in self._entries.items() if predicate(k, v)]:
            del self._entries[key]

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()


class SizedLRU(Generic[K, V]):
    """Least recently used entries leave first once the sizes add up to more than ``max_bytes``."""

    def __init__(self, max_bytes: int, size: Callable[[V], int]) -> None:
        self._max = max_bytes
        self._size = size
        self._used = 0
        self._entries: OrderedDict[K, V] = OrderedDict()
        self.generation = 0  # nothing is dropped: entries only leave by size

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._used -= self._size(old)
        self._entries[key] = value
        self._used += self._size(value)
        while self._used > self._max and self._entries:
            _, evicted = self._entries.popitem(last=False)
            self._used -= self._size(evicted)


KC = TypeVar("KC", bound=Hashable, contravariant=True)


class _Cache(Protocol[KC, V]):
    generation: int

    def get(self, key: KC) -> V | None: ...
    def put(self, key: KC, value: V) -> None: ...


async def read_through(
    cache: _Cache[K, V], keys: Collection[K], load: Callable[[list[K]], Awaitable[dict[K, V]]]
) -> dict[K, V]:
    """The cached values of ``keys``, loading the missing ones in one call (absent keys stay absent).

    What was loaded is kept only if nothing was dropped while it loaded: a read that started before a
    change and ended after its invalidation would otherwise keep the old record for a whole TTL."""
    found = {k: v for k in keys if (v := cache.get(k)) is not None}
    missing = [k for k in keys if k not in found]
    if missing:
        generation = cache.generation
        loaded = await load(missing)
        keep = cache.generation == generation
        for key, value in loaded.items():
            if keep:
                cache.put(key, value)
            found[key] = value
    return found
