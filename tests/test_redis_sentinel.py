"""Redis Sentinel, for real: one primary, one replica and three sentinels (valkey-server) on loopback.

The API (in-process, real HTTP and WebSocket) and a real worker process find the master through the
sentinels (WEBHOOKS_REDIS_SENTINELS / WEBHOOKS_REDIS_SENTINEL_MASTER). The primary is killed while
deliveries and retries are pending: the sentinels promote the replica, and every delivery still succeeds
(the sweeper re-queues whatever the old primary took with it), new events are accepted, and the live feed
reconnects to the new master.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from tests.conftest import make_settings
from tests.delivery_support import create_webhook, publish, wait_for_status
from tests.receiver import Receiver
from tests.support import run_stack, service_env
from tests.test_subscriptions import gql_socket
from webhooks.redis_conn import RedisConfigError, RedisTarget, parse_sentinels
from webhooks.settings import Settings
from webhooks_cli.embedded import free_port, spawn, stop, valkey_binary, wait_for_port

MASTER = "hbmaster"
SCHEDULE = (0.0, 1.0, 1.0, 2.0, 2.0, 4.0)
LIVE = "subscription { deliveryAttempts { deliveryId statusCode deliveryStatus } }"


def test_sentinel_settings_are_checked_with_clear_errors(tmp_path: Path) -> None:
    assert parse_sentinels(["a:26379", " b:26380", "[::1]:26381"]) == [
        ("a", 26379),
        ("b", 26380),
        ("::1", 26381),
    ]
    for bad in ("a", "a:", ":1", "a:x", "a:70000"):
        with pytest.raises(RedisConfigError, match="WEBHOOKS_REDIS_SENTINELS"):
            parse_sentinels([bad])
    only_master = Settings(redis_sentinel_master="m", data_dir=tmp_path)
    with pytest.raises(RedisConfigError, match="WEBHOOKS_REDIS_SENTINELS is empty"):
        RedisTarget.of(only_master)
    only_nodes = Settings.model_validate({"redis_sentinels": "a:1,b:2", "data_dir": tmp_path})
    with pytest.raises(RedisConfigError, match="WEBHOOKS_REDIS_SENTINEL_MASTER"):
        RedisTarget.of(only_nodes)
    # the URL lends database and password to the sentinel-found master
    target = RedisTarget.of(
        Settings.model_validate(
            {
                "redis_sentinels": "s1:26379,s2:26379",
                "redis_sentinel_master": "m",
                "redis_url": "redis://:pw@ignored:6379/3",
                "data_dir": tmp_path,
            }
        )
    )
    arq = target.arq_settings()
    assert (arq.sentinel, arq.host, arq.sentinel_master, arq.database, arq.password) == (
        True,
        [("s1", 26379), ("s2", 26379)],
        "m",
        3,
        "pw",
    )
    assert "pw" not in target.describe()


@contextlib.contextmanager
def sentinel_cluster(base: Path) -> Iterator[dict[str, Any]]:
    """A primary, a replica and three sentinels; yields their ports and processes."""
    binary = valkey_binary()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    primary, replica = free_port(), free_port()
    sentinels = [free_port() for _ in range(3)]
    try:
        for name, port, extra in (
            ("primary", primary, []),
            ("replica", replica, ["--replicaof", "127.0.0.1", str(primary)]),
        ):
            data = base / name
            data.mkdir()
            procs[name] = spawn(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(data),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    *extra,
                ],
                quiet=True,
            )
            wait_for_port(port, procs[name], name)
        for i, port in enumerate(sentinels):
            conf = base / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {base}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 5000\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            procs[f"sentinel-{i}"] = spawn([binary, str(conf), "--sentinel"], quiet=True)
            wait_for_port(port, procs[f"sentinel-{i}"], f"sentinel {i}")
        yield {"primary": primary, "replica": replica, "sentinels": sentinels, "procs": procs}
    finally:
        for proc in procs.values():
            stop(proc)


async def master_port(sentinel_port: int) -> int | None:
    client = aioredis.Redis(host="127.0.0.1", port=sentinel_port, socket_timeout=2)
    try:
        got = await client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER)  # type: ignore[no-untyped-call]
    except Exception:
        return None
    finally:
        await client.aclose()
    return int(got[1]) if got else None


async def until(predicate: Any, timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():  # noqa: ASYNC110 - polls another process
            await asyncio.sleep(0.1)


def fails_first(times: int) -> Any:
    seen: Counter[str] = Counter()

    async def answer(request: web.Request, n: int) -> web.StreamResponse:
        delivery_id = request.headers["X-Webhook-Delivery"]
        seen[delivery_id] += 1
        return web.Response(status=500 if seen[delivery_id] <= times else 200)

    return answer


@pytest.mark.timeout(240)
async def test_a_primary_killed_with_retries_pending_loses_nothing_and_the_feed_reconnects(
    mongodb_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    with sentinel_cluster(tmp_path) as cluster:
        # the replica is in sync and every sentinel sees it before anything starts
        replica_client = aioredis.Redis(host="127.0.0.1", port=cluster["replica"])
        try:
            await until(lambda: _replica_synced(replica_client), 30, "the replica to sync with the primary")
        finally:
            await replica_client.aclose()
        nodes = ",".join(f"127.0.0.1:{p}" for p in cluster["sentinels"])
        settings = make_settings(
            mongodb_url,
            tmp_path / "data",
            redis_url="",
            redis_sentinels=nodes,
            redis_sentinel_master=MASTER,
            retry_schedule=SCHEDULE,
            delivery_timeout=3,
            sweep_interval=1,
            sweep_grace=1,
        )
        env = service_env(
            settings,
            WEBHOOKS_REDIS_URL="",
            WEBHOOKS_REDIS_SENTINELS=nodes,
            WEBHOOKS_REDIS_SENTINEL_MASTER=MASTER,
            WEBHOOKS_RETRY_SCHEDULE=",".join(str(d) for d in SCHEDULE),
            WEBHOOKS_DELIVERY_TIMEOUT="3",
            WEBHOOKS_SWEEP_INTERVAL="1",
            WEBHOOKS_SWEEP_GRACE="1",
        )
        async with run_stack(settings, worker=False) as stack, supervised_worker(env, tmp_path) as worker:
            await _scenario(stack, receiver, cluster, stack.http.base_url)
            # the worker process rode out the failover itself (it restarts its arq worker in-process)
            assert worker.restarts == 0


@dataclass
class Supervised:
    """A worker process restarted whenever it exits, as Kubernetes does (restartPolicy: Always)."""

    env: dict[str, str]
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = -1

    def start(self) -> None:
        self.restarts += 1
        with open(self.log_dir / f"worker-{self.restarts}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "webhooks_cli", "worker"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    async def watch(self) -> None:
        while True:
            if self.proc is None or self.proc.poll() is not None:
                self.start()
            await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def supervised_worker(env: dict[str, str], log_dir: Path) -> AsyncIterator[Supervised]:
    worker = Supervised(env, log_dir)
    watcher = asyncio.create_task(worker.watch())
    try:
        yield worker
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if worker.proc is not None and worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGKILL)
            worker.proc.wait(10)


async def _replica_synced(client: aioredis.Redis) -> bool:
    info = await client.info("replication")
    return bool(info.get("master_link_status") == "up")


async def _scenario(stack: Any, receiver: Receiver, cluster: dict[str, Any], base_url: Any) -> None:
    account = await stack.account()
    path = f"/flaky/{uuid.uuid4().hex[:6]}"
    # given a webhook whose receiver fails the first 2 attempts of every delivery (so retries are pending)
    await create_webhook(account.gql, receiver.url(path, fails_first(2)))
    async with gql_socket(str(base_url), account.api_key) as live:
        op = await live.subscribe(LIVE)
        # and 10 events published before the failover, whose first attempts have failed
        before = [await publish(account.gql) for _ in range(10)]
        ids = [p["event"]["deliveries"][0]["id"] for p in before]
        async with asyncio.timeout(30), receiver.arrived:
            await receiver.arrived.wait_for(lambda: len(receiver.received[path]) >= 10)
        # when the primary is killed
        cluster["procs"]["primary"].send_signal(signal.SIGKILL)
        cluster["procs"]["primary"].wait(10)
        # then the sentinels promote the replica
        await until(lambda: _promoted(cluster), 60, "the sentinels to promote the replica")
        # and new events are accepted through the new master
        after = [await publish(account.gql) for _ in range(5)]
        ids += [p["event"]["deliveries"][0]["id"] for p in after]
        # and every delivery, before and after, succeeds (the sweeper re-queues what the old primary lost)
        done = await asyncio.gather(*(wait_for_status(account.gql, i, "SUCCEEDED", timeout=120) for i in ids))
        assert all(d["status"] == "SUCCEEDED" for d in done)
        assert {r.headers["X-Webhook-Delivery"] for r in receiver.received[path]} == set(ids)
        # and the live feed comes back: the subscription made before the failover is ended, saying why
        # (what was published while the feed reconnected is not replayed: clients re-query), and one made
        # again shows the attempts of newly published events (probes are published until one shows)
        async with asyncio.timeout(90):
            while True:
                message = await live.message(op, timeout=90)
                if message["type"] != "next" or message["payload"].get("errors"):
                    break
        assert message["payload"]["errors"][0]["extensions"]["code"] == "FEED_INTERRUPTED", message
        op = await live.subscribe(LIVE)
        probes: set[str] = set()
        async with asyncio.timeout(90):
            while not await _shows_one_of(live, op, probes):
                probes.add((await publish(account.gql))["event"]["deliveries"][0]["id"])


async def _shows_one_of(live: Any, op: str, deliveries: set[str], within: float = 5.0) -> bool:
    """Whether the subscription shows an attempt of one of ``deliveries`` within ``within`` seconds."""
    if not deliveries:
        return False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while True:
                message = await live.message(op, timeout=within)
                assert message["type"] == "next", message
                if message["payload"]["data"]["deliveryAttempts"]["deliveryId"] in deliveries:
                    return True
    return False


async def _promoted(cluster: dict[str, Any]) -> bool:
    ports = [await master_port(p) for p in cluster["sentinels"]]
    return ports.count(cluster["replica"]) >= 2
