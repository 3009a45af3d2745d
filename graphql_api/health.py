"""Operational endpoints: ``/healthz`` (liveness), ``/readyz`` (MongoDB and Redis answer), ``/metrics``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from webhooks import heap, metrics
from webhooks.core import Core
from webhooks.timeutil import utcnow

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 1.0  # seconds, per dependency
SCRAPE_TIMEOUT = 1.0
OVERDUE_COUNT_LIMIT = 100_000


async def _check(probe: Awaitable[object], timeout: float) -> str:
    try:
        async with asyncio.timeout(timeout):
            await probe
    except TimeoutError:
        return f"error: no answer within {timeout:g} s"
    except Exception as exc:  # any failure means "not ready"; say which
        return f"error: {type(exc).__name__}: {str(exc)[:200]}"
    return "ok"


def _core(request: Request) -> Core | None:
    return getattr(request.app.state, "core", None)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def readiness(core: Core, timeout: float = CHECK_TIMEOUT) -> dict[str, str]:
    mongodb, redis = await asyncio.gather(
        _check(core.client.admin.command("ping"), timeout),
        _check(core.redis.ping(), timeout),
    )
    return {"mongodb": mongodb, "redis": redis}


async def readyz(request: Request) -> Response:
    core = _core(request)
    if core is None:
        checks = {"mongodb": "error: not started", "redis": "error: not started"}
    else:
        checks = await readiness(core)
    ready = all(v == "ok" for v in checks.values())
    if not ready:
        log.warning(
            "not ready: %s",
            ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok"),
            extra={"fields": {"checks": checks}},
        )
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )


async def _queue_depth(core: Core) -> float:
    return float(await core.lanes.depth())


async def _overdue(core: Core) -> float:
    before = utcnow() - timedelta(seconds=core.settings.sweep_grace)
    count = await core.delivery_repo.count_overdue(
        before, OVERDUE_COUNT_LIMIT, max_time_ms=int(SCRAPE_TIMEOUT * 1000)
    )
    return float(count)


async def _waiting_on_limit(core: Core) -> float:
    return float(await core.lanes.waiting_on_limit(utcnow()))


async def _ordered_waiting(core: Core) -> float:
    return float(await core.lanes.ordered_waiting())


async def _open_breakers(core: Core) -> float:
    return float(await core.lanes.open_breakers())


async def scrape_gauges(core: Core) -> list[metrics.ScrapeGauge]:
    """Queue depth and overdue deliveries, each skipped (and logged) if its store does not answer in time."""
    wanted: list[tuple[str, str, Callable[[Core], Awaitable[float]]]] = [
        (
            "webhooks_queue_depth",
            "Attempts waiting in the webhooks' lanes (due now or scheduled later).",
            _queue_depth,
        ),
        (
            "webhooks_attempts_waiting_on_limit",
            "Due attempts waiting because their webhook has its in-flight limit of attempts running.",
            _waiting_on_limit,
        ),
        (
            "webhooks_ordered_waiting",
            "Deliveries of PER_RESOURCE webhooks waiting for an earlier delivery of their resource to finish "
            "(not in webhooks_queue_depth: more workers would not send them sooner).",
            _ordered_waiting,
        ),
        ("webhooks_breakers_open", "Webhooks whose circuit breaker is open.", _open_breakers),
        (
            "webhooks_deliveries_overdue",
            f"Pending deliveries whose next attempt is overdue by more than the sweep grace (capped at "
            f"{OVERDUE_COUNT_LIMIT}).",
            _overdue,
        ),
    ]

    Probe = Callable[[Core], Awaitable[float]]

    async def one(name: str, doc: str, probe: Probe) -> metrics.ScrapeGauge | None:
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                value = await probe(core)
        except Exception as exc:
            log.warning("metric %s not computed: %s", name, type(exc).__name__)
            return None
        return metrics.ScrapeGauge(name, doc, value)

    found = await asyncio.gather(*(one(n, d, p) for n, d, p in wanted))
    return [g for g in found if g is not None]


async def metrics_endpoint(request: Request) -> Response:
    core = _core(request)
    extra = await scrape_gauges(core) if core is not None else []
    heap.record_pauses()
    body = await asyncio.to_thread(metrics.render, extra)
    return Response(body, media_type=metrics.CONTENT_TYPE, headers={"Cache-Control": "no-store"})


def health_routes() -> list[BaseRoute]:
    return [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
