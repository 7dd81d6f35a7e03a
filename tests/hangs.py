"""A hang detector for tests of inputs that once made pybuild spin (backtracking
patterns, quadratic output handling): not a timing assert, the work takes milliseconds
and the old code took minutes or hours."""

from __future__ import annotations

import signal
from contextlib import contextmanager


@contextmanager
def deadline(seconds: int):
    def expired(*_):
        raise AssertionError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
