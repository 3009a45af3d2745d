"""Delivery isolation: one webhook's dead or slow endpoint never delays another's deliveries.

Real parts: Redis lanes, SecantusDB, the API over HTTP, in-process and subprocess workers, and receivers that
hang, answer slowly or count their concurrent requests.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from bson import ObjectId

from tests.conftest import make_settings, session_redis_url
from tests.delivery_support import create_webhook, delivery, publish, wait_for_status
from tests.receiver import Behaviour, Receiver, ok, sleep
from tests.support import GraphQLClient, Stack, run_stack
from tests.test_delivery_processes import workers
from webhooks.handoff import EventHandoff
from webhooks.lanes import ClaimRequest, Enqueue, Finished, Kind, LaneItem, Lanes, Outcome
from webhooks.models import Event
from webhooks.timeutil import utcnow

DEADLINE = 1.5  # seconds: the attempt deadline of these tests (the spec's 10 s, scaled down)


@pytest.fixture(scope="module")
async def stack(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = make_settings(
        mongodb_url,
        tmp_path_factory.mktemp("isolation"),
        delivery_timeout=DEADLINE,
        retry_schedule=(0.0, 60.0),
        webhook_max_in_flight=3,
        breaker_open_after=3,
    )
    async with run_stack(settings) as running:
        yield running


@dataclass
class Concurrency:
    """A receiver behaviour that holds each request ``hold`` seconds and records the peak concurrency."""

    hold: float
    now: int = 0
    peak: int = 0

    async def __call__(self, request: web.Request, n: int) -> web.StreamResponse:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(self.hold)
        finally:
            self.now -= 1
        return web.Response(text="OK")


WEBHOOK_STATE = """
query($id: ID!) {
  webhook(id: $id) { id maxInFlight breaker { state since unreachableStreak inFlight waiting } }
}
"""


async def breaker_state(gql: GraphQLClient, webhook_id: str) -> dict[str, Any]:
    found: dict[str, Any] = (await gql.execute(WEBHOOK_STATE, {"id": webhook_id}))["webhook"]["breaker"]
    return found


async def breaker_becomes(gql: GraphQLClient, webhook_id: str, wanted: Callable[[str], bool]) -> None:
    async with asyncio.timeout(30):
        while not wanted((await breaker_state(gql, webhook_id))["state"]):  # noqa: ASYNC110 - polls the API
            await asyncio.sleep(0.1)


# -- the scheduling algorithm, on a real Redis ---------------------------------------------------------


@pytest.fixture
async def lanes() -> AsyncIterator[Lanes]:
    redis = aioredis.Redis.from_url(session_redis_url())
    yield Lanes(redis, f"test-lanes:{uuid.uuid4().hex[:8]}", default_limit=5)
    await redis.aclose()


@pytest.fixture
async def handoff(lanes: Lanes) -> AsyncIterator[EventHandoff]:
    """The API's event hand-off, under the same queue name as ``lanes``."""
    redis = aioredis.Redis.from_url(session_redis_url())
    yield EventHandoff(redis, lanes.prefix, ttl=60)
    await redis.aclose()


def items(webhook: str, count: int) -> list[LaneItem]:
    return [LaneItem(webhook, f"{i:024x}", 1, "e" * 24, Kind.NEW) for i in range(count)]


async def test_a_huge_backlog_costs_a_single_event_one_turn(lanes: Lanes) -> None:
    # given one webhook with 1,000 due attempts queued first, then another webhook with one
    now = utcnow()
    backlog = items("a" * 24, 1000)
    await lanes.add([Enqueue(i, due=now - timedelta(seconds=1), limit=100) for i in backlog])
    await lanes.add([Enqueue(items("b" * 24, 1)[0], due=now, limit=100)])
    # when a worker claims 20 attempts
    claimed, _ = await lanes.claim(now + timedelta(milliseconds=1), 20, slot_seconds=5, quantum=10)
    # then the single attempt is among them: the backlog got one turn, not 1,000
    assert "b" * 24 in {c.item.webhook_id for c in claimed}
    assert len(claimed) == 20


