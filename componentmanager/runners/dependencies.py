"""``depends_on``: a replica starts once every replica of each node it depends on is up.

Up means what the replica's own agent reports in ``flowctl_status``: ``running`` (for a
program with a ``health_port``, only once ``/health`` answered 200; for one with the SDK,
once it said it is ready) or ``degraded`` (running, not keeping up), or ``completed`` (a
one-shot job that ended cleanly). The dependency may run on any agent: the status bucket
is read, not this agent's own replicas. While it waits, the replica is ``starting`` with
the reason ``waiting for <node> (0/1 up)``. :func:`waiting_for` is the pure decision;
:func:`wait_for_dependencies` polls around it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from flowstore.models import ReplicaState, ReplicaStatus, status_key
from flowstore.nats import STATUS_BUCKET, open_bucket

#: States of a dependency replica that let its dependents start.
UP_STATES = frozenset({ReplicaState.RUNNING, ReplicaState.DEGRADED, ReplicaState.COMPLETED})
POLL_S = 0.2


def waiting_for(flow: str, depends_on: Mapping[str, int],
                states: Mapping[str, ReplicaState | None]) -> str | None:
    """Why the replica cannot start yet (``waiting for a (0/1 up), b (1/2 up)``), or None
    once every replica of every dependency is up. ``states``: status key -> state."""
    behind = []
    for node, replicas in depends_on.items():
        up = sum(1 for r in range(replicas)
                 if states.get(status_key(flow, node, r)) in UP_STATES)
        if up < replicas:
            behind.append(f"{node} ({up}/{replicas} up)")
    return f"waiting for {', '.join(behind)}" if behind else None


async def _states(kv: Any, flow: str, depends_on: Mapping[str, int]
                  ) -> dict[str, ReplicaState | None]:
    states: dict[str, ReplicaState | None] = {}
    for node, replicas in depends_on.items():
        for r in range(replicas):
            key = status_key(flow, node, r)
            states[key] = None
            with contextlib.suppress(Exception):  # none yet, junk, or NATS busy: not up
                record, _ = ReplicaStatus.parse((await kv.get(key)).value)
                if record is not None:
                    states[key] = record.state
    return states


async def wait_for_dependencies(replica: Any, stop: asyncio.Event) -> bool:
    """Until every dependency of ``replica`` is up (True), or ``stop`` is set (False).
    Says what it waits for as the replica's reason (``replica.note``)."""
    cfg = replica.cfg
    if not cfg.depends_on:
        return True
    kv = None
    try:
        while not stop.is_set():
            if kv is None:
                with contextlib.suppress(Exception):
                    kv = await open_bucket(replica.host.nc, STATUS_BUCKET)
            states = await _states(kv, cfg.flow, cfg.depends_on) if kv is not None else {}
            why = waiting_for(cfg.flow, cfg.depends_on, states)
            if why is None:
                return True
            if replica.note != why:
                replica.note = why
                replica.host.changed(replica)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_S)
        return False
    finally:
        if replica.note is not None and replica.note.startswith("waiting for "):
            replica.note = None
            replica.host.changed(replica)
