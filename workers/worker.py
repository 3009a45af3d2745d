"""The arq worker process: ``webhooks worker`` builds and runs it from settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any

from arq.worker import Worker, func

from webhooks import metrics
from webhooks.core import open_core
from webhooks.queue import DELIVER_JOB, job_timeout, redis_settings
from webhooks.settings import Settings
from workers.engine import DeliveryEngine
from workers.health import heartbeat_loop
from workers.jobs import deliver, sweeper_loop
from workers.leases import JobLeases
from workers.sender import Sender
from workers.wakeup import WakeableWorker

log = logging.getLogger(__name__)


def build_worker(settings: Settings, *, sweeper: bool = True, handle_signals: bool = True) -> Worker:
    async def startup(ctx: dict[str, Any]) -> None:
        stack = contextlib.AsyncExitStack()
        core = await stack.enter_async_context(open_core(settings))
        sender = Sender(
            timeout=settings.delivery_timeout,
            allow_private=settings.allow_private_destinations,
            resolver=core.resolver,
            proxy=settings.egress_proxy,
        )
        stack.push_async_callback(sender.close)
        ctx["stack"] = stack
        ctx["core"] = core
        ctx["engine"] = DeliveryEngine(
            settings=settings,
            deliveries=core.delivery_repo,
            events=core.event_repo,
            webhooks=core.webhook_repo,
            box=core.box,
            queue=core.queue,
            publisher=core.publisher,
            sender=sender,
        )
        if sweeper:
            task = asyncio.create_task(sweeper_loop(core))
            ctx["sweeper"] = task
        ctx["heartbeat"] = asyncio.create_task(heartbeat_loop(ctx["redis"], settings))
        ctx["leases"] = leases = JobLeases(ctx["redis"], settings.queue_name)
        ctx["lease_refresher"] = asyncio.create_task(leases.refresh_forever())
        if settings.worker_metrics_port and not ctx.get("metrics_served"):
            metrics.serve(settings.worker_metrics_port)
            ctx["metrics_served"] = True
            log.info("worker metrics on port %d", settings.worker_metrics_port)
        log.info("worker started")

    async def shutdown(ctx: dict[str, Any]) -> None:
        for name in ("sweeper", "heartbeat", "lease_refresher"):
            task = ctx.get(name)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        stack = ctx.get("stack")
        if stack is not None:
            await stack.aclose()
        log.info("worker stopped")

    return WakeableWorker(
        functions=[func(deliver, name=DELIVER_JOB)],
        queue_name=settings.queue_name,
        redis_settings=redis_settings(settings),
        on_startup=startup,
        on_shutdown=shutdown,
        poll_delay=settings.worker_poll_delay,
        max_jobs=settings.worker_max_jobs,
        job_timeout=job_timeout(settings),
        keep_result=0,
        max_tries=1000,
        handle_signals=handle_signals,
        # SIGTERM/SIGINT: stop taking jobs, give in-flight ones this long to finish, then cancel what is left
        # (arq re-queues a cancelled job; the sweeper covers a killed process).
        job_completion_wait=math.ceil(settings.worker_shutdown_wait),
    )


def run_worker(settings: Settings) -> None:
    build_worker(settings).run()
