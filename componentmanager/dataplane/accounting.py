"""Accounting of what the data plane loses or fails, and saying so once per interval.

* :class:`DropRouter` turns nats-py's slow-consumer reports (one ``SlowConsumerError`` per
  message a subscription's full pending queue refused) into a count on the replica that
  owns the subscription. It is the safety net behind the input queue's own bound
  (:mod:`componentmanager.runners.delivery` sheds and counts events, by their frame
  counts, long before); nats-py's report does not carry the message, so a frame refused
  here counts as one event.
* :class:`Throttle` lets a repeated message through once per interval and keeps count
  of the rest, so 600,000 identical failures make a handful of log lines with counts,
  not 600,000 lines.
* :class:`DropWindow` answers "how many were lost in the last N seconds" from samples
  of a monotonic counter (pure, for the replica's ``degraded`` reason).

No NATS I/O here; pure bookkeeping the data loop drives.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from nats.errors import SlowConsumerError

#: How often a repeated message is logged (with the count of the ones held back).
LOG_INTERVAL_S = 10.0


class DropRouter:
    """Maps subscriptions to the callbacks that count their dropped messages."""

    def __init__(self) -> None:
        self._owners: dict[int, Callable[[int], None]] = {}

    def own(self, sub: Any, on_drop: Callable[[int], None]) -> None:
        self._owners[sub._id] = on_drop

    def release(self, sub: Any) -> None:
        self._owners.pop(getattr(sub, "_id", None), None)  # type: ignore[arg-type]

    def route(self, error: Exception) -> bool:
        """Count ``error`` when it is a slow-consumer report of an owned subscription."""
        if isinstance(error, SlowConsumerError):
            on_drop = self._owners.get(error.sid)
            if on_drop is not None:
                on_drop(1)
                return True
        return False


class Throttle:
    """Decides which of a stream of repeated messages to log.

    ``admit(key, example)`` is True for the first occurrence of ``key`` in an interval
    (log it then); later ones are counted, and the last one's ``example`` (the message
    as it was, where ``key`` holds its :func:`shape`) is kept for the summary. ``due()``
    returns ``(key, held_back, example)`` for every key whose interval has passed with
    messages held back, and starts a new interval.
    """

    def __init__(self, interval: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._windows: dict[Any, list[Any]] = {}  # key -> [started, held back, example]

    def admit(self, key: Any, example: str | None = None) -> bool:
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.interval:
            if window is not None and window[1]:
                # An interval with held-back messages ended unseen by due(): keep them.
                self._windows[key] = [now, window[1] + 1, example]
                return False
            self._windows[key] = [now, 0, None]
            return True
        window[1] += 1
        window[2] = example
        return False

    def due(self) -> list[tuple[Any, int, str | None]]:
        now = self._clock()
        out = []
        for key, window in list(self._windows.items()):
            if now - window[0] < self.interval:
                continue
            if window[1]:
                out.append((key, int(window[1]), window[2]))
                self._windows[key] = [now, 0, None]
            else:
                del self._windows[key]
        return out


_DIGITS = re.compile(r"\d+")


def shape(message: str) -> str:
    """``message`` with its numbers blanked: failures that differ only by a line number,
    an id or a value share one throttle key."""
    return _DIGITS.sub("#", message)


class DropWindow:
    """Samples of a monotonically growing counter, to tell how much it grew lately."""

    def __init__(self, span: float = LOG_INTERVAL_S) -> None:
        self.span = span
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, total: int) -> int:
        """Record ``total`` at ``now``; return how much it grew within the last ``span``."""
        samples = self._samples
        samples.append((now, total))
        while len(samples) > 1 and now - samples[1][0] >= self.span:
            samples.popleft()
        return total - samples[0][1]
