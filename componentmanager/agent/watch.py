"""The shell around :mod:`componentmanager.agent.health`: samples the agent's replicas and
its data loop, and marks a replica ``degraded`` (logged once per interval) while it
loses events or holds the loop.

:meth:`HealthWatch.judge` runs before every status write; :meth:`HealthWatch.run` looks
every :data:`STALL_CHECK_S` whether the data loop is stalled and charges the replica
whose code is on the data thread's stack.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from componentmanager.agent.dataloop import DataLoop
from componentmanager.agent.health import STALL_S, WINDOW_S, ReplicaHealth, assess
from componentmanager.runners.base import Replica

log = structlog.get_logger("flowctl.agent")

#: How often the agent looks whether the data loop is stalled (and by whom).
STALL_CHECK_S = 0.1


class HealthWatch:
    def __init__(self, data: DataLoop) -> None:
        self.data = data
        self._health: dict[str, ReplicaHealth] = {}
        self._logged: dict[str, float] = {}

    def add(self, key: str, dropped: int = 0) -> None:
        """A new replica: its drop counter starts at ``dropped`` now (the baseline of its
        drop window, so drops before its first status refresh are seen too)."""
        health = ReplicaHealth()
        health.drops.add(time.monotonic(), dropped)
        self._health[key] = health

    def remove(self, key: str) -> None:
        self._health.pop(key, None)
        self._logged.pop(key, None)

    def judge(self, key: str, replica: Replica, now: float) -> None:
        """Set ``replica.degraded`` from what was sampled; log it once per interval."""
        health = self._health.get(key)
        if health is None:
            return
        counters = replica.counters
        lost = health.drops.add(now, counters.dropped)
        reason = assess(lost, counters.drop_reason, health.stalled_within(now),
                        replica.blocking_advice())
        replica.degraded = reason
        if reason is None:
            self._logged.pop(key, None)
        elif now - self._logged.get(key, -WINDOW_S) >= WINDOW_S:
            self._logged[key] = now  # once per interval, never per event
            log.warning("replica degraded", replica=key, reason=reason,
                        dropped=counters.dropped, errors=counters.errors)

    async def run(self) -> None:
        """While the data loop is stalled, charge the replica on its stack."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(STALL_CHECK_S)
            now = time.monotonic()
            elapsed, last = now - last, now
            if self.data.stalled_for() < STALL_S:
                continue
            culprit = self.data.culprit()
            health = self._health.get(culprit.key) if culprit is not None else None
            if health is not None:
                health.stalled(now, elapsed)
