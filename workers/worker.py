"""The arq worker process: ``webhooks worker`` builds and runs it from settings.

arq runs the process (start-up and shut-down hooks, signals, its health-check key) and the sweeper, as a
cron job that one worker runs per tick. arq 0.28 is in maintenance mode, so only its public surface is used
(no private method is overridden); tests/test_arq_contract.py pins what this module relies on. Delivery
attempts come from the lanes (``workers.dispatcher``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from arq import cron
from arq.worker import Worker, func
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from webhooks import heap, metrics
from webhooks.core import Core, open_core
from webhooks.queue import SWEEP_JOB, redis_settings
from webhooks.settings import Settings, SettingsError
from workers.dispatcher import Dispatcher
from workers.engine import DeliveryEngine
from workers.health import heartbeat_loop
from workers.sender import Sender
from workers.sweeper import Sweeper

log = logging.getLogger(__name__)

CLOSE_WAIT = 5.0  # seconds for the store and Redis connections to close on the way out


async def sweep(ctx: dict[str, Any]) -> int:
    sweeper: Sweeper = ctx["sweeper"]
    return await sweeper.sweep()


def sweep_seconds(settings: Settings) -> set[int]:
    """The seconds of each minute at which the sweeper runs (arq cron granularity: whole seconds)."""
    step = min(60, max(1, round(settings.sweep_interval)))
    return set(range(0, 60, step))


class _QuietSweeps(logging.Filter):
    """arq logs every job start and end at INFO: for the sweeper's cron ticks that is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (record.levelno <= logging.INFO and ("→ sweeper(" in message or "← sweeper " in message))


logging.getLogger("arq.worker").addFilter(_QuietSweeps())


def build_engine(settings: Settings, core: Core, sender: Sender) -> DeliveryEngine:
    """The delivery engine over a core's stores (a worker builds one)."""
    return DeliveryEngine(
        settings=settings,
        deliveries=core.delivery_repo,
        events=core.event_repo,
        webhooks=core.webhook_repo,
        webhook_cache=core.webhook_cache,
        box=core.box,
        lanes=core.lanes,
        handoff=core.handoff,
        publisher=core.publisher,
        sender=sender,
        publish_system=core.deliveries.publish_system,
    )


