"""Small in-process caches that keep store round trips off the hot paths.

``TTLCache`` answers repeated lookups (API keys, webhooks) for at most ``ttl`` seconds; writers also drop
entries at once through ``webhooks.invalidation``, so the TTL is only the backstop. An entry read after
``REFRESH_AT`` of its lifetime is still served, and reloaded in the background (refresh-ahead): a key read
all the time never expires on the path that reads it (the reload waits until the request that found it due
has been answered: ``webhooks.deferral``). Without that, one request in four of a caller
publishing every 250 ms waited for its API key and webhooks to be read again from a busy store (the tail of
bench P8 "huge"). ``SizedLRU`` holds immutable records (event bodies) up to a byte and an entry budget.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Hashable
from typing import Generic, Protocol, TypeVar

from webhooks import deferral

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

log = logging.getLogger(__name__)

REFRESH_AT = 0.75  # share of an entry's lifetime after which a read of it starts a background reload

Load = Callable[[list[K]], Awaitable[dict[K, V]]]


class TTLCache(Generic[K, V]):
    def __init__(
        self, ttl: float, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.generation = 0  # moves on at every drop: a read that spans one may be stale (``read_through``)
        self._refreshing: set[K] = set()

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

    def claim_refresh(self, key: K) -> bool:
        """Whether the caller is to reload ``key`` in the background (``refresh``): it is cached, past
        ``REFRESH_AT`` of its lifetime, and no reload of it is under way."""
        found = self._entries.get(key)
        if found is None or key in self._refreshing:
            return False
        if found[0] - self._clock() > self._ttl * (1 - REFRESH_AT):
            return False
        self._refreshing.add(key)
        return True

    def refresh(self, keys: list[K], load: Load[K, V]) -> None:
        """Reload ``keys`` in a task, once the current request has been answered (``webhooks.deferral``).
        What it reads is kept only if nothing was dropped meanwhile; a key it no longer finds (deleted,
        revoked) leaves the cache. Meanwhile the entries are served until they expire."""
        deferral.later(lambda: self._reload(keys, load))

    async def _reload(self, keys: list[K], load: Load[K, V]) -> None:
        generation = self.generation
        try:
            loaded = await load(keys)
        except Exception as exc:
            log.warning("could not refresh %d cache entries (%s); they expire", len(keys), type(exc).__name__)
            return
        finally:
            self._refreshing.difference_update(keys)
        if self.generation != generation:
            return
        for key in keys:
            if key in loaded:
                self.put(key, loaded[key])
            else:
                self._entries.pop(key, None)


class SizedLRU(Generic[K, V]):
    """Least recently used entries leave first once the sizes add up to more than ``max_bytes``, or there are
    more than ``max_entries`` of them. Its records never change: nothing is refreshed."""

    def __init__(self, max_bytes: int, size: Callable[[V], int], max_entries: int = 1 << 62) -> None:
        self._max = max_bytes
        self._max_entries = max_entries
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
        while self._entries and (self._used > self._max or len(self._entries) > self._max_entries):
            _, evicted = self._entries.popitem(last=False)
            self._used -= self._size(evicted)

    def claim_refresh(self, key: K) -> bool:
        return False

    def refresh(self, keys: list[K], load: Load[K, V]) -> None:
        return None


class _Cache(Protocol[K, V]):
    generation: int

    def get(self, key: K) -> V | None: ...
    def put(self, key: K, value: V) -> None: ...
    def claim_refresh(self, key: K) -> bool: ...
    def refresh(self, keys: list[K], load: Load[K, V]) -> None: ...


async def read_through(cache: _Cache[K, V], keys: Collection[K], load: Load[K, V]) -> dict[K, V]:
    """The cached values of ``keys``, loading the missing ones in one call (absent keys stay absent); those
    due for a refresh are served and reloaded in the background.

    What was loaded is kept only if nothing was dropped while it loaded: a read that started before a
    change and ended after its invalidation would otherwise keep the old record for a whole TTL."""
    found = {k: v for k in keys if (v := cache.get(k)) is not None}
    due = [k for k in found if cache.claim_refresh(k)]
    if due:
        cache.refresh(due, load)
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
