"""The figures P1–P7. Each measures the real processes and prints ``name: value (baseline: …, ratio: …)``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
from bson import ObjectId
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from bench.docs import succeeded_doc
from bench.procs import CACHE_DIR, GraphQL, ReceiverControl, Stack, create_webhooks, publish
from webhooks.db import INDEXES, Collections, chunked
from webhooks.pubsub import ATTEMPTS_CHANNEL

Log = Callable[[str], None]


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


@dataclass
class Result:
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_unit: str = ""
    ratio: float | None = None
    target: str = ""
    note: str = ""

    def line(self) -> str:
        base = f"{fmt(self.baseline)} {self.baseline_unit}".strip() if self.baseline is not None else "n/a"
        ratio = fmt(self.ratio) if self.ratio is not None else "n/a"
        note = f"; {self.note}" if self.note else ""
        return f"{self.name}: {fmt(self.value)} {self.unit} (baseline: {base}, ratio: {ratio}{note})"


@dataclass
class Ctx:
    stack: Stack
    session: aiohttp.ClientSession
    mongo: AsyncMongoClient[dict[str, Any]]
    quick: bool
    log: Log
    profile: bool
    emit: Callable[[Result], None]
    p1_events: int | None = None  # P1's events per run (fan-out 10); None: 200, or 100 with --quick
    recv: ReceiverControl = field(init=False)
    _feed_task: asyncio.Task[None] | None = field(init=False, default=None)
    _finished: dict[str, tuple[str, float]] = field(
        init=False, default_factory=dict
    )  # delivery -> status, when
    _feed_changed: asyncio.Event = field(init=False, default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.recv = ReceiverControl(self.session, self.stack.receiver_url)

    @property
    def cols(self) -> Collections:
        return Collections.of(self.mongo["webhooks"])

    def gql(self, key: str) -> GraphQL:
        return GraphQL(self.session, self.stack.api_url, key)

    async def account(self, name: str) -> tuple[GraphQL, str]:
        key = await asyncio.to_thread(self.stack.create_account, name)
        return self.gql(key), key

    async def account_id(self, webhook_id: str) -> ObjectId:
        doc = await self.cols.webhooks.find_one({"_id": ObjectId(webhook_id)}, {"account_id": 1})
        assert doc is not None
        oid: ObjectId = doc["account_id"]
        return oid

    async def start_feed(self) -> None:
        """Follow the live feed (before anything is published): ``wait_status`` reads outcomes from it."""
        if self._feed_task is None:
            redis = Redis.from_url(self.stack.stores.redis_url)
            pubsub = redis.pubsub()
            await pubsub.subscribe(ATTEMPTS_CHANNEL)
            self._feed_task = asyncio.create_task(self._follow(redis, pubsub))

    async def stop_feed(self) -> None:
        if self._feed_task is not None:
            self._feed_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feed_task
            self._feed_task = None

    async def _follow(self, redis: Redis, pubsub: Any) -> None:
        try:
            async for message in pubsub.listen():
                if message["type"] != "message":
                    continue
                attempt = orjson.loads(message["data"])
                self._finished[attempt["deliveryId"]] = (attempt["deliveryStatus"], time.perf_counter())
                self._feed_changed.set()
        finally:
            await pubsub.aclose()
            await redis.aclose()

    async def wait_status(
        self, ids: list[ObjectId], status: str, timeout: float, interval: float = 0.05
    ) -> float:
        """Wait until every delivery in ``ids`` has ``status``; return the perf_counter time it got there.

        The time comes from the live feed, which the worker publishes to once MongoDB holds the outcome, so
        watching costs the store under test nothing (polling it with a large ``$in`` every 50 ms took a
        third of SecantusDB's CPU during P1, measured). MongoDB then confirms every delivery, once, in
        chunks; a delivery whose feed message was lost is polled for there every ``interval``.
        """
        deadline = time.perf_counter() + timeout
        await self.start_feed()
        remaining = {str(i) for i in ids}
        while remaining and time.perf_counter() < deadline:
            remaining = {i for i in remaining if self._finished.get(i, ("", 0.0))[0] != status}
            self._feed_changed.clear()
            if remaining:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._feed_changed.wait(), interval)
        seen = [self._finished[str(i)][1] for i in ids if str(i) not in remaining]
        done_at = max(seen, default=time.perf_counter())
        unconfirmed = set(ids)
        while True:
            for chunk in chunked(list(unconfirmed)):
                query = {"_id": {"$in": chunk}, "status": status}
                unconfirmed.difference_update(
                    [d["_id"] async for d in self.cols.deliveries.find(query, {"_id": 1})]
                )
            if not unconfirmed:
                return done_at if not remaining else time.perf_counter()
            if time.perf_counter() > deadline:
                done = len(ids) - len(unconfirmed)
                raise TimeoutError(f"only {done} of {len(ids)} deliveries {status} after {timeout:.0f} s")
            await asyncio.sleep(interval)


async def run_process(module: str, spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        json.dumps(spec),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def publish_many(gql: GraphQL, count: int, concurrency: int) -> list[ObjectId]:
    sem = asyncio.Semaphore(concurrency)
    ids: list[ObjectId] = []

    async def one(n: int) -> None:
        async with sem:
            event = await publish(gql, n)
            ids.extend(ObjectId(d["id"]) for d in event["deliveries"])

    await asyncio.gather(*(one(n) for n in range(count)))
    return ids


SAMPLE_BODY = orjson.dumps(
    {
        "event": "job_application_created",
        "timestamp": "2024-01-20T10:30:00.000Z",
        "data": {
            "log": {
                "action": "create_application",
                "resourceType": "job_application",
                "resourceId": "507f1f77bcf86cd799439011",
                "userId": "507f191e810c19729de860ea",
                "userName": "John Doe",
                "userEmail": "john@example.com",
                "timestamp": "2024-01-20T10:30:00.000Z",
            },
            "details": {
                "method": "POST",
                "path": "/job-applications",
                "candidateName": "Jane Smith 1",
                "jobTitle": "Senior Developer",
            },
        },
    }
).decode()


# ---------------------------------------------------------------------------------------------- P1


async def insert_ceiling(ctx: Ctx, batches: int) -> float:
    """insert_many of 100 delivery-shaped docs (a succeeded delivery, its attempt embedded, as the engine
    writes it) into a collection with the deliveries indexes, docs/s."""
    col = ctx.mongo["webhooks"]["bench_insert_ceiling"]
    await col.drop()
    await col.create_indexes(INDEXES["deliveries"])
    now = datetime.now(tz=UTC)
    account, webhook = ObjectId(), ObjectId()
    docs = [
        [succeeded_doc(account, webhook, now, timedelta(days=30)) for _ in range(100)] for _ in range(batches)
    ]
    started = time.perf_counter()
    for batch in docs:
        await col.insert_many(batch, ordered=False)
    rate = 100 * batches / (time.perf_counter() - started)
    await col.drop()
    return rate


async def p1(ctx: Ctx) -> None:
    hooks, events = 10, ctx.p1_events or (100 if ctx.quick else 200)
    runs = 3
    gql, _ = await ctx.account("P1")
    paths = [f"/ok/p1-{i}" for i in range(hooks)]
    webhook_ids = await create_webhooks(gql, ctx.recv, paths)
    account = await ctx.account_id(webhook_ids[0])
    await publish_many(gql, 5, 5)  # warm-up: connections, caches
    await asyncio.sleep(1.0)
    await _outbox_closed(ctx, account, 20)  # the warm-up's events leave the outbox before counting starts
    counts0 = await store_counts(ctx)
    measured, baseline, ceiling, publish_rates = [], [], [], []
    invalid_total = 0
    raw_secret = await _register_raw(ctx)
    profilers: list[subprocess.Popen[bytes]] = []
    for r in range(runs):
        raw = await run_process(
            "bench.loadgen",
            {
                "url": ctx.recv.url + "/ok/p1-raw",
                "method": "POST",
                "body": SAMPLE_BODY,
                "headers": {"Content-Type": "application/json"},
                "secret": raw_secret,
                "concurrency": 100,
                "duration": 2.0 if ctx.quick else 3.0,
            },
            ctx.stack.env,
        )
        baseline.append(raw["rps"])
        ceiling.append(await insert_ceiling(ctx, 10 if ctx.quick else 20))
        before = await ctx.recv.stats()
        if ctx.profile and r == runs - 1:  # the last run's delivery only, not the baselines' phases
            profilers = _start_profilers(ctx)
            await asyncio.sleep(1.0)  # py-spy attached
        cpu0, recording0 = _cpu(ctx), await _record_busy_seconds(ctx)
        t0 = time.perf_counter()
        ids = await publish_many(gql, events, 10)
        t_pub = time.perf_counter()
        expected = hooks * events
        assert len(ids) == expected, f"fan-out gave {len(ids)} deliveries, expected {expected}"
        deadline = time.perf_counter() + 120
        while (await ctx.recv.stats())["valid"] - before["valid"] < expected:
            if time.perf_counter() > deadline:
                raise TimeoutError("the receiver did not verify every delivery within 120 s")
            await asyncio.sleep(0.02)
        t_recv = time.perf_counter()
        t_done = await ctx.wait_status(ids, "SUCCEEDED", 60)
        for proc in profilers:
            proc.send_signal(signal.SIGINT)
        for proc in profilers:
            await asyncio.to_thread(proc.wait, 60)
        busy = {k: (v - cpu0[k]) / (t_done - t0) * 100 for k, v in _cpu(ctx).items()}
        recording = (await _record_busy_seconds(ctx) - recording0) / (t_done - t0) * 100
        after = await ctx.recv.stats()
        invalid_total += after["invalid"] - before["invalid"]
        measured.append(expected / (t_done - t0))
        publish_rates.append(events / (t_pub - t0))
        ctx.log(
            f"  P1 run {r + 1}: {measured[-1]:.0f} deliveries/s (publish phase {t_pub - t0:.2f} s, "
            f"received by {t_recv - t0:.2f} s, done at {t_done - t0:.2f} s, "
            f"{publish_rates[-1]:.0f} events/s); raw POST {baseline[-1]:.0f}/s; "
            f"insert_many {ceiling[-1]:.0f} docs/s; CPU % of a core: "
            + ", ".join(f"{k} {v:.0f}" for k, v in busy.items())
            + f"; the worker's record step busy {recording:.0f} % of the run"
        )
    # the sweeper closes each event once its deliveries are written: part of a delivery's cost, so wait
    closed = await _outbox_closed(ctx, account, 30)
    counts1 = await store_counts(ctx)
    value, base = med(measured), med(baseline)
    ctx.emit(
        Result(
            "P1 throughput",
            value,
            "deliveries/s",
            base,
            "req/s raw aiohttp POST, 100 concurrent",
            value / base,
            "ratio >= 0.5",
            f"{hooks} webhooks x {events} events, {invalid_total} invalid signatures",
        )
    )
    ctx.emit(
        Result(
            "P1 publishEvent rate (during P1)",
            med(publish_rates),
            "events/s",
            note=f"10 concurrent callers, {hooks} deliveries each",
        )
    )
    store = med(ceiling)
    ctx.emit(
        Result(
            "P1 throughput vs store insert_many ceiling",
            value,
            "deliveries/s",
            store,
            "docs/s store insert_many ceiling",
            value / store,
            "ratio >= 0.5",
            "batches of 100 delivery docs (first attempt embedded), deliveries indexes",
        )
    )
    delivered = runs * hooks * events
    written, trips = _diff(counts0, counts1, "written"), _diff(counts0, counts1, "commands")
    outbox = "" if closed else "; SOME P1 EVENTS STILL OPEN (their close is not counted)"
    ctx.emit(
        Result(
            "P1 store documents written per delivery",
            sum(written.values()) / delivered,
            "docs",
            target="<= 1.2",
            note=f"{delivered:,} deliveries, fan-out {hooks}, all first attempts succeeded; "
            + _breakdown(written)
            + outbox,
        )
    )
    ctx.emit(
        Result(
            "P1 store round trips per delivery",
            sum(trips.values()) / delivered,
            "commands",
            target="<= 0.3",
            note="API + worker, sweeper included; " + _breakdown(trips),
        )
    )


async def _outbox_closed(ctx: Ctx, account: ObjectId, timeout: float) -> bool:
    """Wait until none of the account's events is open (the sweeper closes them); whether that happened."""
    deadline = time.perf_counter() + timeout
    while await ctx.cols.events.count_documents({"account_id": account, "open": True}):
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(0.5)
    return True


COUNTS_DIR = CACHE_DIR / "command-counts"


async def store_counts(ctx: Ctx, timeout: float = 10.0) -> dict[str, dict[str, dict[str, int]]]:
    """The API's and the worker's MongoDB command counts (``webhooks.command_counts``), dumped after now."""
    assert ctx.stack.worker is not None
    since = time.time()
    deadline = time.perf_counter() + timeout
    found: dict[str, dict[str, dict[str, int]]] = {}
    for name, pid in (("api", ctx.stack.api.pid), ("worker", ctx.stack.worker.pid)):
        path = COUNTS_DIR / f"{pid}.json"
        while True:
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(path.read_text())
                if data["at"] > since:
                    found[name] = {"commands": data["commands"], "written": data["written"]}
                    break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"no command counts from the {name} in {path}")
            await asyncio.sleep(0.1)
    return found