def build_worker(settings: Settings, *, sweeper: bool = True, handle_signals: bool = True) -> Worker:
    async def startup(ctx: dict[str, Any]) -> None:
        stack = contextlib.AsyncExitStack()
        core = await stack.enter_async_context(open_core(settings))
        sender = Sender(
            timeout=settings.delivery_timeout,
            allow_private=settings.allow_private_destinations,
            resolver=core.resolver,
            proxy=settings.egress_proxy,
            max_connections=settings.worker_max_in_flight,
        )
        stack.push_async_callback(sender.close)
        ctx["stack"] = stack
        ctx["core"] = core
        engine = build_engine(settings, core, sender)
        ctx["engine"] = engine
        ctx["sweeper"] = Sweeper(
            settings,
            core.lanes,
            core.event_repo,
            core.delivery_repo,
            core.webhook_repo,
            expiry=core.expiry if settings.retention_sweep else None,
        )
        dispatcher = Dispatcher(
            redis=core.redis,
            lanes=core.lanes,
            attempt=engine.run,
            max_in_flight=settings.worker_max_in_flight,
            attach=core.handoff.key_prefix,
        )
        engine.on_release = dispatcher.wake
        engine.reserve, engine.adopt = dispatcher.reserve, dispatcher.adopt
        ctx["dispatcher"] = dispatcher
        ctx["dispatch_task"] = asyncio.create_task(dispatcher.run())
        ctx["heartbeat"] = asyncio.create_task(heartbeat_loop(ctx["redis"], settings))
        heap.settle()
        log.info("worker started")

    async def shutdown(ctx: dict[str, Any]) -> None:
        """Idempotent: what it stops leaves ``ctx`` (``run_worker`` may call it again after arq's own close
        gave up)."""
        dispatcher: Dispatcher | None = ctx.pop("dispatcher", None)
        if dispatcher is not None:
            # SIGTERM/SIGINT: no new attempts; running ones get the shutdown wait to finish, then are
            # cancelled and go back to their lanes (the sweeper covers a killed process).
            await dispatcher.drain(settings.worker_shutdown_wait)
        for name in ("dispatch_task", "heartbeat"):
            task = ctx.pop(name, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        stack = ctx.pop("stack", None)
        if stack is not None:
            try:  # bounded: a store that stopped answering would hold the exit past the orchestrator's grace
                async with asyncio.timeout(CLOSE_WAIT):
                    await stack.aclose()
            except TimeoutError:
                log.warning("the store and Redis connections did not close in %.0f s; leaving", CLOSE_WAIT)
            log.info("worker stopped")

    cron_jobs = []
    if sweeper:
        cron_jobs.append(
            cron(sweep, name="sweeper", second=sweep_seconds(settings), run_at_startup=True, unique=True)
        )
    worker = Worker(
        functions=[func(sweep, name=SWEEP_JOB)],  # also runnable on demand
        cron_jobs=cron_jobs,
        queue_name=settings.queue_name,
        redis_settings=redis_settings(settings),
        on_startup=startup,
        on_shutdown=shutdown,
        poll_delay=settings.worker_poll_delay,
        max_jobs=settings.worker_max_jobs,
        keep_result=0,
        handle_signals=handle_signals,
        # A stop signal stops claiming at once (``on_stop``), cancels a running sweep (idempotent: the next
        # tick redoes it) and leaves the shutdown hook the whole wait to drain the attempts in flight. arq's
        # wait for jobs came first and went on claiming meanwhile, so a stop took twice the wait or more.
        job_completion_wait=0,
    )

    def stop_claiming(_: signal.Signals) -> None:
        dispatcher: Dispatcher | None = worker.ctx.get("dispatcher")
        if dispatcher is not None:
            dispatcher.stop_claiming()

    worker.on_stop = stop_claiming  # arq's public hook, called when a stop signal arrives
    return worker


RESTART_FIRST_WAIT = 1.0
RESTART_MAX_WAIT = 30.0


def run_worker(settings: Settings) -> None:
    """Run the worker; if it loses Redis (a failover, a restart), start it again after a back-off.

    arq's poll loop ends on a Redis connection error; the lanes, slots and sweeper rebuild everything from
    MongoDB, so a fresh worker in the same process is the whole recovery.
    """
    if settings.worker_metrics_port:  # the process's, kept across restarts; taken: stop, naming the setting
        try:
            metrics.serve(settings.worker_metrics_port)
        except OSError as exc:
            raise SettingsError(
                f"WEBHOOKS_WORKER_METRICS_PORT: cannot serve metrics on port {settings.worker_metrics_port} "
                f"({exc.strerror or exc})"
            ) from None
        log.info("worker metrics on port %d", settings.worker_metrics_port)
    wait = RESTART_FIRST_WAIT
    while True:
        started = time.monotonic()
        worker = build_worker(settings)
        try:
            worker.run()
            return  # stopped by a signal
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            finish_shutdown(worker)
            if time.monotonic() - started > RESTART_MAX_WAIT:
                wait = RESTART_FIRST_WAIT  # it ran fine for a while: start over quickly
            log.warning("worker lost Redis (%s: %s); starting again in %.0f s", type(exc).__name__, exc, wait)
            time.sleep(wait)
            wait = min(wait * 2, RESTART_MAX_WAIT)


def finish_shutdown(worker: Worker) -> None:
    """Run the shutdown hook if arq's close could not: it stops at its first Redis call (deleting its health
    key) when Redis is gone, before the hook, which would leave this worker's dispatcher claiming on the
    shared event loop, beside the next worker's, with connections that are closing (seen in the Sentinel
    failover test: two attempts failed at every claim until the test gave up)."""
    if worker.on_shutdown is None or "stack" not in worker.ctx:
        return
    try:
        worker.loop.run_until_complete(worker.on_shutdown(worker.ctx))
    except Exception as exc:
        log.warning("could not stop the lost worker cleanly (%s)", type(exc).__name__)
