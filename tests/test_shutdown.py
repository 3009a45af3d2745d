"""Graceful shutdown with real processes: SIGTERM a worker mid-burst; it finishes in-flight attempts, exits 0,
and a second worker completes the rest. Every delivery reaches a final state; none is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from bson import ObjectId

from tests.delivery_support import create_webhook, publish
from tests.receiver import run_receiver, sleep
from tests.support import run_stack
from tests.test_operations import start_worker, unique_settings, worker_env
from tests.test_worker_restart import read, wait_for_text
from webhooks_cli.embedded import start_secantus, stop
from workers.worker import CLOSE_WAIT

BURST = 40


async def test_sigterm_mid_burst_loses_nothing(mongodb_url: str, tmp_path: Path) -> None:
    settings = unique_settings(mongodb_url, tmp_path, sweep_interval=1.0, sweep_grace=1.0)
    env = worker_env(settings)
    log1, log2 = tmp_path / "worker1.log", tmp_path / "worker2.log"
    first = start_worker(env, log1)
    second = None
    try:
        async with run_receiver() as receiver, run_stack(settings, worker=False) as stack:
            account = await stack.account()
            await create_webhook(account.gql, receiver.url("/slow", sleep(0.5)))
            delivery_ids: list[str] = []
            signalled_at = None
            in_flight = 0
            for _ in range(BURST):
                payload = await publish(account.gql)
                assert payload["errors"] == []
                delivery_ids += [d["id"] for d in payload["event"]["deliveries"]]
                if signalled_at is None and len(receiver.received["/slow"]) >= 5:
                    in_flight = len(receiver.received["/slow"])
                    first.send_signal(signal.SIGTERM)
                    signalled_at = time.monotonic()
                await asyncio.sleep(0.05)
            if signalled_at is None:  # the worker started slowly: wait until it is busy, then stop it
                await receiver.wait_for("/slow", 3, timeout=60)
                in_flight = len(receiver.received["/slow"])
                first.send_signal(signal.SIGTERM)
                signalled_at = time.monotonic()

            code = await asyncio.to_thread(first.wait, 40)
            assert code == 0, log1.read_text()[-3000:]
            assert time.monotonic() - signalled_at < settings.worker_shutdown_wait + 10
            assert "shutdown on SIGTERM" in log1.read_text()
            assert "dispatcher stopped: 0 attempts cancelled" in log1.read_text(), "in-flight attempts finish"
            assert in_flight >= 1

            second = start_worker(env, log2)
            ids = [ObjectId(d) for d in delivery_ids]
            deadline = time.monotonic() + 120
            while True:
                found = await stack.core.delivery_repo.stored_by_ids(ids)
                statuses = [d.status.value for d in found.values()]
                if len(found) == len(ids) and all(s == "SUCCEEDED" for s in statuses):
                    break
                assert second.poll() is None, log2.read_text()[-3000:]
                assert time.monotonic() < deadline, f"not all delivered: {sorted(set(statuses))}"
                await asyncio.sleep(0.3)

            got = {r.headers["X-Webhook-Delivery"] for r in receiver.received["/slow"]}
            assert got == set(delivery_ids), "every delivery reached the receiver at least once"
            second.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(second.wait, 40) == 0
    finally:
        stop(first)
        if second is not None:
            stop(second)


@pytest.mark.timeout(120)
async def test_sigterm_while_the_store_has_stopped_answering_still_exits_within_its_bound(
    tmp_path: Path,
) -> None:
    # given a worker on its own SecantusDB, sweeping every second
    secantus = start_secantus(tmp_path / "mongo")
    settings = unique_settings(secantus.url, tmp_path / "data", sweep_interval=1.0)
    env = worker_env(settings, WEBHOOKS_SWEEP_INTERVAL="1", WEBHOOKS_WORKER_SHUTDOWN_WAIT="3")
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        await wait_for_text(log, "worker started")
        # and a store that stops answering (a stepdown, a stalled host), with a sweep waiting on it
        os.kill(secantus.process.pid, signal.SIGSTOP)
        await asyncio.sleep(2.0)
        # when the worker is asked to stop
        worker.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = await asyncio.to_thread(worker.wait, 60)
        took = time.monotonic() - signalled
    finally:
        os.kill(secantus.process.pid, signal.SIGCONT)
        stop(worker)
        secantus.stop()
    # then it exits cleanly within its drain wait plus the bounded close (3 + 5 s), not after the store
    assert code == 0, read(log)[-3000:]
    assert took < 3 + CLOSE_WAIT + 2, f"stopped after {took:.1f} s"