async def test_a_claim_brings_the_handed_off_events_of_its_first_attempts(
    lanes: Lanes, handoff: EventHandoff
) -> None:
    # given an event handed off by the API, a first attempt of it, a first attempt of an event that was not
    # handed off, and a retry (whose delivery is stored: the engine reads it from MongoDB)
    event = Event(ObjectId(), ObjectId(), "candidate_hired", b'{"event":"candidate_hired"}', utcnow())
    await handoff.put([event])
    hook, now = "a" * 24, utcnow()
    first = LaneItem(hook, str(ObjectId()), 1, str(event.id), Kind.NEW)
    unknown = LaneItem(hook, str(ObjectId()), 1, str(ObjectId()), Kind.NEW)
    retry = LaneItem(hook, str(ObjectId()), 2, str(event.id), Kind.STORED)
    await lanes.add([Enqueue(i, due=now, limit=5) for i in (first, unknown, retry)])
    # when a worker claims them, asking for the handed-off copies
    claimed, _ = await lanes.claim(now, 10, slot_seconds=5, attach=handoff.key_prefix)
    # then the first attempt carries its event, as the API stored it; the others carry nothing
    attached = {c.item: c.attached for c in claimed}
    assert set(attached) == {first, unknown, retry}
    copy = attached[first]
    assert copy is not None and handoff.decode(copy) == event
    assert attached[unknown] is None and attached[retry] is None


async def test_a_claim_without_attach_reads_no_event(lanes: Lanes, handoff: EventHandoff) -> None:
    # given a handed-off event's first attempt
    event = Event(ObjectId(), ObjectId(), "candidate_hired", b"{}", utcnow())
    await handoff.put([event])
    now = utcnow()
    await lanes.add(
        [Enqueue(LaneItem("a" * 24, str(ObjectId()), 1, str(event.id), Kind.NEW), due=now, limit=5)]
    )
    # when it is claimed without asking for copies (what a worker passes when the hand-off is switched off)
    claimed, _ = await lanes.claim(now, 10, slot_seconds=5, attach="")
    # then it carries nothing: the engine reads the event as before
    assert [c.attached for c in claimed] == [None]


def test_a_switched_off_hand_off_gives_claims_nothing_to_read() -> None:
    # given the hand-off switched off (``WEBHOOKS_EVENT_HANDOFF_TTL=0``), then claims read no copies
    assert EventHandoff(aioredis.Redis(), "q", ttl=0).key_prefix == ""
    assert EventHandoff(aioredis.Redis(), "q", ttl=120).key_prefix == "q:handoff:"


async def test_a_webhook_at_its_limit_waits_and_holds_no_claim(lanes: Lanes) -> None:
    # given a webhook limited to 2 in flight with 10 due attempts, and another webhook with 3
    now = utcnow()
    await lanes.add([Enqueue(i, due=now, limit=2) for i in items("a" * 24, 10)])
    await lanes.add([Enqueue(i, due=now, limit=5) for i in items("b" * 24, 3)])
    later = now + timedelta(milliseconds=1)
    # when claims go on until nothing more is claimable
    first, _ = await lanes.claim(later, 100, slot_seconds=5)
    second, _ = await lanes.claim(later, 100, slot_seconds=5)
    # then the limited webhook has exactly 2 attempts out, the other all of its 3, and nothing else is given
    by_webhook = {w: [c for c in first if c.item.webhook_id == w] for w in ("a" * 24, "b" * 24)}
    assert len(by_webhook["a" * 24]) == 2 and len(by_webhook["b" * 24]) == 3
    assert second == []
    # and when one of its attempts finishes, exactly one more is given, marked as late because of the limit
    await lanes.release([Finished(by_webhook["a" * 24][0].item, Outcome.OK)], later, open_after=3)
    third, _ = await lanes.claim(later + timedelta(seconds=1), 100, slot_seconds=5)
    assert [c.item.webhook_id for c in third] == ["a" * 24]
    assert third[0].limited


