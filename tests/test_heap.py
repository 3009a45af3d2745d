"""The long-running processes keep start-up's objects out of the garbage collector's full passes."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
from webhooks import heap
heap.settle()
first = gc.get_freeze_count()
kept = [[i] for i in range(10_000)]  # made after start-up
heap.settle()
print(first, gc.get_freeze_count())
"""


def test_settle_freezes_what_start_up_built_once_per_process() -> None:
    # given a fresh process that has imported the service
    # when it settles its heap, makes more objects, and settles again (a worker restarted in-process)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    first, second = (int(n) for n in out.split())
    # then start-up's objects were frozen, and the later ones were not
    assert first > 1_000
    assert second == first
