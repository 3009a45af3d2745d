"""Background work that can wait until the current request has been answered.

A cache's refresh-ahead reload (``webhooks.cache``) is a store read that the request itself does not need.
Started at once, it ran beside the request's own store work and, with the store busy, slowed it down: in
bench P8 "huge" the healthy account's API key and webhooks were reloaded every 1.5 s (every sixth publish,
at one every 250 ms), and those publishes took 16–24 ms against 10–14 ms for the others (runs with long
cache lifetimes had no such peaks).

Inside ``deferring()`` (the API opens one per HTTP request, ``graphql_api.after_response``), ``later``
keeps the work until the scope ends, after the response has been sent. Anywhere else (the worker, a
subscription), or once the scope has ended, it starts at once. Either way it runs in a task of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from contextvars import ContextVar
from typing import Any

Job = Callable[[], Coroutine[Any, Any, None]]


class _Scope:
    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.open = True


_scope: ContextVar[_Scope | None] = ContextVar("deferral_scope", default=None)
_running: set[asyncio.Task[None]] = set()  # strong references: a task nobody holds may be collected


def later(job: Job) -> None:
    """Run ``job`` once the current request scope has ended, or now if there is none."""
    scope = _scope.get()
    if scope is not None and scope.open:
        scope.jobs.append(job)
    else:
        _start(job)


@contextlib.contextmanager
def deferring() -> Iterator[None]:
    """Hold ``later``'s jobs while the block runs; start them when it ends (also if it fails)."""
    scope = _Scope()
    token = _scope.set(scope)
    try:
        yield
    finally:
        _scope.reset(token)
        scope.open = False  # a job added after this (by a task that outlived the block) starts at once
        for job in scope.jobs:
            _start(job)


def _start(job: Job) -> None:
    task = asyncio.create_task(job())
    _running.add(task)
    task.add_done_callback(_running.discard)
