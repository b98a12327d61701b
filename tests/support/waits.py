"""Waiting for a condition, never for a guessed time: the one polling helper of the suite.

A test that needs something to have happened (a file written, a request seen, a log line)
polls for it with a generous timeout; it never sleeps a fixed time and hopes. The timeout is
a hang guard, not a bound on speed: on a slow machine the wait is longer, the result the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(pred: Callable[[], object], timeout: float = 10.0, step: float = 0.02) -> bool:
    """True once ``pred()`` is true (checked every ``step`` s), False after ``timeout`` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def wait_until_count(get: Callable[[], int], at_least: int, timeout: float) -> bool:
    return wait_until(lambda: get() >= at_least, timeout, step=0.01)