def _diff(
    before: dict[str, dict[str, dict[str, int]]], after: dict[str, dict[str, dict[str, int]]], kind: str
) -> dict[str, int]:
    """Per ``process command`` increase of ``kind`` (commands or written) between two snapshots."""
    out: dict[str, int] = {}
    for proc, data in after.items():
        for command, n in data[kind].items():
            delta = n - before.get(proc, {}).get(kind, {}).get(command, 0)
            if delta:
                out[f"{proc} {command}"] = delta
    return out


def _breakdown(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


async def _record_busy_seconds(ctx: Ctx) -> float:
    """Seconds the worker has spent in its record batches so far (``webhooks_batch_seconds{step="record"}``):
    one batch at a time, so its growth over a run divided by the run's length is how busy that step was."""
    async with ctx.session.get(ctx.stack.worker_metrics_url) as response:
        text = await response.text()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "webhooks_batch_seconds_sum" and s.labels.get("step") == "record"
    )


def _cpu(ctx: Ctx) -> dict[str, float]:
    """CPU seconds used so far by each process of the stack."""
    assert ctx.stack.worker is not None
    pids = {
        "SecantusDB": ctx.stack.stores.processes[0].pid,
        "Valkey": ctx.stack.stores.processes[1].pid,
        "API": ctx.stack.api.pid,
        "worker": ctx.stack.worker.pid,
        "receiver": ctx.stack.receiver.pid,
        "bench": os.getpid(),
    }
    out = {}
    for name, pid in pids.items():
        t = psutil.Process(pid).cpu_times()
        out[name] = t.user + t.system
    return out