async def test_a_release_can_claim_again_in_the_same_call(lanes: Lanes, handoff: EventHandoff) -> None:
    # given a webhook limited to 2 in flight with 4 due first attempts (their events handed off), 2 claimed
    event = Event(ObjectId(), ObjectId(), "candidate_hired", b"{}", utcnow())
    await handoff.put([event])
    now = utcnow()
    waiting = [LaneItem("e" * 24, str(ObjectId()), 1, str(event.id), Kind.NEW) for _ in range(4)]
    await lanes.add([Enqueue(i, due=now, limit=2) for i in waiting])
    later = now + timedelta(milliseconds=1)
    out, _ = await lanes.claim(later, 100, slot_seconds=5)
    assert len(out) == 2
    # when one of them finishes and its release claims in the same call
    request = ClaimRequest(later, 100, slot_seconds=5, attach=handoff.key_prefix)
    changes, again = await lanes.release_then_claim(
        [Finished(out[0].item, Outcome.OK)], later, open_after=3, claim=request
    )
    # then the freed slot is taken again, by the next attempt, with its event, marked late by the limit
    assert changes == []
    assert [c.item for c in again] == [waiting[2]]
    assert again[0].attached is not None and again[0].limited
    # and the webhook is at its limit again: a claim gets nothing
    assert (await lanes.claim(later, 100, slot_seconds=5))[0] == []


async def test_a_dead_workers_slots_expire(lanes: Lanes) -> None:
    # given a webhook limited to 1 whose only slot is held by a worker that then dies (never releases)
    now = utcnow()
    await lanes.add([Enqueue(i, due=now, limit=1) for i in items("a" * 24, 2)])
    held, _ = await lanes.claim(now, 10, slot_seconds=2)
    assert len(held) == 1
    blocked, _ = await lanes.claim(now + timedelta(seconds=1), 10, slot_seconds=2)
    assert blocked == []
    # when the slot's lease runs out
    freed, _ = await lanes.claim(now + timedelta(seconds=3), 10, slot_seconds=2)
    # then the next attempt goes out, and the sweeper may put the lost one back
    assert len(freed) == 1
    assert await lanes.absent([held[0].item], now + timedelta(seconds=3)) == [held[0].item]


async def test_consecutive_unreachable_attempts_open_the_breaker_and_a_success_closes_it(
    lanes: Lanes,
) -> None:
    now = utcnow()
    hook = "a" * 24
    await lanes.add([Enqueue(i, due=now, limit=5) for i in items(hook, 10)])
    claimed, _ = await lanes.claim(now, 3, slot_seconds=5)
    # when three attempts in a row cannot connect
    changes = await lanes.release([Finished(c.item, Outcome.UNREACHABLE) for c in claimed], now, open_after=3)
    # then the breaker opens: one probe at a time
    assert [(c.webhook_id, c.opened) for c in changes] == [(hook, True)]
    probe, _ = await lanes.claim(now, 10, slot_seconds=5)
    assert len(probe) == 1 and probe[0].breaker_open
    assert (await lanes.states([hook], now))[hook].breaker.value == "HALF_OPEN"
    # and when the probe succeeds, the breaker closes and the full limit applies again
    changes = await lanes.release([Finished(probe[0].item, Outcome.OK)], now, open_after=3)
    assert [(c.webhook_id, c.opened) for c in changes] == [(hook, False)]
    after, _ = await lanes.claim(now, 10, slot_seconds=5)
    assert len(after) == 5


async def test_an_answer_ends_an_unreachable_streak_but_only_a_success_closes_the_breaker(
    lanes: Lanes,
) -> None:
    now = utcnow()
    hook = "b" * 24
    await lanes.add([Enqueue(i, due=now, limit=1) for i in items(hook, 10)])

    async def attempt(outcome: Outcome) -> list[bool]:
        claimed, _ = await lanes.claim(now, 10, slot_seconds=5)
        assert len(claimed) == 1
        changes = await lanes.release([Finished(claimed[0].item, outcome)], now, open_after=3)
        return [c.opened for c in changes]

    # given two attempts that could not connect, then one answered 500, then two more unreachable
    for outcome in (Outcome.UNREACHABLE, Outcome.UNREACHABLE, Outcome.ANSWERED):
        assert await attempt(outcome) == []
    for _ in range(2):
        assert await attempt(Outcome.UNREACHABLE) == []
    # then the breaker is still closed: the answer broke the streak (two in a row now, three open it)
    state = (await lanes.states([hook], now))[hook]
    assert (state.breaker.value, state.unreachable_streak) == ("CLOSED", 2)
    # when a third in a row cannot connect, it opens; an answer from the probe does not close it
    assert await attempt(Outcome.UNREACHABLE) == [True]
    assert await attempt(Outcome.ANSWERED) == []
    assert (await lanes.states([hook], now))[hook].breaker.value != "CLOSED"
    # and a success does
    assert await attempt(Outcome.OK) == [False]


