"""An at-most-once source waits until every replica downstream runs before it emits
(core NATS keeps nothing for a consumer that is not there yet). What lives here: that
wait, over the status records; not the source itself.

The records are watched, not polled: one watch of a flow's status records per agent
(:class:`DownstreamStatuses`, kept by the agent's data loop) serves every source of that
flow waiting there, and stops when none waits. A source learns that its last consumer
runs as soon as that record is written, and a start of 500 sources costs one watch per
agent rather than 500 reads every 0.1 s. When the watch cannot be opened the source
polls the records itself (:func:`poll_downstream`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from flowstore.models import ComponentConfig, status_key
from flowstore.nats import STATUS_BUCKET, open_bucket

#: How often a waiting source looks at ``stopping`` while nothing changes, and how often
#: :func:`poll_downstream` reads the records.
RECHECK_S = 0.1
#: A source waiting through the watch reads the records it still waits for itself this
#: often too (a watch stalled by a reconnection costs at most this much).
READ_EVERY_S = 2.0

Stopping = Callable[[], bool]
WaitingFor = Callable[[list[str]], None]


def is_up(value: bytes | None) -> bool:
    """Does a status record say its replica runs (or runs degraded)?"""
    return value is not None and (b'"state":"running"' in value
                                  or b'"state":"degraded"' in value)


def downstream_keys(cfg: ComponentConfig) -> list[str]:
    return [status_key(cfg.flow, node, r)
            for node, count in cfg.downstream.items() for r in range(count)]


class _FlowWatch:
    """The status records of one flow as a watch delivers them: which replicas are up.
    ``next_change`` is done at the next change (a waiter takes it before it looks, so a
    change while it looks is not missed)."""

    def __init__(self, kv: Any) -> None:
        self.kv = kv
        self.up: set[str] = set()
        self.waiters = 0
        self.task: asyncio.Task[None] | None = None
        self.next_change: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def run(self, flow: str) -> None:
        watcher = await self.kv.watch(f"{flow}.*.*")
        try:
            while True:
                entry = await watcher.updates(timeout=None)
                if entry is None:
                    continue  # (the end of the records there were)
                (self.up.add if is_up(entry.value) else self.up.discard)(entry.key)
                self.next_change.set_result(None)
                self.next_change = asyncio.get_running_loop().create_future()
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()


class DownstreamStatuses:
    """One watch per flow with waiting sources, on the data connection (see the module
    doc). Runs on the data loop."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self._flows: dict[str, _FlowWatch] = {}

    async def wait(self, cfg: ComponentConfig, stopping: Stopping,
                   waiting_for: WaitingFor) -> None:
        """Until every replica of ``cfg.downstream`` is up (or ``stopping()``);
        ``waiting_for`` hears which are still awaited, and [] once none is."""
        keys = downstream_keys(cfg)
        if not keys:
            return
        kv = await open_bucket(self.nc, STATUS_BUCKET)
        watch = self._flows.get(cfg.flow)  # (no await from here to the task's creation)
        if watch is None:
            watch = self._flows[cfg.flow] = _FlowWatch(kv)
            watch.task = asyncio.create_task(watch.run(cfg.flow),
                                             name=f"downstream statuses {cfg.flow}")
        watch.waiters += 1
        loop = asyncio.get_running_loop()
        try:
            said: list[str] | None = None
            read_at = loop.time()
            while not stopping():
                if watch.task is not None and watch.task.done():
                    await poll_downstream(kv, keys, stopping, waiting_for)
                    return  # (the watch failed: read the records instead)
                change = watch.next_change
                still = [key for key in keys if key not in watch.up]
                if still and loop.time() - read_at >= READ_EVERY_S:
                    read_at, before = loop.time(), still
                    still = await _still_down(kv, still)
                    watch.up.update(key for key in before if key not in still)
                if not still:
                    break
                if still != said:
                    waiting_for(still)
                    said = still
                await asyncio.wait({change}, timeout=RECHECK_S)  # (shared: not cancelled)
            waiting_for([])
        finally:
            watch.waiters -= 1
            if not watch.waiters and self._flows.get(cfg.flow) is watch:
                del self._flows[cfg.flow]
                if watch.task is not None:
                    watch.task.cancel()

    async def close(self) -> None:
        for watch in self._flows.values():
            if watch.task is not None:
                watch.task.cancel()
        self._flows.clear()


async def _still_down(kv: Any, keys: list[str]) -> list[str]:
    """Those of ``keys`` whose record, read now, does not say up."""
    still = []
    for key in keys:
        try:
            ok = is_up((await kv.get(key)).value)
        except Exception:
            ok = False
        if not ok:
            still.append(key)
    return still


async def poll_downstream(kv: Any, keys: list[str], stopping: Stopping,
                          waiting_for: WaitingFor) -> None:
    """Read the status of every replica in ``keys`` (in the status bucket ``kv``) every
    :data:`RECHECK_S` until each is up (or ``stopping()``)."""
    waiting = keys
    while waiting and not stopping():
        still = await _still_down(kv, waiting)
        if still:
            waiting_for(still)
        waiting = still
        if waiting:
            await asyncio.sleep(RECHECK_S)
    waiting_for([])


async def wait_for_downstream(host: Any, nc: Any, cfg: ComponentConfig, stopping: Stopping,
                              waiting_for: WaitingFor) -> None:
    """The wait of a source (see the module doc): through its agent's shared watch, or
    by reading the records when its host keeps none."""
    statuses = getattr(host, "downstream", None)
    if statuses is not None:
        await statuses.wait(cfg, stopping, waiting_for)
    else:
        await poll_downstream(await open_bucket(nc, STATUS_BUCKET), downstream_keys(cfg),
                              stopping, waiting_for)