def _start_profilers(ctx: Ctx) -> list[subprocess.Popen[bytes]]:
    """py-spy (if installed in the venv) on the worker, the API and SecantusDB: stacks in bench/.cache/."""
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        ctx.log("  --profile: py-spy is not installed (uv pip install py-spy)")
        return []
    assert ctx.stack.worker is not None
    procs = []
    targets = (
        ("worker", ctx.stack.worker.pid),
        ("api", ctx.stack.api.pid),
        ("store", ctx.stack.stores.processes[0].pid),
    )
    for name, pid in targets:
        out = CACHE_DIR / f"p1-{name}.collapsed"
        args = [
            str(exe),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "250",
            "--nonblocking",
            "--output",
            str(out),
        ]
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ctx.log(f"  --profile: py-spy on the {name} -> {out}")
    return procs


async def _register_raw(ctx: Ctx) -> str:
    secret = "whsec_YmVuY2gtcmF3LXBvc3Qtc2VjcmV0LWtleQ=="
    await ctx.recv.register("/ok/p1-raw", secret)
    return secret


# ---------------------------------------------------------------------------------------------- P2


async def p2(ctx: Ctx) -> None:
    rounds, per_round = (1, 200) if ctx.quick else (3, 200)
    gql, _ = await ctx.account("P2")
    await create_webhooks(gql, ctx.recv, ["/ok/p2"])
    raw_secret = await _register_raw(ctx)
    import hashlib
    import hmac

    raw_headers = {
        "Content-Type": "application/json",
        "X-Webhook-Signature": hmac.new(
            raw_secret.encode(), SAMPLE_BODY.encode(), hashlib.sha256
        ).hexdigest(),
        "X-Webhook-Delivery": "",
    }
    await publish_many(gql, 3, 1)
    await asyncio.sleep(0.5)
    p50s, p99s, b50s, b99s = [], [], [], []
    for r in range(rounds):
        since = (await ctx.recv.stats())["received"]
        returned: dict[str, float] = {}
        sent: dict[str, float] = {}
        for n in range(per_round):
            event = await publish(gql, n)
            returned[event["deliveries"][0]["id"]] = time.time()
            await asyncio.sleep(0.04)
            tag = f"raw-{r}-{n}"
            sent[tag] = time.time()
            async with ctx.session.post(
                ctx.recv.url + "/ok/p1-raw",
                data=SAMPLE_BODY,
                headers={**raw_headers, "X-Webhook-Delivery": tag},
            ) as resp:
                await resp.read()
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)
        arrived = {a[0]: a[1] for a in await ctx.recv.arrivals(since)}
        missing = [d for d in returned if d not in arrived]
        if missing:
            raise RuntimeError(f"{len(missing)} deliveries never reached the receiver")
        lat = [(arrived[d] - t) * 1000 for d, t in returned.items()]
        base = [(arrived[d] - t) * 1000 for d, t in sent.items()]
        p50s.append(pct(lat, 50))
        p99s.append(pct(lat, 99))
        b50s.append(pct(base, 50))
        b99s.append(pct(base, 99))
        ctx.log(
            f"  P2 round {r + 1}: p50 {p50s[-1]:.1f} ms, p99 {p99s[-1]:.1f} ms, min {min(lat):.1f} ms, "
            f"max {max(lat):.1f} ms; raw POST p50 {b50s[-1]:.2f} ms, p99 {b99s[-1]:.2f} ms"
        )
    ctx.emit(
        Result(
            "P2 dispatch latency p50",
            med(p50s),
            "ms",
            med(b50s),
            "ms raw POST p50",
            med(p50s) / med(b50s),
            "<= 10 ms",
            f"{per_round} single events x {rounds} rounds",
        )
    )
    ctx.emit(
        Result(
            "P2 dispatch latency p99",
            med(p99s),
            "ms",
            med(b99s),
            "ms raw POST p99",
            med(p99s) / med(b99s),
            "<= 50 ms",
        )
    )
    await asyncio.sleep(2.0)
    assert ctx.stack.worker is not None
    worker = psutil.Process(ctx.stack.worker.pid)
    api = psutil.Process(ctx.stack.api.pid)
    worker.cpu_percent(None)
    api.cpu_percent(None)
    await asyncio.sleep(5.0)
    idle, api_idle = worker.cpu_percent(None), api.cpu_percent(None)
    ctx.emit(
        Result(
            "P2 worker idle CPU",
            idle,
            "% of a core",
            api_idle,
            "% API process idle, same 5 s",
            idle / api_idle if api_idle else None,
            "<= 2 %",
        )
    )