async def test_ordered_deliveries_waiting_for_their_turn_are_counted_apart_from_the_queue(
    lanes: Lanes,
) -> None:
    # given an ordered webhook with three deliveries of one resource and one of another (resource ids are
    # the customer's: any text)
    now = utcnow()
    hook = "c" * 24
    a1, a2, a3, b1 = items(hook, 4)
    ra, rb = 'cand "42" ü, x', "job 7\n[1]"
    gated = [(a1, ra, 1), (a2, ra, 2), (a3, ra, 3), (b1, rb, 1)]
    await lanes.add([Enqueue(i, due=now, limit=5, resource=r, seq=n) for i, r, n in gated])
    # then each resource's first is queued, and the two after the first resource's first wait their turn
    assert await lanes.depth() == 2
    assert await lanes.ordered_waiting() == 2
    # and when the first resource's first is final, its second is queued and one waits
    await lanes.advance([(hook, ra, a1.delivery_id)], now)
    assert await lanes.ordered_waiting() == 1


# -- the whole service -------------------------------------------------------------------------------


async def test_a_dead_endpoint_does_not_delay_another_account(stack: Stack, receiver: Receiver) -> None:
    # given account A whose endpoint never answers within the deadline, with a backlog of 30 events
    a, b = await stack.account(), await stack.account()
    dead, healthy = f"/dead/{uuid.uuid4().hex[:6]}", f"/ok/{uuid.uuid4().hex[:6]}"
    await create_webhook(a.gql, receiver.url(dead, sleep(DEADLINE * 4)))
    await create_webhook(b.gql, receiver.url(healthy, ok))
    backlog = [await publish(a.gql) for _ in range(30)]
    await receiver.wait_for(dead, 3)
    # when account B publishes 3 events
    mine = [await publish(b.gql) for _ in range(3)]
    ids = [p["event"]["deliveries"][0]["id"] for p in mine]
    # then B's deliveries all succeed while A's backlog is still waiting
    for i in ids:
        await wait_for_status(b.gql, i, "SUCCEEDED", timeout=30)
    statuses = [(await delivery(a.gql, p["event"]["deliveries"][0]["id"]))["status"] for p in backlog[-10:]]
    assert statuses.count("PENDING") == 10
    # and A's endpoint never had more than its limit (3) of attempts at once: each one holds its slot until
    # the deadline, so no 4 arrive within less than a deadline of each other
    assert most_within([r.at for r in receiver.received[dead]], DEADLINE * 0.8) <= 3


def most_within(times: list[float], window: float) -> int:
    """The most of ``times`` that fall within any span of ``window`` seconds."""
    ordered = sorted(times)
    return max((sum(1 for u in ordered[i:] if u - t < window) for i, t in enumerate(ordered)), default=0)


async def test_one_events_fan_out_never_waits_for_its_slowest_receiver(
    stack: Stack, receiver: Receiver
) -> None:
    # given two webhooks of one account: one hangs past the deadline, one answers at once
    account = await stack.account()
    slow, fast = f"/slow/{uuid.uuid4().hex[:6]}", f"/fast/{uuid.uuid4().hex[:6]}"
    slow_hook, _ = await create_webhook(account.gql, receiver.url(slow, sleep(DEADLINE * 4)))
    fast_hook, _ = await create_webhook(account.gql, receiver.url(fast, ok))
    # when one event is published
    published = await publish(account.gql)
    by_hook = {d["webhookId"]: d["id"] for d in published["event"]["deliveries"]}
    assert set(by_hook) == {slow_hook, fast_hook}
    # then the fast delivery has succeeded while the slow one is still in flight
    fast_result = await wait_for_status(account.gql, by_hook[fast_hook], "SUCCEEDED")
    assert fast_result["attempts"][0]["statusCode"] == 200
    assert (await delivery(account.gql, by_hook[slow_hook]))["status"] == "PENDING"


