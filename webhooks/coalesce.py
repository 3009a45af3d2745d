"""Coalesce concurrent calls into batches: one database round trip serves every caller of the moment.

While a batch runs, new calls queue up; when it ends, all of them go out as the next batch. An idle system
therefore adds no delay (a lone call runs at once), and a busy one makes fewer, larger writes. One batch
runs at a time, so the share of time a coalescer spends in its batches says how close that step is to its
limit (``on_batch``: the ``webhooks_batch_seconds`` metric).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    def __init__(
        self,
        batch: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 1000,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        """``on_batch(size, seconds)``: told after each batch, whether it succeeded or raised."""
        self._batch = batch
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._running: asyncio.Task[None] | None = None

    async def call(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._running is None:
            self._running = asyncio.create_task(self._drain())
        return await asyncio.shield(future)  # a cancelled caller does not cancel the others' batch

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # let every caller of this loop iteration join the first batch
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                started = time.perf_counter()
                try:
                    results = await self._batch([item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                finally:
                    if self._on_batch is not None:
                        self._on_batch(len(batch), time.perf_counter() - started)
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._running = None
