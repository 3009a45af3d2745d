"""What the worker relies on from arq, pinned: a release that changes it fails here, loudly.

arq 0.28 is in maintenance mode, so the project keeps its use of arq to the public surface: the Worker's
start-up/shut-down hooks, cron jobs with ``unique``, ``job_completion_wait``, and the ``on_stop`` hook that a
stop signal calls. No private method is overridden (the lanes in ``webhooks.lanes`` do what arq cannot).
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import arq
from arq.worker import Worker

from tests.conftest import make_settings
from tests.support import run_worker
from workers.worker import build_worker


def test_the_worker_parameters_we_pass_still_exist() -> None:
    used = {
        "functions",
        "cron_jobs",
        "queue_name",
        "redis_settings",
        "on_startup",
        "on_shutdown",
        "poll_delay",
        "max_jobs",
        "keep_result",
        "handle_signals",
        "job_completion_wait",
    }
    assert used <= set(inspect.signature(Worker).parameters), sorted(
        used - set(inspect.signature(Worker).parameters)
    )


def test_a_stop_signal_still_calls_on_stop() -> None:
    # the dispatcher stops claiming attempts through this hook (workers/worker.py)
    for handler in (Worker.handle_sig, Worker._wait_for_tasks_to_complete):
        assert "self.on_stop" in inspect.getsource(handler), handler.__name__


def test_the_built_worker_uses_only_public_hooks(mongodb_url: str, tmp_path: Path) -> None:
    worker = build_worker(make_settings(mongodb_url, tmp_path), handle_signals=False)
    assert worker.on_stop is not None
    assert {"sweep", "sweeper"} <= set(worker.functions)
    overridden = [name for name, member in vars(type(worker)).items() if callable(member)]
    assert type(worker) is Worker, overridden  # no subclass: nothing of arq's is overridden
    assert arq.VERSION.startswith("0.28"), "a new arq: re-check this file's assumptions, then update the pin"


async def test_an_in_process_worker_stops_cleanly_while_a_sweep_runs(
    mongodb_url: str, tmp_path: Path
) -> None:
    # given in-process workers (the tests' ``run_worker``, no signal handlers), each stopped as soon as a job
    # (the sweep it runs at start-up) is running: arq's own close() would raise that job's CancelledError
    settings = make_settings(mongodb_url, tmp_path)
    stopped_during_a_job = 0
    for _ in range(10):
        # when each is stopped
        async with run_worker(settings) as worker:
            for _ in range(200):
                if worker.tasks:
                    break
                await asyncio.sleep(0.005)
            stopped_during_a_job += bool(worker.tasks)
    # then every stop completed (the block above raised nothing), and most of them met a running job
    assert stopped_during_a_job >= 5