# ---------------------------------------------------------------------------------------------- P3


async def p3(ctx: Ctx) -> None:
    hooks = 20
    gql, _ = await ctx.account("P3")
    await create_webhooks(gql, ctx.recv, [f"/fail/p3-{i}" for i in range(hooks)])
    schedule = [1.0, 2.0, 4.0, 8.0, 16.0]
    timer_late: list[float] = []

    async def timer_baseline() -> None:
        for delay in schedule:
            due = time.perf_counter() + delay
            await asyncio.sleep(delay)
            timer_late.append(abs(time.perf_counter() - due) * 1000)

    event = await publish(gql, 0)
    ids = [ObjectId(d["id"]) for d in event["deliveries"]]
    baseline = asyncio.gather(*(timer_baseline() for _ in range(hooks)))
    await ctx.wait_status(ids, "FAILED", 31 + 30, interval=0.5)
    await baseline
    by_delivery: dict[ObjectId, dict[int, dict[str, Any]]] = {}
    async for d in ctx.cols.deliveries.find({"_id": {"$in": ids}}, {"attempts": 1}):
        by_delivery[d["_id"]] = {a["number"]: a for a in d.get("attempts") or ()}
    errors: list[float] = []
    for numbered in by_delivery.values():
        for n in range(2, 7):
            if n in numbered and n - 1 in numbered:
                due = numbered[n - 1]["next_attempt_at"]
                errors.append(abs((numbered[n]["started_at"] - due).total_seconds()) * 1000)
    counts = sorted(len(v) for v in by_delivery.values())
    ctx.log(
        f"  P3: {len(errors)} retries measured; attempts per delivery {counts[0]}..{counts[-1]}; "
        f"|error| p50 {pct(errors, 50):.1f} ms, p99 {pct(errors, 99):.1f} ms, max {max(errors):.1f} ms"
    )
    value, base = pct(errors, 99), pct(timer_late, 99)
    ctx.emit(
        Result(
            "P3 retry timing |actual - scheduled| p99",
            value,
            "ms",
            base,
            "ms asyncio.sleep lateness p99, same schedule, bench process",
            value / base if base else None,
            "<= 50 ms",
            f"p50 {fmt(pct(errors, 50))} ms, {len(errors)} retries of {hooks} deliveries",
        )
    )


