"""Prometheus metrics shared by the API and the workers (``prometheus-client``).

Single process: the default registry. Several processes (``webhooks dev``, gunicorn-style setups): set
``PROMETHEUS_MULTIPROC_DIR`` to an empty, writable directory before the processes start; every process then
writes its samples there and ``/metrics`` on any API process aggregates them with ``MultiProcessCollector``.

Labels are bounded: outcome classes, final statuses, event wire names from the catalog, operation types and
sanitized GraphQL operation names (at most ``MAX_OPERATION_NAMES`` distinct names per process).
No ids, no URLs.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache, partial

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from webhooks import outcomes
from webhooks.events import DELIVERED_NAMES
from webhooks.outcomes import OutcomeClass

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
MAX_OPERATION_NAMES = 200

_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_DELAY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)

DELIVERIES = Counter(
    "webhooks_deliveries",
    "Deliveries that reached a final status (succeeded, failed, held), by event.",
    ["status", "event"],
)
ATTEMPTS = Counter(
    "webhooks_delivery_attempts",
    "Delivery attempts by outcome class (2xx, 3xx, 4xx, 5xx, timeout, connection_error, tls_error, blocked).",
    ["outcome"],
)
ATTEMPT_DURATION = Histogram(
    "webhooks_delivery_attempt_duration_seconds",
    "Wall-clock duration of one delivery attempt (connect, send, first 4 KiB of the answer).",
    buckets=_SECONDS_BUCKETS,
)
DISPATCH_DELAY = Histogram(
    "webhooks_delivery_dispatch_delay_seconds",
    "Delay between the time an attempt was scheduled for and the time a worker started it, by what it "
    "waited for: none (on time), worker (every worker busy), webhook_limit (its webhook's in-flight "
    "limit), breaker (its webhook's open breaker).",
    ["wait"],
    buckets=_DELAY_BUCKETS,
)
GC_PAUSES = Histogram(
    "webhooks_gc_pause_seconds",
    "Garbage-collector passes of generations 1 and 2 (each stops this process's event loop), by generation.",
    ["generation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
BATCH_DURATION = Histogram(
    "webhooks_batch_seconds",
    "Coalesced batches, by step: publish (the API's event writes and enqueue), load, release and record (the "
    "worker's reads, slot releases and outcome writes). A step runs one batch at a time per process: a "
    "rate of the _sum near 1 means that step is saturated in that process.",
    ["step"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
BATCH_ITEMS = Counter(
    "webhooks_batch_items",
    "Calls served by coalesced batches, by step (divided by the batches' _count: their mean size).",
    ["step"],
)
BREAKER_CHANGES = Counter(
    "webhooks_breaker_transitions",
    "Webhook circuit breakers that opened or closed.",
    ["to"],
)
WEBHOOKS_DISABLED = Counter(
    "webhooks_webhooks_auto_disabled",
    "Webhooks disabled automatically after too many consecutive failed deliveries.",
)
GRAPHQL_OPERATIONS = Counter(
    "webhooks_graphql_operations",
    "GraphQL operations by operation name (sanitized, bounded), type and outcome (ok, error).",
    ["operation", "type", "outcome"],
)
GRAPHQL_DURATION = Histogram(
    "webhooks_graphql_operation_duration_seconds",
    "GraphQL operation latency (queries and mutations; subscriptions: time to set up).",
    ["type"],
    buckets=_SECONDS_BUCKETS,
)
SUBSCRIPTIONS_OPEN = Gauge(
    "webhooks_graphql_subscriptions_open",
    "GraphQL subscriptions currently open.",
    multiprocess_mode="livesum",
)

_EVENTS = DELIVERED_NAMES
_NAME = re.compile(r"[^A-Za-z0-9_]")
_seen_names: set[str] = set()
_names_lock = threading.Lock()


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


# ------------------------------------------------------------------------------------------ delivery


def attempt_outcome(outcome: str, status_code: int | None) -> str:
    """The bounded ``outcome`` label of one attempt (``webhooks.outcomes.label``)."""
    return outcomes.label(OutcomeClass(outcome), status_code)


def event_label(event: str) -> str:
    return event if event in _EVENTS else "other"


# The labelled children of the per-attempt metrics, looked up once per label value (every label here is
# bounded): ``labels()`` takes a lock and builds a key on each call, a few per cent of a busy worker's CPU.
@cache
def _attempts(outcome: str) -> Counter:
    return ATTEMPTS.labels(outcome=outcome)


@cache
def _deliveries(status: str, event: str) -> Counter:
    return DELIVERIES.labels(status=status, event=event)


@cache
def _dispatch_delay(wait: str) -> Histogram:
    return DISPATCH_DELAY.labels(wait=wait)


def attempt_made(outcome: str, status_code: int | None, duration_ms: int) -> None:
    _attempts(attempt_outcome(outcome, status_code)).inc()
    ATTEMPT_DURATION.observe(max(duration_ms, 0) / 1000)


def delivery_finished(status: str, event: str) -> None:
    _deliveries(status.lower(), event_label(event)).inc()


def dispatch_delay(seconds: float, wait: str) -> None:
    """``wait``: none, worker, webhook_limit or breaker."""
    _dispatch_delay(wait).observe(max(seconds, 0.0))


@cache
def _gc_pauses(generation: int) -> Histogram:
    return GC_PAUSES.labels(generation=str(generation))


def gc_pause(generation: int, seconds: float) -> None:
    """``generation``: 1 or 2."""
    _gc_pauses(generation).observe(seconds)


@cache
def _batches(step: str) -> tuple[Histogram, Counter]:
    return BATCH_DURATION.labels(step=step), BATCH_ITEMS.labels(step=step)


def batch_done(step: str, size: int, seconds: float) -> None:
    """``step``: publish, load, release or record (``webhooks.coalesce.Coalescer``'s ``on_batch``)."""
    duration, items = _batches(step)
    duration.observe(seconds)
    items.inc(size)


def batch_observer(step: str) -> Callable[[int, float], None]:
    return partial(batch_done, step)


def breaker_changed(opened: bool) -> None:
    BREAKER_CHANGES.labels(to="open" if opened else "closed").inc()


def webhook_disabled() -> None:
    WEBHOOKS_DISABLED.inc()


# ------------------------------------------------------------------------------------------- GraphQL


def operation_label(name: str | None) -> str:
    """``anonymous``, the name reduced to ``[A-Za-z0-9_]{1,64}``, or ``other`` once too many were seen."""
    if not name:
        return "anonymous"
    clean = _NAME.sub("_", name)[:64]
    with _names_lock:
        if clean in _seen_names:
            return clean
        if len(_seen_names) >= MAX_OPERATION_NAMES:
            return "other"
        _seen_names.add(clean)
    return clean


def graphql_operation(name: str | None, kind: str, outcome: str, seconds: float) -> None:
    kind = kind if kind in ("query", "mutation", "subscription") else "unknown"
    GRAPHQL_OPERATIONS.labels(operation=operation_label(name), type=kind, outcome=outcome).inc()
    GRAPHQL_DURATION.labels(type=kind).observe(max(seconds, 0.0))


def subscription_opened() -> None:
    SUBSCRIPTIONS_OPEN.inc()


def subscription_closed() -> None:
    SUBSCRIPTIONS_OPEN.dec()


# -------------------------------------------------------------------------------------------- export


@dataclass(frozen=True, slots=True)
class ScrapeGauge:
    """A value computed at scrape time (queue depth, overdue deliveries)."""

    name: str
    documentation: str
    value: float


class _Snapshot(Collector):
    def __init__(self, gauges: Iterable[ScrapeGauge]) -> None:
        self._gauges = list(gauges)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for gauge in self._gauges:
            yield GaugeMetricFamily(gauge.name, gauge.documentation, value=gauge.value)


def render(extra: Iterable[ScrapeGauge] = ()) -> bytes:
    """Text exposition: this process's (multiprocess mode: every process's) metrics, plus ``extra``."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    snapshot = CollectorRegistry()
    snapshot.register(_Snapshot(extra))
    return text + generate_latest(snapshot)


_served: set[int] = set()


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Expose this process's metrics on ``port`` (the worker's optional metrics endpoint), once per process
    (a second server could not bind). ``OSError`` when the port cannot be bound (another process has it)."""
    if port in _served:
        return
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        start_http_server(port, addr=addr, registry=registry)
    else:
        start_http_server(port, addr=addr)
    _served.add(port)


def process_exited(pid: int) -> None:
    """Multiprocess mode: drop the live gauges of a process that has stopped."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