async def test_the_breaker_opens_on_a_dead_endpoint_and_closes_when_it_answers(
    stack: Stack, receiver: Receiver
) -> None:
    # given a webhook whose endpoint hangs past the deadline
    account = await stack.account()
    path = f"/flap/{uuid.uuid4().hex[:6]}"
    state: dict[str, Behaviour] = {"now": sleep(DEADLINE * 4)}

    async def switchable(request: web.Request, n: int) -> web.StreamResponse:
        return await state["now"](request, n)

    webhook_id, _ = await create_webhook(account.gql, receiver.url(path, switchable))
    # when 6 events are published (3 unreachable attempts open the breaker in these settings)
    for _ in range(6):
        await publish(account.gql)
    await breaker_becomes(account.gql, webhook_id, lambda s: s != "CLOSED")
    opened = await breaker_state(account.gql, webhook_id)
    # then it shows as open (or probing) since a known time
    assert opened["state"] in ("OPEN", "HALF_OPEN")
    assert opened["since"] is not None
    # and when the endpoint answers again, a probe succeeds and the breaker closes
    state["now"] = ok
    await publish(account.gql)
    await breaker_becomes(account.gql, webhook_id, lambda s: s == "CLOSED")


DELETE = "mutation($id: ID!) { deleteWebhook(id: $id) { deletedId errors { field code message } } }"


async def test_deleting_a_webhook_with_an_open_breaker_leaves_no_open_breaker(
    stack: Stack, receiver: Receiver
) -> None:
    # given a webhook whose endpoint hangs past the deadline, with its breaker open
    account = await stack.account()
    webhook_id, _ = await create_webhook(
        account.gql, receiver.url(f"/gone/{uuid.uuid4().hex[:6]}", sleep(DEADLINE * 4))
    )
    for _ in range(4):
        await publish(account.gql)
    await breaker_becomes(account.gql, webhook_id, lambda s: s != "CLOSED")
    lanes = stack.core.lanes
    # when it is deleted, and the probe it had in flight has ended
    deleted = (await account.gql.execute(DELETE, {"id": webhook_id}))["deleteWebhook"]
    assert deleted["errors"] == []
    deadline = time.monotonic() + 15
    while (await lanes.states([webhook_id], utcnow()))[webhook_id].in_flight:
        assert time.monotonic() < deadline, "the probe in flight did not end"
        await asyncio.sleep(0.1)
    # then no open breaker of it is left for the webhooks_breakers_open gauge to count
    assert (await lanes.states([webhook_id], utcnow()))[webhook_id].breaker.value == "CLOSED"


async def test_an_attempt_delayed_by_its_webhooks_limit_says_why(stack: Stack, receiver: Receiver) -> None:
    # given a webhook limited to one attempt at a time, whose endpoint takes 0.8 s to answer
    account = await stack.account()
    path = f"/one/{uuid.uuid4().hex[:6]}"
    payload = await account.gql.execute(
        """mutation($input: CreateWebhookInput!) { createWebhook(input: $input) {
             webhook { id maxInFlight } errors { code } } }""",
        {
            "input": {
                "name": "one at a time",
                "url": receiver.url(path, sleep(0.8)),
                "events": ["JOB_APPLICATION_CREATED"],
                "maxInFlight": 1,
            }
        },
    )
    assert payload["createWebhook"]["webhook"]["maxInFlight"] == 1
    # when three events are published at once
    published = [await publish(account.gql) for _ in range(3)]
    ids = [p["event"]["deliveries"][0]["id"] for p in published]
    done = [await wait_for_status(account.gql, i, "SUCCEEDED", timeout=30) for i in ids]
    # then the receiver never had two at once, and the last attempt says it waited for the webhook's limit
    starts = sorted(r.at for r in receiver.received[path])
    assert all(b - a >= 0.7 for a, b in itertools.pairwise(starts))
    reasons = await account.gql.execute(
        "query($id: ID!) { delivery(id: $id) { attempts { scheduledAt lateReason } } }", {"id": ids[-1]}
    )
    attempt = reasons["delivery"]["attempts"][0]
    assert attempt["scheduledAt"] is not None
    assert attempt["lateReason"] == "WEBHOOK_LIMIT"
    assert len(done) == 3


