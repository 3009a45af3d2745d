"""The coalescer: concurrent calls share one batch, and each batch is timed for the step's metric."""

from __future__ import annotations

import asyncio

import pytest

from webhooks.coalesce import Coalescer


async def test_concurrent_calls_share_a_batch_and_each_batch_is_reported() -> None:
    # given a coalescer whose batches are reported, and a batch that takes a moment
    reported: list[tuple[int, float]] = []
    release = asyncio.Event()

    async def double(items: list[int]) -> list[int]:
        await release.wait()
        return [2 * i for i in items]

    coalescer = Coalescer(double, on_batch=lambda size, seconds: reported.append((size, seconds)))
    # when one call runs alone, and three more arrive while its batch is running
    first = asyncio.create_task(coalescer.call(1))
    await asyncio.sleep(0.01)
    rest = [asyncio.create_task(coalescer.call(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0.01)
    release.set()
    # then each caller gets its own answer
    assert await first == 2 and [await r for r in rest] == [4, 6, 8]
    # and two batches were reported: the lone call's, and the three that waited for it (and the first one
    # lasted as long as it was held)
    assert [size for size, _ in reported] == [1, 3]
    assert reported[0][1] >= 0.01


async def test_a_failed_batch_is_reported_too_and_fails_only_its_callers() -> None:
    # given a coalescer whose batch function fails
    reported: list[int] = []

    async def broken(items: list[int]) -> list[int]:
        raise RuntimeError("store down")

    coalescer = Coalescer(broken, on_batch=lambda size, seconds: reported.append(size))
    # when two callers share a batch
    calls = [asyncio.create_task(coalescer.call(i)) for i in (1, 2)]
    # then both get the error, and the batch is still timed
    for call in calls:
        with pytest.raises(RuntimeError, match="store down"):
            await call
    assert reported == [2]
