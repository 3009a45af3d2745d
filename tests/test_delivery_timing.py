"""Wall-clock behaviour: the full default retry schedule and the 10 s deadline per attempt.

Both run in one test, concurrently, so the module costs about as long as the schedule (~31 s). The tests
assert order, counts and "never before the schedule"; how late a retry may start under load is a
benchmark figure (bench/), not a test assertion.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import make_settings
from tests.delivery_support import create_webhook, publish, wait_for_status
from tests.receiver import Receiver, ok, sleep, status
from tests.support import Stack, run_stack
from webhooks.settings import DEFAULT_RETRY_SCHEDULE

# Seconds of clock skew allowed between the receiver's and the worker's view of "the scheduled time".
EARLY = 0.01


@pytest.fixture(scope="module")
async def stacks(
    mongodb_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Stack, Stack]]:
    """One stack with the default settings (schedule and timeout), one with a single attempt per delivery."""
    default = make_settings(mongodb_url, tmp_path_factory.mktemp("timing"))
    single = make_settings(
        mongodb_url,
        tmp_path_factory.mktemp("timing1"),
        retry_schedule=(0.0,),
    )
    assert default.retry_schedule == DEFAULT_RETRY_SCHEDULE and default.delivery_timeout == 10
    async with run_stack(default) as a, run_stack(single) as b:
        yield a, b


def trickle_headers_then_bytes(seconds: int) -> Any:
    """200 and its headers at once, then one body byte per second for ``seconds`` s."""

    async def answer(request: web.Request, n: int) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Length": str(seconds)})
        await response.prepare(request)
        for _ in range(seconds):
            await asyncio.sleep(1)
            await response.write(b".")
        return response

    return answer


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


async def full_schedule(stack: Stack, receiver: Receiver) -> None:
    # given a receiver that always fails, on the default schedule 0, 1, 2, 4, 8, 16
    account = await stack.account()
    p = f"/always-fails/{uuid.uuid4().hex[:6]}"
    await create_webhook(account.gql, receiver.url(p, status(500)))
    # when an event is published
    published = await publish(account.gql)
    delivery_id = published["event"]["deliveries"][0]["id"]
    done = await wait_for_status(account.gql, delivery_id, "FAILED", timeout=45)
    # then six attempts arrived, none before its time on the schedule (0, 1, 3, 7, 15 and 31 s)
    got = receiver.received[p]
    assert len(got) == 6
    expected = [sum(DEFAULT_RETRY_SCHEDULE[1 : k + 1]) for k in range(6)]
    assert expected == [0, 1, 3, 7, 15, 31]
    offsets = [r.at - got[0].at for r in got]
    for offset, planned in zip(offsets, expected, strict=True):
        assert offset >= planned - EARLY, (offsets, expected)
    for k, (before, after) in enumerate(itertools.pairwise(got), start=1):
        assert after.at - before.at >= DEFAULT_RETRY_SCHEDULE[k] - EARLY, (offsets, k)
    # and the log agrees: attempts in order, each started no earlier than the previous one said
    attempts = done["attempts"]
    assert [a["number"] for a in attempts] == [1, 2, 3, 4, 5, 6]
    assert [a["deliveryStatus"] for a in attempts] == ["PENDING"] * 5 + ["FAILED"]
    assert attempts[-1]["nextAttemptAt"] is None and done["nextAttemptAt"] is None
    for before, after in itertools.pairwise(attempts):
        assert ts(after["startedAt"]) >= ts(before["nextAttemptAt"]) - EARLY, (before, after)
    # and no seventh attempt comes: a later event to the same endpoint arrives, and it is the only newcomer
    receiver.behaviours[p] = ok
    probe = (await publish(account.gql))["event"]["deliveries"][0]["id"]
    arrived = await receiver.wait_for(p, 7)
    assert [r.headers["X-Webhook-Delivery"] for r in arrived] == [delivery_id] * 6 + [probe]


async def times_out(stack: Stack, receiver: Receiver, name: str, behaviour: Any) -> None:
    # given a receiver that does not finish its answer within the 10 s deadline
    account = await stack.account()
    p = f"/{name}/{uuid.uuid4().hex[:6]}"
    await create_webhook(account.gql, receiver.url(p, behaviour))
    # when an event is published
    published = await publish(account.gql)
    started = asyncio.get_running_loop().time()
    done = await wait_for_status(account.gql, published["event"]["deliveries"][0]["id"], "FAILED", timeout=20)
    elapsed = asyncio.get_running_loop().time() - started
    # then its one attempt failed as a timeout (the receiver would have answered 200 later), not before 10 s
    (attempt,) = done["attempts"]
    assert attempt["errorClass"] == "timeout", attempt
    assert attempt["durationMs"] >= 9_900, attempt
    assert elapsed >= 9.9
    assert len(receiver.received[p]) == 1


async def test_the_default_schedule_and_the_10_second_deadline_hold_on_the_wall_clock(
    stacks: tuple[Stack, Stack], receiver: Receiver
) -> None:
    default, single = stacks
    await asyncio.gather(
        full_schedule(default, receiver),
        times_out(single, receiver, "slow", sleep(12)),
        times_out(single, receiver, "trickle", trickle_headers_then_bytes(15)),
    )
