"""How long a replica takes per event: a fixed-bucket histogram, cheap on the hot path.

The runtime times each input message (an event or a frame of N events) once and records
N observations of ``elapsed / N`` (the per-event time, averaged over its frame), so a
frame costs one clock read pair and one bisect, not N. The agent exposes it as the
Prometheus histogram ``flowctl_processing_seconds`` (cumulative buckets, sum, count).
Pure bookkeeping, no I/O; read from other threads as plain attributes.
"""

from __future__ import annotations

from bisect import bisect_left

#: Upper bounds in seconds (Prometheus ``le``); the last bucket is +Inf.
BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
           0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LatencyHistogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, elapsed: float, events: int = 1) -> None:
        """``events`` events took ``elapsed`` seconds together."""
        if events <= 0:
            return
        each = elapsed / events
        self.counts[bisect_left(BUCKETS, each)] += events
        self.sum += elapsed

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, count), ...]`` as Prometheus wants them, ending with ``+Inf``."""
        out, total = [], 0
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), list(self.counts), strict=True):
            total += count
            out.append((bound, total))
        return out
