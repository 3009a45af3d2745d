"""The worker's dispatch loop: claim due attempts from the lanes, run each on its own, sleep until more.

Up to ``worker_max_in_flight`` attempts run at once in one process; each is an asyncio task, so a slow
receiver holds one task (and one slot of its own webhook), never a worker. The loop sleeps until a wake
token (an enqueue or a freed slot, pushed by ``webhooks.lanes``), the next due attempt (timed by asyncio,
so retries fire on time), a local attempt finishing, or ``MAX_IDLE_WAIT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from webhooks.lanes import Claimed, ClaimRequest, Lanes
from webhooks.timeutil import utcnow

log = logging.getLogger(__name__)

MAX_IDLE_WAIT = 1.0  # seconds: the longest sleep, so a missed wake token costs at most this
CLAIM_BATCH = 200  # attempts taken per claim (one Lua call)
SLOT_TTL = 6.0  # seconds: a slot's lease, renewed while its attempt runs; a dead worker's slots expire
SLOT_RENEW = 2.0
# Attempts are claimed this much before they fall due, so that loading them (a store round trip for a
# retry) happens before the due time; the engine then waits for the due time itself (never sends early).
LOOKAHEAD = timedelta(milliseconds=50)


class Dispatcher:
    def __init__(
        self,
        *,
        redis: Redis,
        lanes: Lanes,
        attempt: Callable[[Claimed], Coroutine[Any, Any, None]],
        max_in_flight: int,
        attach: str = "",
    ) -> None:
        self._redis = redis
        self._lanes = lanes
        self._attempt = attempt
        self._max = max_in_flight
        self._attach = attach  # a claim also reads the handed-off events of its first attempts
        self._tasks: dict[asyncio.Task[None], Claimed] = {}
        self._reserved = 0  # room held for claims made with a release (``reserve``)
        self._renewer: asyncio.Task[None] | None = None
        self._woken = asyncio.Event()
        self._claiming = True

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def run(self) -> None:
        listener = asyncio.create_task(self._listen())
        self._renewer = asyncio.create_task(self._renew())  # until drained: running attempts keep slots
        try:
            while self._claiming:
                self._woken.clear()
                full, next_due = await self._claim()
                if not full:  # after a full batch there may be more: claim again at once
                    await self._sleep(next_due)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    def wake(self) -> None:
        """A slot was freed here: claim again (the release's wake token in Redis would do it a hop later)."""
        self._woken.set()

    def reserve(self) -> ClaimRequest | None:
        """A claim for the engine to make in the same call as a release (the slots freed are taken again
        without a round trip of their own), or None when this worker has no room or is stopping. Its room
        is held until ``adopt``."""
        want = min(self._max - len(self._tasks) - self._reserved, CLAIM_BATCH)
        if not self._claiming or want <= 0:
            return None
        self._reserved += want
        return ClaimRequest(utcnow() + LOOKAHEAD, want, slot_seconds=SLOT_TTL, attach=self._attach)

    def adopt(self, request: ClaimRequest, claimed: list[Claimed]) -> None:
        """Run what a reserved claim took (nothing, if it failed), and free the rest of its room."""
        self._reserved -= request.max_items
        self._start(claimed)

    def stop_claiming(self) -> None:
        """From a signal handler: take no new attempts (running ones go on)."""
        self._claiming = False
        self._woken.set()

    async def drain(self, wait: float) -> None:
        """Stop claiming; give running attempts ``wait`` seconds, then cancel the rest (they go back to their
        lanes, see ``DeliveryEngine.run``)."""
        self.stop_claiming()
        deadline = asyncio.get_running_loop().time() + wait
        late: set[asyncio.Task[None]] = set()
        # (again while attempts remain: a claim made with a release just before the stop adds some)
        while self._tasks and not late:
            left = max(0.0, deadline - asyncio.get_running_loop().time())
            _, late = await asyncio.wait(set(self._tasks), timeout=left)
        for task in late:
            task.cancel()
        if late:
            log.warning("cancelled %d attempts still running after %.0f s", len(late), wait)
            await asyncio.wait(late)
        log.info("dispatcher stopped: %d attempts cancelled", len(late))
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer

    async def _claim(self) -> tuple[bool, datetime | None]:
        """Start what is due; whether a full batch was taken, and when the next attempt falls due."""
        free = self._max - len(self._tasks) - self._reserved
        if free <= 0:
            return False, None  # woken when a running attempt finishes
        want = min(free, CLAIM_BATCH)
        try:
            claimed, next_due = await self._lanes.claim(
                utcnow() + LOOKAHEAD, want, slot_seconds=SLOT_TTL, attach=self._attach
            )
        except Exception:
            log.warning("could not claim attempts; retrying", exc_info=True)
            return False, None
        self._start(claimed)
        return len(claimed) == want, next_due

    def _start(self, claimed: list[Claimed]) -> None:
        for c in claimed:
            task = asyncio.create_task(self._attempt(c))
            self._tasks[task] = c
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("attempt failed unexpectedly", exc_info=task.exception())
        self._woken.set()

    async def _sleep(self, next_due: datetime | None) -> None:
        wait = MAX_IDLE_WAIT
        if next_due is not None:
            wait = min(wait, max(0.0, (next_due - LOOKAHEAD - utcnow()).total_seconds()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), timeout=wait)

    async def _renew(self) -> None:
        """Renew the slots of running attempts, however long they wait for a slow receiver or store."""
        while True:
            await asyncio.sleep(SLOT_RENEW)
            try:
                until = utcnow() + timedelta(seconds=SLOT_TTL)
                await self._lanes.extend([c.item for c in self._tasks.values()], until)
            except Exception:
                log.warning("could not renew %d attempt slots", len(self._tasks), exc_info=True)

    async def _listen(self) -> None:
        """Block on the wake list (one Redis call per token, or per idle second) and set ``_woken``."""
        while True:
            try:
                got: Awaitable[object] = self._redis.blpop([self._lanes.wake_key], timeout=1)  # type: ignore[assignment]
                if await got:
                    self._woken.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("wake-up listener lost Redis; retrying", exc_info=True)
                self._woken.set()  # fall back to polling while Redis is away
                await asyncio.sleep(MAX_IDLE_WAIT)
