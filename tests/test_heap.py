"""The long-running processes keep start-up's objects out of the garbage collector's full passes, and time
the passes that remain."""

from __future__ import annotations

import os
import subprocess
import sys

FREEZE = """
import gc
from webhooks import heap
heap.settle()
first = gc.get_freeze_count()
kept = [[i] for i in range(10_000)]  # made after start-up
heap.settle()
print(first, gc.get_freeze_count())
"""

TIMED = """
import gc
from prometheus_client import REGISTRY
from webhooks import heap
heap.settle()
def count(generation):
    return REGISTRY.get_sample_value("webhooks_gc_pause_seconds_count", {"generation": generation}) or 0
gc.collect(0)
gc.collect(1)
gc.collect(2)
gc.collect(2)
before = count("1") + count("2")
heap.record_pauses()
print(before, count("1"), count("2"), count("0"))
"""


def run(code: str) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return [float(n) for n in out.stdout.split()]


def test_settle_freezes_what_start_up_built_once_per_process() -> None:
    # given a fresh process that has imported the service
    # when it settles its heap, makes more objects, and settles again (a worker restarted in-process)
    first, second = run(FREEZE)
    # then start-up's objects were frozen, and the later ones were not
    assert first > 1_000
    assert second == first


def test_the_passes_of_generations_one_and_two_are_timed() -> None:
    # given a settled process, when it collects generation 0, 1 and twice 2
    before, gen1, gen2, gen0 = run(TIMED)
    # then nothing is recorded from inside the collector, where a metric's lock may be held
    assert before == 0
    # and once recorded, the pauses metric has a sample for each pass of generations 1 and 2 (the
    # interpreter may add its own), and none for generation 0
    assert gen1 >= 1 and gen2 >= 2
    assert gen0 == 0
