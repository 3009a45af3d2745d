"""The sweeper's pager: what its reads cost the store when a backlog sits in the outbox.

SecantusDB charges a read for every document its window matches, whatever the limit, so the cost here is
the number of documents each window matches (not the number returned)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from workers import sweeper
from workers.sweeper import SWEEP_BATCH, Pager

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
FLOOR = NOW - timedelta(days=30)


class Backlog:
    """Open events: a few old stragglers, then 10,000 published over the last 40 seconds.

    Read as the store reads them: in key order, after a key, at most a batch, with the key to go on after
    when a batch came back full. ``grain`` is what a key's time holds: outbox ids hold whole seconds, so a
    window reads its bounds' whole seconds."""

    def __init__(self, grain: timedelta | None = None) -> None:
        self.times = [NOW - timedelta(days=d) for d in (20, 10, 3)]
        self.times += [NOW - timedelta(seconds=40) + timedelta(milliseconds=4 * i) for i in range(10_000)]
        self.grain = grain
        self.matched = 0  # what the store paid
        self.returned: list[datetime] = []

    def _cut(self, t: datetime) -> datetime:
        return t if self.grain is None else t - (t - FLOOR) % self.grain

    async def scan(self, lower: datetime, upper: datetime, after: object | None) -> tuple[int, object | None]:
        lo, hi = self._cut(lower), self._cut(upper)
        found = sorted(t for t in self.times if lo <= self._cut(t) < hi)
        self.matched += len(found)
        page = [t for t in found if after is None or t > cast(datetime, after)][:SWEEP_BATCH]
        self.returned += page
        return len(page), page[-1] if len(page) == SWEEP_BATCH else None


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweeper, "WINDOW_PAUSE", 0)


async def one_pass(pager: Pager, backlog: Backlog) -> int:
    """Ticks until the pager has been through the whole range once; how many ticks it took."""
    ticks = 0
    while True:
        await pager.tick(FLOOR, NOW, backlog.scan)
        ticks += 1
        if pager.at is None:
            return ticks


async def test_a_pass_reaches_every_open_event() -> None:
    # given a backlog and a new pager
    backlog, pager = Backlog(), Pager()
    # when it makes one pass
    await one_pass(pager, backlog)
    # then every open event was returned to the sweeper, and its reads matched each about once: windows
    # narrow as they near the present, so none of them held the whole backlog
    assert set(backlog.returned) == set(backlog.times)
    assert backlog.matched < 1.5 * len(backlog.times)


async def test_a_second_holding_more_than_a_batch_is_read_whole() -> None:
    # given 60 open events in one second, among others, read by keys that hold whole seconds (outbox ids)
    backlog, pager = Backlog(grain=timedelta(seconds=1)), Pager()
    burst = NOW - timedelta(seconds=3, milliseconds=-500)
    backlog.times = sorted(backlog.times[:3] + [burst + timedelta(milliseconds=i) for i in range(60)])
    # when the pager makes a pass
    await one_pass(pager, backlog)
    # then every one of them was returned, though no window narrower than a second can split them
    assert set(backlog.returned) == set(backlog.times)


async def test_later_passes_go_straight_to_the_width_that_fits_the_backlog() -> None:
    # given a pager that has been through a backlog once
    backlog, pager = Backlog(), Pager()
    await one_pass(pager, backlog)
    first = backlog.matched
    for _ in range(2):
        # when it makes another pass over the same backlog
        backlog.matched, backlog.returned = 0, []
        await one_pass(pager, backlog)
        # then it still reaches every event, and its reads match each document about once
        assert set(backlog.returned) == set(backlog.times)
        assert backlog.matched <= first
        assert backlog.matched < 1.1 * len(backlog.times)


async def test_an_idle_pass_costs_few_reads() -> None:
    # given an empty outbox and a pager that has been through it once
    empty, pager = Backlog(), Pager()
    empty.times = []
    await one_pass(pager, empty)
    reads = 0

    async def counting(lower: datetime, upper: datetime, after: object | None) -> tuple[int, object | None]:
        nonlocal reads
        reads += 1
        return await empty.scan(lower, upper, after)

    # when it makes another pass
    await pager.tick(FLOOR, NOW, counting)
    while pager.at is not None:
        await pager.tick(FLOOR, NOW, counting)
    # then it read the 30 days in day-wide windows (each an empty, cheap read)
    assert reads <= 32
