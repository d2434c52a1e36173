"""User functions for the isolation tests, written the way users write them: blocking."""

from __future__ import annotations

import time
from typing import Any


def sleepy(event: dict[str, Any]) -> dict[str, Any]:
    """A sync function that blocks 5 ms per event (a slow lookup, say)."""
    time.sleep(0.005)
    return event


_STARTED: list[bool] = []


def slow_start(event: dict[str, Any]) -> dict[str, Any]:
    """A sync function whose first call blocks 1 s (it loads a model, say), then quick."""
    if not _STARTED:
        time.sleep(1.0)
        _STARTED.append(True)
    return event


async def hog(event: dict[str, Any]) -> dict[str, Any]:
    """An async function that blocks anyway: it holds the event loop 50 ms per event."""
    time.sleep(0.05)
    return event


def spin(event: dict[str, Any]) -> dict[str, Any]:
    """CPU work of about 0.3 ms per event, inline (too short to move to a thread)."""
    end = time.perf_counter() + 0.0003
    while time.perf_counter() < end:
        pass
    return {"seq": event["seq"]}


def slower_than_the_ack_wait(event: dict[str, Any]) -> dict[str, Any]:
    """A sync function that blocks 2.5 s per event: longer than a consumer's ack wait."""
    time.sleep(2.5)
    return event
