"""An at-most-once source's wait for its consumers, over a real nats-server: one watch
of the flow's status records serves every waiting source, and is gone once none waits."""

from __future__ import annotations

import asyncio

from componentmanager.runners.downstream import DownstreamStatuses
from flowstore.models import ComponentConfig
from flowstore.nats import STATUS_BUCKET, open_bucket


def _source(flow: str, downstream: dict[str, int]) -> ComponentConfig:
    return ComponentConfig.model_validate({
        "flow": flow, "node": "gen", "type": "generate", "role": "source",
        "queue": f"{flow}-gen", "downstream": downstream})


async def test_sources_wait_until_every_consumer_runs_then_the_watch_stops(nc) -> None:
    kv = await open_bucket(nc, STATUS_BUCKET)
    await kv.put("wf.out.0", b'{"state":"running"}')
    statuses = DownstreamStatuses(nc)
    heard: dict[str, list[list[str]]] = {"a": [], "b": []}
    waits = [asyncio.create_task(statuses.wait(_source("wf", down), lambda: False,
                                               heard[who].append))
             for who, down in (("a", {"out": 1, "slow": 2}), ("b", {"slow": 1}))]
    await asyncio.sleep(0.3)
    assert not any(w.done() for w in waits)
    assert heard["a"][-1] == ["wf.slow.0", "wf.slow.1"] and heard["b"][-1] == ["wf.slow.0"]
    await kv.put("wf.slow.0", b'{"state":"starting"}')
    await kv.put("wf.slow.0", b'{"state":"degraded"}')  # runs, degraded: enough
    await asyncio.wait_for(waits[1], 2)
    await kv.put("wf.slow.1", b'{"state":"running"}')
    await asyncio.wait_for(waits[0], 2)
    assert heard["a"][-1] == [] and heard["b"][-1] == []
    assert statuses._flows == {}  # no source waits: no watch


async def test_a_stopping_source_stops_waiting(nc) -> None:
    statuses = DownstreamStatuses(nc)
    stop = asyncio.Event()
    wait = asyncio.create_task(statuses.wait(_source("wg", {"out": 1}), stop.is_set,
                                             lambda keys: None))
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(wait, 1)
    assert statuses._flows == {}


async def test_a_stalled_watch_costs_at_most_a_read_interval(nc, monkeypatch) -> None:
    """A watch that delivers nothing (stalled by a reconnection, say): the waiting source
    reads its records itself every READ_EVERY_S."""
    from componentmanager.runners import downstream

    monkeypatch.setattr(downstream, "READ_EVERY_S", 0.3)
    kv = await open_bucket(nc, STATUS_BUCKET)
    await kv.put("wh.out.0", b'{"state":"running"}')
    statuses = DownstreamStatuses(nc)
    stalled = downstream._FlowWatch(kv)
    stalled.task = asyncio.create_task(asyncio.sleep(3600))
    statuses._flows["wh"] = stalled
    began = asyncio.get_running_loop().time()
    await asyncio.wait_for(statuses.wait(_source("wh", {"out": 1}), lambda: False,
                                         lambda keys: None), 2)
    assert 0.25 <= asyncio.get_running_loop().time() - began < 1.5
    assert statuses._flows == {}  # the last waiter gone: the watch is stopped
    await asyncio.sleep(0)
    assert stalled.task.cancelled()
