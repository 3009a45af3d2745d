"""The arq worker process: ``webhooks worker`` builds and runs it from settings."""

from __future__ import annotations

import logging
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker, func

from webhooks.core import open_core
from webhooks.settings import Settings

log = logging.getLogger(__name__)


async def ping(ctx: dict[str, Any]) -> str:
    """A no-op job, useful to check that a worker is consuming."""
    return "pong"


def redis_settings(settings: Settings) -> RedisSettings:
    if not settings.redis_url:
        raise RuntimeError("WEBHOOKS_REDIS_URL is not set: use `webhooks dev` for the embedded default")
    return RedisSettings.from_dsn(settings.redis_url)


def build_worker(settings: Settings) -> Worker:
    async def startup(ctx: dict[str, Any]) -> None:
        cm = open_core(settings)
        ctx["core_cm"] = cm
        ctx["core"] = await cm.__aenter__()
        log.info("worker started")

    async def shutdown(ctx: dict[str, Any]) -> None:
        cm = ctx.get("core_cm")
        if cm is not None:
            await cm.__aexit__(None, None, None)
        log.info("worker stopped")

    return Worker(
        functions=[func(ping, name="ping")],
        redis_settings=redis_settings(settings),
        on_startup=startup,
        on_shutdown=shutdown,
        poll_delay=settings.worker_poll_delay,
        max_jobs=settings.worker_max_jobs,
        handle_signals=True,
    )


def run_worker(settings: Settings) -> None:
    build_worker(settings).run()
