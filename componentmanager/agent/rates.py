"""What moves now: each replica's recent rates and the lag of its inputs.

* :class:`RateWindow` (pure) turns samples of the monotonically growing ``in``/``out``
  counters into events per second over the last :data:`RATE_WINDOW_S` seconds, so RATE
  tells what a replica does now (a finished source falls to 0 within the window), not
  an average since it started.
* :class:`LagSampler` (thin I/O) asks JetStream, once per status interval and per node
  input, how many messages wait for the input's durable consumer (``num_pending``, not
  yet delivered) and how many are delivered but not yet acked (``num_ack_pending``); a
  replica's ``lag`` per port is their sum. At-most-once inputs have no stream: their lag
  is what waits in the replica's own queue (:meth:`Replica.input_queues`).

Lag counts messages; under load one message is a frame of up to 512 events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass
from typing import Any

from componentmanager.runners.base import Replica
from flowstore.models import input_consumer, stream_name

#: Rates are measured over this many seconds of samples.
RATE_WINDOW_S = 6.0


class RateWindow:
    """Samples ``(when, in, out)``; :meth:`add` answers the rates over the window."""

    def __init__(self, span: float = RATE_WINDOW_S) -> None:
        self.span = span
        self._samples: deque[tuple[float, int, int]] = deque()

    def add(self, now: float, taken: int, emitted: int) -> dict[str, float]:
        samples = self._samples
        samples.append((now, taken, emitted))
        while len(samples) > 2 and now - samples[1][0] >= self.span:
            samples.popleft()
        t0, in0, out0 = samples[0]
        elapsed = now - t0
        if elapsed <= 0:
            return {"in": 0.0, "out": 0.0}
        return {"in": round(max(0, taken - in0) / elapsed, 1),
                "out": round(max(0, emitted - out0) / elapsed, 1)}


@dataclass
class ConsumerLag:
    pending: int = 0  # stored, not yet delivered to any replica
    ack_pending: int = 0  # delivered, not yet acked

    @property
    def total(self) -> int:
        return self.pending + self.ack_pending


class LagSampler:
    """The latest :class:`ConsumerLag` per ``(flow, node, port, durable consumer)`` of
    at-least-once inputs (a partitioned node's replicas each have their own consumer)."""

    def __init__(self, nc: Any, timeout: float = 1.0) -> None:
        self.nc = nc
        self.timeout = timeout
        self.latest: dict[tuple[str, str, str, str], ConsumerLag] = {}

    @staticmethod
    def _durable(replica: Replica, port: str) -> str:
        return input_consumer(replica.cfg, port, replica.index)

    async def refresh(self, replicas: list[Replica]) -> None:
        """Ask once per distinct input; keep the last answer of one that times out."""
        wanted = {(r.cfg.flow, r.cfg.node, port, self._durable(r, port))
                  for r in replicas if r.cfg.delivery != "at-most-once"
                  for port, subjects in r.cfg.inputs.items() if subjects}
        for key in list(self.latest):
            if key not in wanted:
                del self.latest[key]
        if wanted:
            await asyncio.gather(*(self._ask(key) for key in wanted))

    async def _ask(self, key: tuple[str, str, str, str]) -> None:
        flow, _, _, durable = key
        with contextlib.suppress(Exception):  # NATS busy or down: the next round asks again
            info = await self.nc.jetstream().consumer_info(
                stream_name(flow), durable, timeout=self.timeout)
            self.latest[key] = ConsumerLag(int(info.num_pending or 0),
                                           int(info.num_ack_pending or 0))

    def lag_of(self, replica: Replica) -> dict[str, int]:
        """The replica's lag per input port (see the module docstring)."""
        cfg = replica.cfg
        if cfg.delivery == "at-most-once":
            return replica.input_queues()
        return {port: found.total for port in cfg.inputs
                if (found := self.latest.get((cfg.flow, cfg.node, port,
                                              self._durable(replica, port)))) is not None}


class LiveFigures:
    """Sets ``rate`` and ``lag`` on each replica before its periodic status write."""

    def __init__(self, nc: Any) -> None:
        self.lags = LagSampler(nc)
        self._windows: dict[str, RateWindow] = {}

    def started(self, key: str, replica: Replica, now: float) -> None:
        """A replica starts: its counts now are the first sample (a burst handled before
        the first status interval still shows in its rates)."""
        window = self._windows[key] = RateWindow()
        window.add(now, replica.counters.in_, replica.counters.out)

    async def update(self, replicas: dict[str, Replica], now: float) -> None:
        for key in list(self._windows):
            if key not in replicas:
                del self._windows[key]
        for key, replica in replicas.items():
            counters = replica.counters
            window = self._windows.setdefault(key, RateWindow())
            replica.rate = window.add(now, counters.in_, counters.out)
        await self.lags.refresh(list(replicas.values()))
        for replica in replicas.values():
            replica.lag = self.lags.lag_of(replica)
