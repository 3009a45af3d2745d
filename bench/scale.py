"""P9 scale-out and P10 live feed at scale: several API and worker processes sharing one store.

P9 runs its own stack (SecantusDB, Valkey, the receiver) and, for each shape, starts that many
``webhooks worker`` processes and ``bench.asgi`` API processes, publishes through the APIs round-robin, and
counts deliveries verified by the receiver, whose endpoints answer after 200 ms (so waiting on receivers,
not the store, is what one worker is bounded by). The baseline is the same run's 1-worker, 1-API rate;
the ratio is rate / (workers × baseline): 1.0 is linear.

P10 opens 10,000 ``deliveryAttempts`` subscriptions (``bench.wsclients``) split over 2 API processes and
checks that every one gets every attempt: none dropped, none missed; p99 is reported like P4's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from typing import Any

import orjson
from redis.asyncio import Redis

from bench.figures import Ctx, Result, med, pct
from bench.procs import CACHE_DIR, GraphQL, ReceiverControl, create_webhooks, publish, spawn, stack
from webhooks.pubsub import ATTEMPTS_CHANNEL
from webhooks_cli.embedded import free_port, stop, wait_for_port

RECEIVER_DELAY = 0.2
P9_SHAPES = [(1, 1), (2, 1), (4, 1), (2, 2), (4, 2)]  # (workers, API processes)


def start_api(env: dict[str, str], name: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = spawn([sys.executable, "-m", "bench.asgi", str(port)], env, name)
    wait_for_port(port, proc, name, timeout=60)
    return proc, f"http://127.0.0.1:{port}"


def start_workers(env: dict[str, str], count: int, tag: str) -> list[subprocess.Popen[bytes]]:
    procs = [
        spawn([sys.executable, "-m", "webhooks_cli", "worker"], env, f"{tag}-worker-{i}")
        for i in range(count)
    ]
    time.sleep(2.0)  # connect, ensure indexes, first poll
    dead = [p for p in procs if p.poll() is not None]
    if dead:
        raise RuntimeError(f"{len(dead)} worker(s) exited at start-up (bench/.cache/logs/{tag}-worker-*.log)")
    return procs


async def _delivered(recv: ReceiverControl, start: int, expected: int, timeout: float) -> float:
    deadline = time.perf_counter() + timeout
    while (await recv.stats())["valid"] - start < expected:
        if time.perf_counter() > deadline:
            got = (await recv.stats())["valid"] - start
            raise TimeoutError(f"only {got} of {expected} deliveries verified within {timeout:.0f} s")
        await asyncio.sleep(0.02)
    return time.perf_counter()


async def p9(ctx: Ctx) -> None:
    hooks = 10
    events = 60 if ctx.quick else 150
    runs = 1 if ctx.quick else 2
    rates: dict[tuple[int, int], list[float]] = {shape: [] for shape in P9_SHAPES}
    data_dir = CACHE_DIR / "p9"
    with stack(data_dir, worker=False) as running:
        # the main API of this stack plus, per shape, extra API processes
        session = ctx.session
        recv = ReceiverControl(session, running.receiver_url)
        key = await asyncio.to_thread(running.create_account, "P9")
        main_gql = GraphQL(session, running.api_url, key)
        paths = [f"/slow/{RECEIVER_DELAY:g}/p9-{i}" for i in range(hooks)]
        await create_webhooks(main_gql, recv, paths)
        for r in range(runs):
            for workers, apis in P9_SHAPES:
                extra: list[subprocess.Popen[bytes]] = []
                procs: list[subprocess.Popen[bytes]] = []
                try:
                    urls = [running.api_url]
                    for i in range(apis - 1):
                        proc, url = await asyncio.to_thread(start_api, running.env, f"p9-api-{i + 1}")
                        extra.append(proc)
                        urls.append(url)
                    procs = await asyncio.to_thread(start_workers, running.env, workers, "p9")
                    clients = [GraphQL(session, u, key) for u in urls]
                    start = (await recv.stats())["valid"]
                    await publish(clients[0], 0)  # warm-up: connections, caches
                    await _delivered(recv, start, hooks, 60)
                    start = (await recv.stats())["valid"]
                    sem = asyncio.Semaphore(10)

                    async def one(
                        n: int, clients: list[GraphQL] = clients, sem: asyncio.Semaphore = sem
                    ) -> None:
                        async with sem:
                            await publish(clients[n % len(clients)], n)

                    t0 = time.perf_counter()
                    await asyncio.gather(*(one(n) for n in range(events)))
                    t_done = await _delivered(recv, start, hooks * events, 300)
                    rate = hooks * events / (t_done - t0)
                    rates[(workers, apis)].append(rate)
                    ctx.log(f"  P9 run {r + 1}: {workers} worker(s), {apis} API(s): {rate:.0f} deliveries/s")
                finally:
                    for proc in [*procs, *extra]:
                        await asyncio.to_thread(stop, proc, 25.0)
    base = med(rates[(1, 1)])
    for workers, apis in P9_SHAPES:
        value = med(rates[(workers, apis)])
        ratio = value / (workers * base)
        ctx.emit(
            Result(
                f"P9 scale-out, {workers} worker(s), {apis} API process(es)",
                value,
                "deliveries/s",
                base,
                "deliveries/s with 1 worker, 1 API (same run)",
                ratio,
                ">= 0.8 x linear up to 4 workers" if apis == 1 else "",
                f"ratio to linear = rate / ({workers} x baseline); receivers answer after "
                f"{RECEIVER_DELAY * 1000:.0f} ms; {hooks} webhooks x {events} events; "
                "2 cores shared by all processes",
            )
        )


# --------------------------------------------------------------------------------------------- P10


async def p10(ctx: Ctx) -> None:
    gql, key = await ctx.account("P10")
    await create_webhooks(gql, ctx.recv, ["/ok/p10"])
    per_process = 50 if ctx.quick else 500  # connections per API process, 10 subscriptions each
    per_connection = 10
    events = 10 if ctx.quick else 20
    second, second_url = await asyncio.to_thread(start_api, ctx.stack.env, "p10-api-2")
    redis = Redis.from_url(ctx.stack.stores.redis_url)
    pubsub = redis.pubsub()
    await pubsub.subscribe(ATTEMPTS_CHANNEL)
    recorded: dict[str, float] = {}

    async def listen() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                recorded[orjson.loads(message["data"])["id"]] = time.time()

    listener = asyncio.create_task(listen())
    clients: list[asyncio.subprocess.Process] = []
    outs = []
    try:
        for i, url in enumerate([ctx.stack.api_url, second_url]):
            out_path = CACHE_DIR / f"p10-subscribers-{i}.json"
            outs.append(out_path)
            spec = {
                "url": url.replace("http://", "ws://") + "/graphql",
                "key": key,
                "connections": per_process,
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
            clients.append(proc)
        for proc in clients:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 300)
            if line.strip() != b"READY":
                raise RuntimeError(f"subscribers did not start: {line!r}")
        await asyncio.sleep(3.0)
        delivery_ids: list[str] = []
        for n in range(events):
            event = await publish(gql, n + 1)
            delivery_ids.append(event["deliveries"][0]["id"])
            await asyncio.sleep(1.0)
        await asyncio.sleep(5.0)
        for proc in clients:
            assert proc.stdin is not None
            proc.stdin.write(b"stop\n")
            await proc.stdin.drain()
        for proc in clients:
            out, _err = await asyncio.wait_for(proc.communicate(), 120)
            if b"DONE" not in out:
                raise RuntimeError(f"subscribers did not finish: {_err.decode()[-2000:]}")
    finally:
        for proc in clients:
            if proc.returncode is None:
                proc.kill()
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await pubsub.aclose()
        await redis.aclose()
        await asyncio.to_thread(stop, second, 10.0)
    attempts = [
        a
        async for d in ctx.cols.deliveries.find(
            {"_id": {"$in": [_oid(d) for d in delivery_ids]}}, {"attempts._id": 1}
        )
        for a in d.get("attempts") or ()
    ]
    subs = 2 * per_process * per_connection
    lat: list[float] = []
    missed = dropped = 0
    errors: list[str] = []
    for out_path in outs:
        result: dict[str, Any] = json.loads(out_path.read_text())
        dropped += result["dropped"]
        errors += result["errors"]
        for a in attempts:
            aid = str(a["_id"])
            got = result["times"].get(aid, [])
            missed += per_process * per_connection - len(got)
            if aid in recorded:
                lat.extend((t - recorded[aid]) * 1000 for t in got)
    note = (
        f"{subs:,} subscriptions on {2 * per_process} connections over 2 API processes, "
        f"{len(attempts)} attempts, {missed} missed messages, {dropped} subscribers dropped"
    )
    if errors:
        note += f" ({errors[0][:120]})"
    ctx.emit(
        Result(
            f"P10 live feed, {subs:,} subscribers on 2 API processes, p99",
            pct(lat, 99),
            "ms after the Redis publish",
            None,
            "",
            None,
            "none dropped, none missed",
            note,
        )
    )
    ctx.emit(Result("P10 messages missed", float(missed), "messages", note=f"dropped subscribers: {dropped}"))


def _oid(value: str) -> Any:
    from bson import ObjectId

    return ObjectId(value)


SCALE_FIGURES = {"p9": p9, "p10": p10}
