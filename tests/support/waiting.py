"""Waiting in tests: poll for a state, never for a time. The deadline only bounds a failure, so it is generous (a cold
machine starts its first kernel and its first engine slowly)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 90.0, interval: float = 0.1) -> T:
    """Poll `condition` until it returns something truthy, and return that; fail naming it if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {getattr(condition, '__name__', condition)}")