# ---------------------------------------------------------------------------------------------- P4


async def subscription_available(ctx: Ctx, key: str) -> bool:
    data = await ctx.gql(key)("{ __schema { subscriptionType { fields { name } } } }")
    sub = data["__schema"]["subscriptionType"]
    return bool(sub) and any(f["name"] == "deliveryAttempts" for f in sub["fields"])


async def p4(ctx: Ctx) -> None:
    gql, key = await ctx.account("P4")
    if not await subscription_available(ctx, key):
        print("P4: skipped (subscription not available)", flush=True)
        return
    await create_webhooks(gql, ctx.recv, ["/ok/p4"])
    connections, per_connection = 100, 10
    events = 15 if ctx.quick else 30
    redis = Redis.from_url(ctx.stack.stores.redis_url)
    pubsub = redis.pubsub()
    await pubsub.subscribe(ATTEMPTS_CHANNEL)
    recorded: dict[str, float] = {}

    async def listen() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                recorded[orjson.loads(message["data"])["id"]] = time.time()

    listener = asyncio.create_task(listen())
    out_path = CACHE_DIR / "p4-subscribers.json"
    spec = {
        "url": ctx.stack.api_url.replace("http://", "ws://") + "/graphql",
        "key": key,
        "connections": connections,
        "per_connection": per_connection,
        "out": str(out_path),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.wsclients",
        json.dumps(spec),
        env=ctx.stack.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if line.strip() != b"READY":
            raise RuntimeError(f"subscribers did not start: {line!r}")
        await asyncio.sleep(2.0)  # let the server start every subscription
        warm = await publish(gql, 0)
        await asyncio.sleep(1.0)
        timed: list[str] = []
        for n in range(events):
            event = await publish(gql, n + 1)
            timed.append(event["deliveries"][0]["id"])
            await asyncio.sleep(1.0)  # one attempt at a time: latency, not a backlog
        await asyncio.sleep(3.0)
        proc.stdin.write(b"stop\n")
        await proc.stdin.drain()
        out, _err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await pubsub.aclose()
        await redis.aclose()
    if b"DONE" not in out:
        raise RuntimeError(f"subscribers did not finish: {_err.decode()[-2000:]}")
    result = json.loads(out_path.read_text())
    times: dict[str, list[float]] = result["times"]
    attempts = [
        a
        async for d in ctx.cols.deliveries.find(
            {"_id": {"$in": [ObjectId(d) for d in timed]}}, {"attempts._id": 1}
        )
        for a in d.get("attempts") or ()
    ]
    lat: list[float] = []
    short = 0
    subs = connections * per_connection
    for a in attempts:
        aid = str(a["_id"])
        got = times.get(aid, [])
        short += subs - len(got)
        if aid in recorded:
            lat.extend((t - recorded[aid]) * 1000 for t in got)
    _ = warm
    note = (
        f"{subs} subscriptions on {connections} connections, {len(attempts)} attempts, "
        f"{short} missed messages, {result['dropped']} subscribers dropped"
    )
    if result["errors"]:
        note += f" ({result['errors'][0][:120]})"
    ctx.log(f"  P4: {len(lat)} latencies; {note}")
    ctx.emit(
        Result(
            "P4 live feed p50",
            pct(lat, 50),
            "ms after the Redis publish",
            0.0,
            "ms (raw Redis subscriber in the bench process = recorded)",
            None,
            "",
            note,
        )
    )
    ctx.emit(
        Result(
            "P4 live feed p99",
            pct(lat, 99),
            "ms after the Redis publish",
            0.0,
            "ms (raw Redis subscriber)",
            None,
            "<= 50 ms, no subscriber dropped",
        )
    )


# ---------------------------------------------------------------------------------------------- P5

P5_QUERY = "{ deliveries(first: 20) { edges { node { id status attempts { number statusCode } } } } }"


async def p5(ctx: Ctx) -> None:
    gql, key = await ctx.account("P5")
    await create_webhooks(gql, ctx.recv, [f"/ok/p5-{i}" for i in range(5)])
    ids = await publish_many(gql, 20, 5)
    await ctx.wait_status(ids, "SUCCEEDED", 60)
    auth = {"Authorization": f"Bearer {key}"}
    via_gql = await gql(P5_QUERY)
    async with ctx.session.get(ctx.stack.api_url + "/bench/deliveries", headers=auth) as resp:
        via_plain = await resp.json()
    if via_gql != via_plain["data"]:
        raise RuntimeError("the plain route and GraphQL disagree; fix bench/asgi.py")
    duration = 2.0 if ctx.quick else 4.0
    gql_spec = {
        "url": ctx.stack.api_url + "/graphql",
        "method": "POST",
        "headers": {**auth, "Content-Type": "application/json"},
        "body": json.dumps({"query": P5_QUERY}),
        "concurrency": 50,
        "duration": duration,
        "uvloop": True,
    }
    plain_spec = {
        "url": ctx.stack.api_url + "/bench/deliveries",
        "method": "GET",
        "headers": auth,
        "concurrency": 50,
        "duration": duration,
        "uvloop": True,
    }
    measured, baseline = [], []
    for r in range(3):
        g = await run_process("bench.loadgen", gql_spec, ctx.stack.env)
        p = await run_process("bench.loadgen", plain_spec, ctx.stack.env)
        if g["errors"] or p["errors"]:
            ctx.log(f"  P5 run {r + 1}: errors graphql {g['errors']}, plain {p['errors']}")
        measured.append(g["rps"])
        baseline.append(p["rps"])
        ctx.log(f"  P5 run {r + 1}: GraphQL {g['rps']:.0f} req/s, plain Starlette {p['rps']:.0f} req/s")
    value, base = med(measured), med(baseline)
    ctx.emit(
        Result(
            "P5 API deliveries(first: 20) with attempts",
            value,
            "req/s",
            base,
            "req/s plain Starlette route, same process and data",
            value / base,
            ">= 0.5",
            "50 concurrent keep-alive connections",
        )
    )


# ---------------------------------------------------------------------------------------------- P7


async def sample_rss(proc: psutil.Process, until: Awaitable[Any]) -> tuple[float, Any]:
    """Peak RSS (MB) of ``proc`` sampled every 50 ms while ``until`` runs."""
    peak = proc.memory_info().rss
    task = asyncio.ensure_future(until)
    while not task.done():
        peak = max(peak, proc.memory_info().rss)
        await asyncio.sleep(0.05)
    return peak / 2**20, task.result()


async def p7(ctx: Ctx) -> None:
    assert ctx.stack.worker is not None
    worker = psutil.Process(ctx.stack.worker.pid)
    # 1 GB answers.
    gql, _ = await ctx.account("P7 big")
    await create_webhooks(gql, ctx.recv, [f"/big/p7-{i}" for i in range(4)])
    await asyncio.sleep(1.0)
    idle = worker.memory_info().rss / 2**20

    async def big_run() -> float:
        ids = await publish_many(gql, 3, 3)
        t0 = time.perf_counter()
        return await ctx.wait_status(ids, "SUCCEEDED", 60, interval=0.2) - t0

    peak_big, took = await sample_rss(worker, big_run())
    stats = await ctx.recv.stats()
    ctx.log(
        f"  P7: 12 deliveries answered with 1 GiB bodies in {took:.1f} s; receiver saw "
        f"{stats['big_aborted']} of {stats['big_started']} bodies dropped early by the worker"
    )
    ctx.emit(
        Result(
            "P7 worker RSS peak, 1 GB response bodies",
            peak_big,
            "MB",
            idle,
            "MB worker RSS before",
            peak_big / idle,
            "flat, <= 150 MB",
            "12 deliveries, 4 webhooks",
        )
    )
    # Many in flight against a slow receiver.
    hooks, events = 100, (20 if ctx.quick else 100)
    gql2, _ = await ctx.account("P7 slow")
    await create_webhooks(gql2, ctx.recv, [f"/slow/1/p7s-{i}" for i in range(hooks)])
    idle = worker.memory_info().rss / 2**20

    outcome = ""

    async def slow_run() -> float:
        nonlocal outcome
        t0 = time.perf_counter()
        ids = await publish_many(gql2, events, 10)
        try:
            return await ctx.wait_status(ids, "SUCCEEDED", 150, interval=1.0) - t0
        except TimeoutError as exc:  # still report the memory; say what went wrong
            outcome = f"; NOT ALL DELIVERED: {exc}"
            return time.perf_counter() - t0

    peak_slow, took = await sample_rss(worker, slow_run())
    stats = await ctx.recv.stats()
    ctx.log(
        f"  P7: {hooks * events} deliveries to a 1 s receiver in {took:.1f} s, "
        f"at most {stats['slow_inflight_max']} requests in flight at the receiver{outcome}"
    )
    ctx.emit(
        Result(
            f"P7 worker RSS peak, {hooks * events:,} deliveries to a slow receiver",
            peak_slow,
            "MB",
            idle,
            "MB worker RSS before",
            peak_slow / idle,
            "flat, <= 150 MB",
            f"peak {stats['slow_inflight_max']} requests in flight at the receiver{outcome}",
        )
    )


FIGURES: dict[str, Callable[[Ctx], Awaitable[None]]] = {
    "p2": p2,
    "p1": p1,
    "p3": p3,
    "p4": p4,
    "p5": p5,
    "p7": p7,
}
