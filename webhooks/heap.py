"""The garbage collector of the long-running processes (the API and the worker).

CPython's full collection (generation 2) walks every object the collector tracks, and it stops the event
loop while it does: every account's work in that process waits. Measured in the worker in bench P8 "huge"
(10,000 events to one webhook while another account publishes): full collections took 33 → 127 ms as the
heap grew from 68,000 to 168,000 tracked objects, and each one that met the other account's event showed up
as its whole p99 (52–115 ms against 15–20 ms without one). Two things keep the pauses short:

* ``settle()`` once a process has started: what start-up built (modules, classes, functions, the schema,
  about 40,000 objects that live as long as the process) moves out of the collector's sight
  (``gc.freeze``), so no later collection walks it again;
* what the processes keep in memory for long is bounded in entries, not only in bytes: the worker's event
  cache (``workers.engine.EVENT_CACHE_ENTRIES``) holds about ten tracked objects per event.

``settle()`` also times every pass of generations 1 and 2, and ``record_pauses()`` moves those times into
``webhooks_gc_pause_seconds`` (the API on each scrape, the worker on each heartbeat), so a pause that grows
again shows on the dashboards rather than only in a customer's latency. The collector's callback only
appends to a deque: a collection can interrupt code that holds a metric's lock (in multiprocess mode one
lock serves every metric), and observing from inside it would wait for that lock forever.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from typing import Any

from webhooks import metrics

_settled = False
_started = 0.0
_pauses: deque[tuple[int, float]] = deque(maxlen=10_000)  # (generation, seconds), not yet recorded


def settle() -> None:
    """Collect, then freeze what is left: start-up's objects are never walked again. Once per process: a
    worker started again in the same process (after losing Redis), or a test process that starts many apps,
    does not freeze what later start-ups leave behind."""
    global _settled
    if _settled:
        return
    _settled = True
    gc.collect()
    gc.freeze()
    gc.callbacks.append(_timed)


def _timed(phase: str, info: dict[str, Any]) -> None:
    """A ``gc.callbacks`` hook: the length of each pass of generation 1 or 2 (generation 0's are many and
    short: not timed)."""
    global _started
    generation = info["generation"]
    if generation == 0:
        return
    if phase == "start":
        _started = time.perf_counter()
    else:
        _pauses.append((generation, time.perf_counter() - _started))


def record_pauses() -> None:
    """Move the passes timed since the last call into ``webhooks_gc_pause_seconds``."""
    while _pauses:
        generation, seconds = _pauses.popleft()
        metrics.gc_pause(generation, seconds)
