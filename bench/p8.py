"""P8 isolation: a healthy account's publish → arrival latency, alone and while another account has a backlog.

Each case runs on its own fresh stack (SecantusDB, Valkey, the API, one worker with default settings, the
receiver), so no backlog leaks into the next case:
1. account B (one webhook on ``/ok/``) publishes ``HEALTHY`` events, one every 250 ms: its latencies *alone*;
2. the worker is stopped and account A publishes its backlog to one webhook whose endpoint is dead
   (``/hang/``: accepts and never answers, past the 10 s deadline), slow (``/slow/2/``: 200 after 2 s) or
   healthy (``/ok/``), so the whole backlog is queued when the worker starts again;
3. the worker starts, and B publishes the same way again: its latencies *under load*.
Latency is from just before B's ``publishEvent`` request to the receiver's arrival time (same clock).
Goal per case: B's p99 under load ≤ 2× its p99 alone, and ≤ 1 s. Also reported: what A's endpoint got (at
most N attempts at once, N = ``WEBHOOKS_WEBHOOK_MAX_IN_FLIGHT``, default 10) and, for the huge healthy
backlog, A's throughput against P1's.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import psutil

from bench.figures import Result, fmt, pct, publish_many
from bench.procs import (
    CACHE_DIR,
    GraphQL,
    ReceiverControl,
    Stack,
    client_connector,
    create_webhooks,
    publish,
    stack,
)
from webhooks_cli.embedded import stop

HEALTHY = 20  # events B publishes per phase (the measurement: 20, one every 250 ms)
HEALTHY_EVERY = 0.25
ARRIVAL_TIMEOUT = 60.0


@dataclass(frozen=True)
class Case:
    key: str  # for ``--p8-cases``
    name: str
    path: str  # A's endpoint on the receiver
    events: int  # A's backlog (full run)
    huge: bool = False


CASES = [
    Case("dead", "dead endpoint", "/hang/p8-a", 1_000),
    Case("dead10k", "dead endpoint", "/hang/p8-a", 10_000),
    Case("slow", "slow endpoint (2 s)", "/slow/2/p8-a", 10_000),
    Case("huge", "huge healthy backlog", "/ok/p8-a", 100_000, huge=True),
]


async def healthy_latencies(
    gql: GraphQL, recv: ReceiverControl, path: str, count: int, publish_ms: list[float] | None = None
) -> tuple[list[float], int]:
    """B publishes ``count`` events, one every 250 ms; their latencies (ms) and how many never arrived.
    ``publish_ms`` gets how long each ``publishEvent`` call took (the part of the latency in the API)."""
    since = len(await recv.arrivals(path=path))
    sent: dict[str, float] = {}
    for n in range(count):
        t = time.time()
        event = await publish(gql, n)
        if publish_ms is not None:
            publish_ms.append((time.time() - t) * 1000)
        sent[event["deliveries"][0]["id"]] = t
        await asyncio.sleep(HEALTHY_EVERY)
    deadline = time.perf_counter() + ARRIVAL_TIMEOUT
    while True:
        arrived = {a[0]: a[1] for a in await recv.arrivals(since, path=path)}
        if all(d in arrived for d in sent) or time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.2)
    lat = [(arrived[d] - t) * 1000 for d, t in sent.items() if d in arrived]
    return lat, len(sent) - len(lat)


async def _case(
    case: Case, events: int, log: Callable[[str], None], emit: Callable[[Result], None], p1_rate: float | None
) -> None:
    data_dir = CACHE_DIR / "p8"
    shutil.rmtree(data_dir, ignore_errors=True)
    label = f"P8 {case.name}, {events:,} events"
    # the API's publish rate limit (6,000 a minute per account) would pace the backlog's publishing: lifted
    # here; the worker's settings are the defaults
    with stack(data_dir, WEBHOOKS_RATE_LIMIT_PUBLISH_PER_MINUTE="10000000") as running:
        async with aiohttp.ClientSession(connector=client_connector(100)) as session:
            recv = ReceiverControl(session, running.receiver_url)
            gql_b = GraphQL(session, running.api_url, await asyncio.to_thread(running.create_account, "P8 B"))
            gql_a = GraphQL(session, running.api_url, await asyncio.to_thread(running.create_account, "P8 A"))
            b_path = "/ok/p8-b"
            await create_webhooks(gql_b, recv, [b_path])
            await create_webhooks(gql_a, recv, [case.path])
            await publish(gql_b, 0)  # warm-up: connections, caches
            await asyncio.sleep(0.5)
            alone, lost_alone = await healthy_latencies(gql_b, recv, b_path, HEALTHY)
            # A's backlog, queued whole while the worker is stopped
            await asyncio.to_thread(_stop_worker, running)
            t0 = time.perf_counter()
            await publish_many(gql_a, events, 20)
            publish_s = time.perf_counter() - t0
            log(f"  {label}: backlog published in {publish_s:.0f} s ({events / publish_s:.0f} events/s)")
            await asyncio.to_thread(running.start_worker)
            t_start = time.perf_counter()
            a_before = (await recv.by_path()).get(case.path, 0)
            # not timed: one of B's events, to know the new worker is dispatching (its start-up on a busy
            # machine takes seconds, which would count against B otherwise)
            warm, _ = await healthy_latencies(gql_b, recv, b_path, 1)
            log(
                f"  {label}: worker dispatching {time.perf_counter() - t_start:.1f} s after its start "
                f"(B's warm-up event: {fmt(warm[0]) if warm else 'lost'} ms)"
            )
            publish_ms: list[float] = []
            cpu0, w0 = _cpu(running), time.perf_counter()
            loaded, lost_loaded = await healthy_latencies(gql_b, recv, b_path, HEALTHY, publish_ms)
            busy = {k: (v - cpu0[k]) / (time.perf_counter() - w0) * 100 for k, v in _cpu(running).items()}
            t_window = time.perf_counter() - t_start
            by_path = await recv.by_path()
            stats = await recv.stats()
            a_window = by_path.get(case.path, 0) - a_before
            a_note = f"A's endpoint got {a_window:,} requests in B's {t_window:.0f} s window"
            if case.path.startswith("/hang/"):
                a_note += f", at most {stats['hang_inflight_max']} at once"
            elif case.path.startswith("/slow/"):
                a_note += f", at most {stats['slow_inflight_max']} at once"
            if case.huge:
                a_rate, drained = await _drain(recv, case.path, events, a_before, t_start)
                a_note += f"; A's {events:,} delivered at {a_rate:,.0f}/s" + ("" if drained else " (NOT ALL)")
    a50, a99, l50, l99 = pct(alone, 50), pct(alone, 99), pct(loaded, 50), pct(loaded, 99)
    lost = (
        f"; {lost_alone + lost_loaded} of B's deliveries did not arrive in {ARRIVAL_TIMEOUT:.0f} s"
        if (lost_alone + lost_loaded)
        else ""
    )
    log(
        f"  {label}: B alone p50 {a50:.0f} ms p99 {a99:.0f} ms; under load p50 {l50:.0f} ms "
        f"p99 {l99:.0f} ms; {a_note}{lost}; under load, in order: {[round(x) for x in loaded]} ms, of which "
        f"the publishEvent call: {[round(x) for x in publish_ms]} ms; CPU % of a core in the window: "
        + ", ".join(f"{k} {v:.0f}" for k, v in busy.items())
    )
    emit(
        Result(
            f"{label}: healthy p99",
            l99,
            "ms",
            a99,
            "ms healthy p99 alone, same stack",
            l99 / a99,
            "<= 2x and <= 1,000 ms",
            f"p50 {fmt(l50)} ms (alone {fmt(a50)} ms), {HEALTHY} events every 250 ms; publishEvent call "
            f"p50 {fmt(pct(publish_ms, 50))} ms, p99 {fmt(pct(publish_ms, 99))} ms; {a_note}{lost}",
        )
    )
    if case.huge:
        emit(
            Result(
                f"{label}: backlogged account's throughput",
                a_rate,
                "deliveries/s",
                p1_rate,
                "deliveries/s P1 throughput, same invocation" if p1_rate else "",
                a_rate / p1_rate if p1_rate else None,
                ">= 0.8",
                "one webhook, per-webhook in-flight limit 10; P1 uses 10 webhooks"
                + ("" if p1_rate else "; run with p1 for the ratio"),
            )
        )


def _cpu(running: Stack) -> dict[str, float]:
    assert running.worker is not None
    pids = {
        "SecantusDB": running.stores.processes[0].pid,
        "API": running.api.pid,
        "worker": running.worker.pid,
        "receiver": running.receiver.pid,
    }
    return {k: sum(psutil.Process(p).cpu_times()[:2]) for k, p in pids.items()}


def _stop_worker(running: Stack) -> None:
    assert running.worker is not None
    stop(running.worker, timeout=20)


async def _drain(
    recv: ReceiverControl, path: str, events: int, before: int, t_start: float, timeout: float = 600.0
) -> tuple[float, bool]:
    """Wait until A's endpoint got all ``events``; A's rate from the worker's start."""
    deadline = time.perf_counter() + timeout
    got = before
    while time.perf_counter() < deadline:
        got = (await recv.by_path()).get(path, 0)
        if got >= events:
            break
        await asyncio.sleep(0.2)
    return (got - before) / (time.perf_counter() - t_start), got >= events


async def p8(
    quick: bool,
    log: Callable[[str], None],
    emit: Callable[[Result], None],
    p1_rate: float | None,
    only: list[str] | None = None,
) -> None:
    for case in CASES:
        if only and case.key not in only:
            continue
        events = case.events // 10 if quick else case.events
        t0 = time.perf_counter()
        try:
            await _case(case, events, log, emit, p1_rate)
        except Exception as exc:
            print(f"P8 {case.name}, {events:,} events: error ({type(exc).__name__}: {exc})", flush=True)
        log(f"  P8 {case.name}, {events:,} events took {time.perf_counter() - t0:.0f} s")