async def test_max_in_flight_is_checked(stack: Stack) -> None:
    account = await stack.account()
    payload = await account.gql.execute(
        """mutation($input: CreateWebhookInput!) { createWebhook(input: $input) {
             webhook { id } errors { field code message } } }""",
        {
            "input": {
                "name": "x",
                "url": "http://127.0.0.1:9/x",
                "events": ["JOB_APPLICATION_CREATED"],
                "maxInFlight": 0,
            }
        },
    )
    errors = payload["createWebhook"]["errors"]
    assert [(e["field"], e["code"]) for e in errors] == [("maxInFlight", "INVALID")]
    assert payload["createWebhook"]["webhook"] is None


async def test_the_limit_holds_across_two_worker_processes(
    mongodb_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    # given two worker processes and a webhook limited to 3 attempts at once, on an endpoint that holds
    # each request 0.5 s and counts how many it holds at once
    settings = make_settings(mongodb_url, tmp_path, sweep_interval=1, sweep_grace=1)
    counter = Concurrency(hold=0.5)
    path = f"/limit/{uuid.uuid4().hex[:6]}"
    async with run_stack(settings, worker=False) as stack:
        account = await stack.account()
        payload = await account.gql.execute(
            """mutation($input: CreateWebhookInput!) { createWebhook(input: $input) { errors { code } } }""",
            {
                "input": {
                    "name": "limited",
                    "url": receiver.url(path, counter),
                    "events": ["JOB_APPLICATION_CREATED"],
                    "maxInFlight": 3,
                }
            },
        )
        assert payload["createWebhook"]["errors"] == []
        with workers(settings, tmp_path) as start:
            start()
            start()
            # when 24 events are published at once
            published = await asyncio.gather(*(publish(account.gql) for _ in range(24)))
            ids = [p["event"]["deliveries"][0]["id"] for p in published]
            for i in ids:
                await wait_for_status(account.gql, i, "SUCCEEDED", timeout=60)
    # then the endpoint got every delivery, never more than 3 at once, and the limit was used
    assert len(receiver.received[path]) >= 24
    assert counter.peak == 3


async def test_a_deleted_webhook_leaves_no_lane_state_once_its_attempts_are_over(
    mongodb_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    # given a webhook whose endpoint hangs past the deadline, with attempts in flight, retried soon after
    settings = make_settings(
        mongodb_url,
        tmp_path,
        delivery_timeout=DEADLINE,
        retry_schedule=(0.0, 0.5, 0.5),
        webhook_max_in_flight=3,
        breaker_open_after=3,
    )
    async with run_stack(settings) as stack:
        account = await stack.account()
        webhook_id, _ = await create_webhook(
            account.gql, receiver.url(f"/dropped/{uuid.uuid4().hex[:6]}", sleep(DEADLINE * 4))
        )
        published = [await publish(account.gql) for _ in range(6)]
        ids = [p["event"]["deliveries"][0]["id"] for p in published]
        await breaker_becomes(account.gql, webhook_id, lambda s: s != "CLOSED")
        # when it is deleted while an attempt is in flight (its retry is queued after the deletion)
        deleted = (await account.gql.execute(DELETE, {"id": webhook_id}))["deleteWebhook"]
        assert deleted["errors"] == []
        # and every one of its deliveries has ended (failed: the webhook is gone)
        for i in ids:
            await wait_for_status(account.gql, i, "FAILED", timeout=30)
        # then the lanes hold no in-flight limit of it any more (nothing would ever remove it later)
        limits = await stack.core.redis.hgetall(f"{settings.queue_name}:limits")
        assert webhook_id.encode() not in limits
